"""Incremental scans: judging only the paths events name ends where a walk
of the whole tree from scratch does.

Three levels: the kept walk state fed by a real TreeWatcher, and a real
Daemon (in this process, real inotify) whose published records are
compared with a scan from scratch after each kind of change, including a
dropped event (the safety-net walk) and an overflow of the watcher's
queue.
"""

import logging
import os
import shutil
import threading

import pytest
from oslo_config import cfg

from hotload import conf as hotload_conf
from hotload import daemon as daemon_mod
from hotload import manifest
from hotload import probe as probe_mod
from hotload import scanner as scanner_mod
from hotload import signals
from hotload import store
from hotload import tree as tree_mod
from hotload import trust
from hotload import walk
from hotload import watcher
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.conftest import PACKAGE

POLICY_OWNERS = ['root']
DEADLINE = 15.0


def _module(name: str) -> str:
    return GREET.replace('Greet(', f'{name}(')


def _policy() -> trust.TrustPolicy:
    return trust.TrustPolicy(POLICY_OWNERS, 1 << 20)


def _scratch(tree, blobs, max_depth=32) -> walk.TreeSnapshot:
    return walk.snapshot_tree(tree.root, _policy(), blobs,
                              max_depth=max_depth)


def _mkdir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)


# Each change: (setup, change). Both take the Tree and a directory outside
# it; the change is what the watcher must tell the walk state about.

def _edit(tree, outside):
    tree.write('cinder/backups.py', _module('Edited'))


def _rename(tree, outside):
    os.rename(tree.path('cinder/backups.py'), tree.path('cinder/moved.py'))


def _delete(tree, outside):
    tree.remove('cinder/backups.py')


def _delete_directory(tree, outside):
    shutil.rmtree(tree.path('cinder'))


def _new_directory(tree, outside):
    _mkdir(tree.path('glance'))
    tree.write('glance/__init__.py', '')
    tree.write('glance/images.py', _module('Images'))
    tree.write('glance/sub/deep.py', _module('Deep'))


def _moved_in(tree, outside):
    source = os.path.join(outside, 'nova')
    _mkdir(source)
    for name in ('servers', 'flavors'):
        path = os.path.join(source, f'{name}.py')
        with open(path, 'w') as stream:
            stream.write(_module(name.capitalize()))
        os.chmod(path, 0o644)
    _mkdir(os.path.join(source, 'inner'))
    with open(os.path.join(source, 'inner', 'x.py'), 'w') as stream:
        stream.write(_module('X'))
    os.chmod(os.path.join(source, 'inner', 'x.py'), 0o644)
    os.rename(source, tree.path('nova'))


def _moved_out(tree, outside):
    os.rename(tree.path('cinder'), os.path.join(outside, 'cinder'))


def _bad_package_name(tree, outside):
    _mkdir(tree.path('bad-name'))
    tree.write('bad-name/x.py', _module('X'))


def _file_in_bad_package(tree, outside):
    tree.write('bad-name/y.py', _module('Y'))


def _untrusted_directory(tree, outside):
    os.chmod(tree.path('cinder'), 0o777)


def _trusted_again(tree, outside):
    os.chmod(tree.path('cinder'), 0o755)


def _untrusted_file(tree, outside):
    os.chmod(tree.path('cinder/backups.py'), 0o666)


def _package_shadows_module(tree, outside):
    tree.write('common/__init__.py', '')


def _symlink_target_edited(tree, outside):
    tree.write('real/target.py', _module('Changed'))


def _setup_plain(tree, outside):
    tree.write('common.py', _module('Common'))
    tree.write('cinder/__init__.py', '')
    tree.write('cinder/backups.py', _module('Backups'))
    tree.write('cinder/volumes.py', _module('Volumes'))


def _setup_with_bad_dir(tree, outside):
    _setup_plain(tree, outside)
    _bad_package_name(tree, outside)


def _setup_untrusted(tree, outside):
    _setup_plain(tree, outside)
    os.chmod(tree.path('cinder'), 0o777)


def _setup_symlink(tree, outside):
    _setup_plain(tree, outside)
    tree.write('real/target.py', _module('Target'))
    os.symlink(os.path.join('real', 'target.py'), tree.path('link.py'))


CHANGES = {
    'edit': (_setup_plain, _edit),
    'rename': (_setup_plain, _rename),
    'delete': (_setup_plain, _delete),
    'delete a directory': (_setup_plain, _delete_directory),
    'new directory with files': (_setup_plain, _new_directory),
    'directory moved in from outside': (_setup_plain, _moved_in),
    'directory moved out': (_setup_plain, _moved_out),
    'new directory with an invalid name': (_setup_plain, _bad_package_name),
    'file added under an invalid name': (_setup_with_bad_dir,
                                         _file_in_bad_package),
    'chmod of a directory': (_setup_plain, _untrusted_directory),
    'chmod of a directory back': (_setup_untrusted, _trusted_again),
    'chmod of a file': (_setup_plain, _untrusted_file),
    'package shadows module': (_setup_plain, _package_shadows_module),
    'symlink target edited': (_setup_symlink, _symlink_target_edited),
}


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / 'outside'
    path.mkdir(mode=0o755)
    return str(path)


@pytest.fixture
def blobs(tmp_path):
    return store.BlobStore(str(tmp_path / 'blobs'))


@pytest.mark.parametrize('change', sorted(CHANGES))
def test_watched_changes_end_in_the_snapshot_of_a_full_walk(
        change, tree, outside, blobs):
    """The events a real TreeWatcher delivers, and nothing else, bring
    the kept walk state to what a walk from scratch finds."""
    setup, act = CHANGES[change]
    setup(tree, outside)
    state = tree_mod.TreeState(tree.root)
    before = state.snapshot(_policy(), blobs)
    assert before == _scratch(tree, blobs)
    bursts = []
    lock = threading.Lock()

    def on_changes(changes):
        with lock:
            bursts.append(watcher.changed_paths(changes, state.root))

    watch = watcher.TreeWatcher(tree.root, on_changes, 0.05)
    watch.start()
    try:
        act(tree, outside)
        expected = _scratch(tree, blobs)

        def caught_up():
            with lock:
                arrived = list(bursts)
                bursts.clear()
            for paths in arrived:
                assert paths, 'a burst without paths of the tree'
                state.snapshot(_policy(), blobs, paths)
            return state.snapshot(_policy(), blobs, []) == expected

        wait_for(caught_up, f'the events of: {change}', deadline=DEADLINE)
    finally:
        watch.stop()


def test_a_path_under_an_unwalkable_directory_is_judged_at_that_directory(
        tree, blobs):
    """``mkdir bad-name; touch bad-name/x.py``, told only the file."""
    tree.write('ok.py', _module('Ok'))
    state = tree_mod.TreeState(tree.root)
    state.snapshot(_policy(), blobs)
    _mkdir(tree.path('bad-name'))
    tree.write('bad-name/x.py', _module('X'))
    found = state.snapshot(_policy(), blobs, ['bad-name/x.py'])
    assert found == _scratch(tree, blobs)
    assert found.refused['bad-name'].message.startswith(
        'not a valid Python package name')


def test_too_deep_and_ignored_paths(tree, blobs):
    tree.write('a/top.py', _module('Top'))
    state = tree_mod.TreeState(tree.root)
    state.snapshot(_policy(), blobs, max_depth=2)
    tree.write('a/b/c/deep.py', _module('Deep'))
    tree.write('a/__pycache__/x.py', _module('X'))
    found = state.snapshot(_policy(), blobs,
                           ['a/b/c/deep.py', 'a/__pycache__/x.py'],
                           max_depth=2)
    assert found == _scratch(tree, blobs, max_depth=2)
    assert list(found.refused) == [os.path.join('a', 'b', 'c')]


def test_an_edit_reads_one_file(tree, blobs, monkeypatch):
    for index in range(50):
        tree.write(f'd{index % 5}/m{index}.py', _module(f'M{index}'))
    state = tree_mod.TreeState(tree.root)
    state.snapshot(_policy(), blobs)
    read = []
    real = walk.TreeWalk._read_checked

    def counting(self, relpath):
        read.append(relpath)
        return real(self, relpath)

    monkeypatch.setattr(walk.TreeWalk, '_read_checked', counting)
    tree.write('d3/m13.py', _module('Changed'))
    found = state.snapshot(_policy(), blobs, ['d3/m13.py'])
    assert read == [os.path.join('d3', 'm13.py')]
    assert found == _scratch(tree, blobs)


def test_a_failed_update_walks_everything_next(tree, blobs, monkeypatch):
    tree.write('a.py', _module('A'))
    state = tree_mod.TreeState(tree.root)
    state.snapshot(_policy(), blobs)

    def fail(self, *args):
        raise OSError('disk trouble')

    with monkeypatch.context() as patch:
        patch.setattr(walk.TreeWalk, 'evaluate', fail)
        with pytest.raises(OSError):
            state.snapshot(_policy(), blobs, ['a.py'])
    assert not state.walked
    tree.write('b.py', _module('B'))  # no event told
    assert state.snapshot(_policy(), blobs, ['a.py']) == _scratch(tree,
                                                                  blobs)


# The daemon: its published records against a scan from scratch.

class Dropper:
    """Stands between the watcher and the daemon; drops bursts on demand.
    """

    def __init__(self, deliver) -> None:
        self.deliver = deliver
        self.dropping = False
        self.dropped: list[set[str]] = []

    def __call__(self, changes) -> None:
        if self.dropping:
            self.dropped.append({os.fsdecode(e.src_path) for e in changes})
            return
        self.deliver(changes)


@pytest.fixture
def daemon(tree, tmp_path):
    """A Daemon in this process, with a spy on its walk state."""
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    signals.register_transport_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('actions_dir', tree.root, group='hotload')
    conf.set_override('state_dir', str(tmp_path / 'state'), group='hotload')
    conf.set_override('action_prefix', 'hot', group='hotload')
    conf.set_override('rescan_interval', 3600, group='hotload')
    made = []

    def make(**options):
        for name, value in options.items():
            conf.set_override(name, value, group='hotload')
        daemon = daemon_mod.Daemon(conf, restart=lambda reason: None)
        daemon.dropper = Dropper(daemon._on_changes)
        # The watcher is built in start(), from this attribute.
        daemon._on_changes = daemon.dropper
        daemon.walks = []
        real = daemon._tree.snapshot

        def spy(policy, blobs, changed=None, **kwargs):
            daemon.walks.append(None if changed is None else set(changed))
            return real(policy, blobs, changed, **kwargs)

        daemon._tree.snapshot = spy
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


@pytest.fixture
def from_scratch(tree, tmp_path):
    """The records a scan of the tree from scratch produces."""
    states = store.ManifestStore(str(tmp_path / 'scratch'))
    states.ensure()
    with probe_mod.Probe(tree.root, PACKAGE, states.blobs.root,
                         timeout=4.0, memory_limit_mb=512) as probe:
        def scan():
            scanner = scanner_mod.Scanner(
                tree.root, states.blobs, probe, _policy(), PACKAGE, 'hot',
                ['std.'], workers=2)
            return scanner.scan(manifest.Manifest.empty(
                PACKAGE, 'hot')).modules

        yield scan


def _current(records: dict[str, manifest.ModuleRecord]) -> dict:
    """The records, less the last good versions a scan from scratch
    cannot know (a module refused now keeps serving its last good one)."""
    return {name: (record.path, record.error,
                   None if record.error else record.good)
            for name, record in records.items()}


def _served(daemon) -> dict:
    return _current(daemon.states.load().modules)


def _converges(daemon, from_scratch, what):
    """Wait until the daemon serves what a scan from scratch finds."""
    expected = _current(from_scratch())
    wait_for(lambda: _served(daemon) == expected, what, deadline=DEADLINE)


def test_daemon_incremental_scans_match_a_scan_from_scratch(
        tree, outside, daemon, from_scratch):
    _setup_plain(tree, outside)
    running = daemon()
    assert running.walks == [None]
    _converges(running, from_scratch, 'the first scan')
    steps = [('edit', _edit), ('rename', _rename),
             ('delete', lambda tree, _: tree.remove('cinder/volumes.py')),
             ('new directory', _new_directory),
             ('directory moved in', _moved_in),
             ('invalid package name', _bad_package_name),
             ('chmod of a directory', _untrusted_directory),
             ('directory moved out', _moved_out)]
    for what, act in steps:
        generation = running.states.load().generation
        act(tree, outside)
        wait_for(lambda g=generation: running.states.load().generation > g,
                 f'a generation after: {what}', deadline=DEADLINE)
        _converges(running, from_scratch, what)
    # Every scan after the first judged only the paths events named.
    assert running.walks[0] is None
    assert all(walked is not None for walked in running.walks[1:])


def test_in_tree_importer_is_probed_again_incrementally(
        tree, daemon, from_scratch):
    tree.write('common.py', 'VALUE = 1\n')
    tree.write('user.py', 'from . import common\n' + _module('User'))
    running = daemon()
    first = running.states.load()
    tree.write('common.py', 'VALUE = 2\n')
    wait_for(lambda: running.states.load().generation > first.generation,
             'the change of common.py')
    _converges(running, from_scratch, 'the importer probed again')
    now = running.states.load()
    assert now.modules['user'].good.imports['common'] == \
        now.modules['common'].good.sha256
    assert now.modules['user'].good.content_key != \
        first.modules['user'].good.content_key


def test_dropped_event_is_found_by_the_safety_net_walk(
        tree, daemon, from_scratch):
    tree.write('greet.py', _module('Greet'))
    running = daemon(rescan_interval=1.0)
    running.dropper.dropping = True
    tree.write('lost.py', _module('Lost'))
    wait_for(lambda: running.dropper.dropped, 'the dropped burst')
    running.dropper.dropping = False
    # The periodic walk of the whole tree, not any event, publishes it.
    _converges(running, from_scratch, 'the safety-net walk')
    assert 'lost' in _served(running)
    assert None in running.walks[1:]


def test_watcher_queue_overflow_walks_the_whole_tree(
        tree, daemon, from_scratch):
    tree.write('greet.py', _module('Greet'))
    running = daemon()
    running.dropper.dropping = True
    tree.write('lost.py', _module('Lost'))
    tree.remove('greet.py')
    wait_for(lambda: running.dropper.dropped, 'the dropped burst')
    running.dropper.dropping = False
    walks = len(running.walks)
    # What watchdog logs when the kernel's inotify queue overflowed; the
    # watcher's spotter hears it and tells the daemon.
    logging.getLogger('watchdog.observers.inotify_buffer').warning(
        'inotify queue overflow, events were lost')
    _converges(running, from_scratch, 'the walk after the overflow')
    assert None in running.walks[walks:]


def test_events_during_a_scan_go_to_the_next_scan(tree, daemon,
                                                  from_scratch):
    tree.write('greet.py', _module('Greet'))
    running = daemon()
    release = threading.Event()
    entered = threading.Event()
    real = running._tree.snapshot

    def slow(policy, blobs, changed=None, **kwargs):
        entered.set()
        release.wait(DEADLINE)
        return real(policy, blobs, changed, **kwargs)

    running._tree.snapshot = slow
    tree.write('first.py', _module('First'))
    wait_for(entered.is_set, 'a scan to start')
    # Written while the scan is walking: its event is for the next one.
    tree.write('second.py', _module('Second'))
    wait_for(lambda: 'second.py' in running._dirty, 'the event to queue')
    running._tree.snapshot = real
    release.set()
    _converges(running, from_scratch, 'both files')


def _declared(class_name: str, action_name: str) -> str:
    return _module(class_name).replace(
        f'class {class_name}(actions.Action):\n',
        f'class {class_name}(actions.Action):\n'
        f'    __action_name__ = {action_name!r}\n')


def test_a_name_clash_found_incrementally_matches_a_scan_from_scratch(
        tree, daemon, from_scratch):
    tree.write('first.py', _declared('Shared', 'hot.shared'))
    tree.write('other.py', _module('Other'))
    running = daemon()
    generation = running.states.load().generation
    # A newcomer takes the name an unchanged module exports: refused,
    # though the incremental scan checks only the newcomer's names.
    tree.write('second.py', _declared('Twin', 'hot.shared'))
    wait_for(lambda: running.states.load().generation > generation,
             'the newcomer')
    _converges(running, from_scratch, 'the clash')
    current = running.states.load()
    assert current.modules['second'].error.kind == 'collision'
    assert 'first.py' in current.modules['second'].error.message
    assert current.action_owners['hot.shared'] == 'first'
    # Renamed, it is served; the incumbent keeps its name.
    generation = current.generation
    tree.write('second.py', _declared('Twin', 'hot.twin'))
    wait_for(lambda: running.states.load().generation > generation,
             'the rename')
    _converges(running, from_scratch, 'the rename')
    current = running.states.load()
    assert current.modules['second'].error is None
    assert {current.action_owners[n] for n in ('hot.shared', 'hot.twin')} \
        == {'first', 'second'}
    assert all(walked is not None for walked in running.walks[1:])
