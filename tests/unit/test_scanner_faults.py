"""The scanner under hostile trees and interruptions (issue 8).

Absurdly deep trees, modules that write to their own file at import,
symlinks around the directory rule, files removed mid-scan, and the
daemon's progress and cancellation hooks.
"""

import functools
import os
import shutil
import threading
import time

import pytest

from hotload import exceptions
from hotload import scanner as scanner_mod
from hotload import store
from hotload import trust
from tests.unit.conftest import GREET
from tests.unit.conftest import served

DEEP = 1100


def _make_chain(top: str, levels: int) -> str:
    """``top/d/d/.../d`` (``levels`` of them), without recursion.

    Built from the bottom up by renames, so each step names a short path
    (resolving a 1,100-level path for every directory costs seconds).
    """
    spare = os.path.join(top, 'd.new')
    for level in range(levels):
        os.mkdir(spare)
        os.chmod(spare, 0o755)
        if level:
            os.rename(os.path.join(top, 'd'), os.path.join(spare, 'd'))
        os.rename(spare, os.path.join(top, 'd'))
    return os.path.join(top, *['d'] * levels)


def _remove_chain(top: str) -> None:
    """Undo :func:`_make_chain` (shutil.rmtree recurses once per level)."""
    spare = os.path.join(top, 'd.old')
    while os.path.isdir(os.path.join(top, 'd')):
        level = os.path.join(top, 'd')
        for name in os.listdir(level):
            if name != 'd':
                os.unlink(os.path.join(level, name))
        if os.path.isdir(os.path.join(level, 'd')):
            os.rename(os.path.join(level, 'd'), spare)
            os.rmdir(level)
            os.rename(spare, level)
        else:
            os.rmdir(level)


@pytest.fixture
def deep_tree(tree):
    """``d/d/...`` and ``not-a-package/d/d/...``, 1,100 levels each."""
    bottom = _make_chain(tree.root, DEEP)
    os.mkdir(tree.path('not-a-package'), 0o755)
    named = _make_chain(tree.path('not-a-package'), DEEP - 1)
    yield bottom, named
    _remove_chain(tree.root)
    _remove_chain(tree.path('not-a-package'))


def test_tree_1100_levels_deep_is_served_down_to_max_depth(
        tree, scan, deep_tree):
    bottom, named = deep_tree
    tree.write('greet.py', GREET)
    at_limit = os.sep.join(['d'] * 32)
    tree.write(os.path.join(at_limit, 'edge.py'), GREET)
    tree.write(os.path.join(bottom, 'bottom.py'), GREET)
    tree.write(os.path.join(named, 'lost.py'), GREET)
    found = scan()
    assert set(served(found)) == {
        'hot.greet.greet', 'hot.' + '.'.join(['d'] * 32) + '.edge.greet'}
    too_deep = os.sep.join(['d'] * 33)
    assert {m.name: error.path for m, error in found.errors()} == {
        too_deep: too_deep, 'not-a-package': 'not-a-package'}
    error = found.modules[too_deep].error
    assert error.kind == 'refused'
    assert 'nested 33 levels deep, deeper than max_depth (32)' in \
        error.message
    assert '[hotload] max_depth' in error.message
    assert 'not a valid Python package name' in \
        found.modules['not-a-package'].error.message


class Clock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def unstable(monkeypatch, clock):
    """The daemon's long-lived tracker, given to every scan of ``scan``."""
    tracker = scanner_mod.UnstableFiles(clock=clock)
    monkeypatch.setattr(scanner_mod, 'Scanner', functools.partial(
        scanner_mod.Scanner, unstable=tracker))
    return tracker


def self_writer(tree, relpath: str) -> str:
    """A module that appends a line to its own file when imported."""
    return GREET + (f'\nwith open({tree.path(relpath)!r}, "a") as f:\n'
                    f'    f.write("# imported\\n")\n')


def test_module_writing_its_own_file_is_held_back(tree, scan, unstable,
                                                  clock):
    tree.write('greet.py', GREET)
    tree.write('other.py', GREET.replace('Greet(', 'Other('))
    first = scan()
    tree.write('greet.py', self_writer(tree, 'greet.py'))
    flagged = scan()
    assert scan.probed == ['greet']
    record = flagged.modules['greet']
    assert (record.error.kind, record.error.path) == ('unstable', 'greet.py')
    assert 'greet.py changed while the probe imported greet, once' in \
        record.error.message
    assert 'does the module write to its own file at import?' in \
        record.error.message
    assert 'Probed again at most every 1 s' in record.error.message
    assert record.good == first.modules['greet'].good
    assert served(flagged) == served(first)

    # Its write is an event, hence a scan; none of them publishes.
    for _ in range(5):
        again = scan()
        assert scan.probed == []
        assert again.generation == flagged.generation

    clock.now = unstable.next_due()
    second = scan()
    assert scan.probed == ['greet']
    assert '2 times in a row' in second.modules['greet'].error.message
    assert 'at most every 2 s' in second.modules['greet'].error.message
    assert second.generation == flagged.generation + 1
    assert second.modules['greet'].good == first.modules['greet'].good
    assert unstable.next_due() == clock.now + 2

    # Fixed, but still held until its backoff expires.
    tree.write('greet.py', GREET.replace('hello', 'bonjour'))
    assert scan().generation == second.generation
    assert scan.probed == []
    clock.now += 2
    fixed = scan()
    assert scan.probed == ['greet']
    assert fixed.modules['greet'].error is None
    assert fixed.modules['greet'].good.sha256 != \
        first.modules['greet'].good.sha256
    assert unstable.next_due() is None


def test_importer_of_a_self_writing_module_is_held_back_too(
        tree, scan, unstable, clock):
    tree.write('common.py', self_writer(tree, 'common.py'))
    tree.write('use.py', 'from . import common\n' + GREET)
    first = scan()
    for name in ('common', 'use'):
        assert first.modules[name].error.kind == 'unstable', name
        assert first.modules[name].error.path == 'common.py'
    assert 'or a module it imports' in first.modules['use'].error.message
    for _ in range(3):
        assert scan().generation == first.generation
        assert scan.probed == []


def test_unstable_backoff_doubles_up_to_its_limit(clock):
    tracker = scanner_mod.UnstableFiles(first_backoff=1.0, max_backoff=5.0,
                                        clock=clock)
    assert tracker.next_due() is None
    assert [tracker.flag('a')[1] for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert tracker.strikes('a') == (4, 5.0)
    assert tracker.is_held('a')
    tracker.flag('b')
    assert tracker.next_due() == clock.now + 1.0
    clock.now += 1.0
    assert not tracker.is_held('b') and tracker.is_held('a')
    tracker.retain(['a'])
    assert tracker.strikes('b') is None
    tracker.clear('a')
    assert tracker.next_due() is None


def test_symlink_into_a_world_writable_directory_is_refused(tree, scan):
    tree.write('bad-dir/evil.py', GREET)
    os.chmod(tree.path('bad-dir'), 0o777)
    tree.write('open/inner/evil.py', GREET)
    os.chmod(tree.path('open'), 0o777)
    tree.write('pkg/greet.py', GREET)
    os.symlink('bad-dir/evil.py', tree.path('alias.py'))
    os.symlink('open/inner/evil.py', tree.path('nested.py'))
    os.symlink(os.path.join('pkg', 'greet.py'), tree.path('good.py'))
    found = scan()
    assert served(found) == {'hot.pkg.greet.greet': 'pkg/greet.py',
                             'hot.good.greet': 'good.py'}
    alias = found.modules['alias'].error
    assert (alias.kind, alias.path) == ('refused', 'alias.py')
    assert alias.message.startswith(
        'symlink to bad-dir/evil.py: directory bad-dir is writable by '
        'everyone (mode 0777)')
    nested = found.modules['nested'].error
    assert nested.message.startswith(
        'symlink to open/inner/evil.py: directory open is writable by '
        'everyone')


def test_symlinked_directory_inside_the_tree_is_reported(tree, scan):
    tree.write('pkg/greet.py', GREET)
    os.symlink('pkg', tree.path('alias'))
    found = scan()
    assert served(found) == {'hot.pkg.greet.greet': 'pkg/greet.py'}
    error = found.modules['alias'].error
    assert (error.kind, error.path) == ('refused', 'alias')
    assert error.message.startswith(
        'symlinked directory: not followed (it points to pkg)')


def test_dangling_symlink_names_its_missing_target(tree, scan):
    os.symlink('gone.py', tree.path('alias.py'))
    error = scan().modules['alias'].error
    assert error.kind == 'refused'
    assert error.message == 'symlink to gone.py: the target does not exist'


@pytest.fixture
def remove_after_listing(monkeypatch, tree):
    """Make files go between the directory listing and their open.

    :returns: a dict of directory (relative) to a function run right after
        that directory was listed.
    """
    hooks = {}
    real_scandir = os.scandir

    class Listed:
        """Entries listed before the hook ran, used as os.scandir's are."""

        def __init__(self, entries):
            self.entries = iter(entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return None

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

    def scandir(path='.'):
        with real_scandir(path) as entries:
            listed = list(entries)
        hook = isinstance(path, str) and hooks.pop(
            os.path.relpath(path, tree.root), None)
        if hook:
            hook()
        return Listed(listed)

    monkeypatch.setattr(os, 'scandir', scandir)
    return hooks


def test_files_removed_during_the_scan_are_removed_not_refused(
        tree, scan, remove_after_listing):
    tree.write('greet.py', GREET)
    tree.write('gone.py', GREET.replace('Greet(', 'Gone('))
    tree.write('pkg/mod.py', GREET.replace('Greet(', 'Mod('))
    tree.write('pkg/sub/deep.py', GREET.replace('Greet(', 'Deep('))
    first = scan()
    assert len(served(first)) == 4

    def rm_rf():
        tree.remove('gone.py')
        shutil.rmtree(tree.path('pkg'))

    remove_after_listing['.'] = rm_rf
    found = scan()
    assert found.errors() == []
    assert served(found) == {'hot.greet.greet': 'greet.py'}
    assert sorted(found.modules) == ['greet']


def test_file_whose_directory_was_replaced_is_removed_not_refused(
        tree, scan, remove_after_listing):
    tree.write('greet.py', GREET)
    tree.write('pkg/mod.py', GREET.replace('Greet(', 'Mod('))

    def replace_directory():
        shutil.rmtree(tree.path('pkg'))
        tree.write('pkg', 'not a directory any more\n')  # ENOTDIR

    remove_after_listing['pkg'] = replace_directory
    found = scan()
    assert found.errors() == []
    assert sorted(found.modules) == ['greet']


class ProbeSpy:
    """Stands for the real probe: records starts, can run a hook first."""

    def __init__(self, real, before=None):
        self.real = real
        self.before = before or (lambda name: None)
        self.started: list[str] = []

    def probe(self, name, sources):
        self.started.append(name)
        self.before(name)
        return self.real.probe(name, sources)


def spy_on_probe(scan, before=None) -> ProbeSpy:
    scan.probe = ProbeSpy(scan.probe, before)
    return scan.probe


def with_hooks(monkeypatch, **hooks) -> None:
    monkeypatch.setattr(scanner_mod, 'Scanner', functools.partial(
        scanner_mod.Scanner, **hooks))


def test_progress_is_reported_per_file_and_per_probe(tree, scan,
                                                     monkeypatch):
    events = []
    with_hooks(monkeypatch, on_progress=lambda: events.append('progress'))
    spy_on_probe(scan, before=lambda name: events.append('probe'))
    for index in range(3):
        tree.write(f'mod{index}.py', GREET.replace('Greet(', f'Greet{index}('))
    scan()
    walk_ticks = events[:events.index('probe')]
    # The directory, then each of the three files hashed.
    assert walk_ticks.count('progress') >= 4
    assert events.count('probe') == 3
    # Every completed probe is progress too.
    assert events[-1] == 'progress'
    assert events[events.index('probe'):].count('progress') == 3


def test_cancel_during_the_walk_publishes_nothing(tree, scan, monkeypatch):
    cancelled = threading.Event()
    with_hooks(monkeypatch, cancelled=cancelled, on_progress=cancelled.set)
    spy = spy_on_probe(scan)
    tree.write('greet.py', GREET)
    tree.write('other.py', GREET.replace('Greet(', 'Other('))
    with pytest.raises(exceptions.ScanCancelled):
        scan()
    assert spy.started == []
    assert scan.states.load() is None


def test_cancel_while_probing_drops_pending_probes(tree, scan, monkeypatch):
    release = threading.Event()
    cancelled = threading.Event()

    def hang(name):
        cancelled.set()
        # Probe.cancel() would kill it; here it ends when the test says.
        release.wait(30)

    with_hooks(monkeypatch, cancelled=cancelled)
    spy = spy_on_probe(scan, before=hang)
    for index in range(6):
        tree.write(f'mod{index}.py', GREET.replace('Greet(', f'Greet{index}('))
    started = time.monotonic()
    try:
        with pytest.raises(exceptions.ScanCancelled):
            scan()
        # Returned while a probe is still in flight: it was not waited for.
        assert not release.is_set()
        assert time.monotonic() - started < 10
    finally:
        release.set()
    assert 1 <= len(spy.started) <= 2  # scan's workers=2; the rest dropped
    assert scan.states.load() is None


def test_probe_cancelled_is_not_recorded_as_the_modules_error(
        tree, scan, monkeypatch):
    def cancel(name):
        raise exceptions.ScanCancelled('probe cancelled')

    spy_on_probe(scan, before=cancel)
    tree.write('greet.py', GREET)
    with pytest.raises(exceptions.ScanCancelled):
        scan()
    assert scan.states.load() is None


def test_snapshot_tree_takes_max_depth(tree, tmp_path):
    tree.write('a/b/c/deep.py', GREET)
    tree.write('a/top.py', GREET)
    snapshot = scanner_mod.snapshot_tree(
        tree.root, trust.TrustPolicy(['root'], 1 << 20),
        store.BlobStore(str(tmp_path / 'blobs')), max_depth=2)
    assert snapshot.modules() == ['a.top']
    assert list(snapshot.refused) == [os.path.join('a', 'b', 'c')]
