"""The provider under faults: slow reloads, lost or stale manifests, old
versions run again and again, forged references, and tracebacks.

Like tests/unit/test_provider.py, these drive a provider directly over a
state directory the scanner published.
"""

import concurrent.futures
import gc
import json
import os
import shutil
import socket
import textwrap
import threading
import traceback
import types

import pytest
from mistral_lib import actions as ml_actions
from mistral_lib import serialization
from mistral_lib.actions import context as ml_context
from oslo_config import cfg

from hotload import conf as hotload_conf
from hotload import descriptors
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import provider as provider_mod
from hotload import store
from tests.polling import DEADLINE
from tests.polling import wait_for
from tests.unit.conftest import GREET

NAME = 'hot.greet.greet'


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def run(action):
    return action.run(ml_context.ActionContext())


def publish(tree, scan, provider, relpath, text):
    """Write a module, publish it and let the provider take it, as the
    daemon and its signal do."""
    tree.write(relpath, text)
    scan()
    provider.refresh()


def versioned(word: str) -> str:
    return GREET.replace('"hello "', f'"{word} "')


# Item 9: a refresh never blocks lookups.

@pytest.fixture
def block_loads(provider, monkeypatch):
    """Call to make the provider's manifest reads wait until the test
    opens the returned gate (``entered`` is set once one waits)."""
    blocked = types.SimpleNamespace(entered=threading.Event(),
                                    gate=threading.Event())
    real_load = provider._read_manifest

    def load():
        blocked.entered.set()
        blocked.gate.wait(DEADLINE)
        return real_load()

    def block():
        monkeypatch.setattr(provider, '_read_manifest', load)
        return blocked

    yield block
    blocked.gate.set()


def test_lookups_answer_from_the_current_table_during_a_refresh(
        tree, scan, provider, pool, block_loads, monkeypatch):
    publish(tree, scan, provider, 'greet.py', GREET)
    current = provider.find(NAME)
    blocked_load = block_loads()
    # Waiting for a new name is bounded by FIND_WAIT; make it generous so
    # only the refresh ending can release it here.
    monkeypatch.setattr(provider_mod, 'FIND_WAIT', DEADLINE)
    tree.write('other.py', GREET.replace('Greet', 'Other'))
    scan()  # published, no signal: the next lookup notices it
    # The lookup that notices does not pay for the reload...
    first = pool.submit(provider.find, NAME).result(timeout=DEADLINE)
    assert first is current
    assert blocked_load.entered.wait(DEADLINE)
    # ...nor does any other while the next table is being built.
    assert pool.submit(provider.find, NAME).result(
        timeout=DEADLINE) is current
    assert [d.name for d in pool.submit(provider.find_all).result(
        timeout=DEADLINE)] == [NAME]
    # A name only the new generation has waits for it, and is found.
    new = pool.submit(provider.find, 'hot.other.other')
    blocked_load.gate.set()
    assert new.result(timeout=DEADLINE).name == 'hot.other.other'
    assert provider.find(NAME) is not None


def test_a_name_nobody_publishes_waits_a_bounded_time(
        tree, scan, provider, pool, block_loads, monkeypatch):
    publish(tree, scan, provider, 'greet.py', GREET)
    blocked_load = block_loads()
    monkeypatch.setattr(provider_mod, 'FIND_WAIT', 0.05)
    tree.write('other.py', GREET.replace('Greet', 'Other'))
    scan()
    assert pool.submit(provider.find, 'hot.no.such').result(
        timeout=DEADLINE) is None
    assert blocked_load.entered.is_set()  # still building the table
    blocked_load.gate.set()
    wait_for(lambda: provider.find('hot.other.other'),
             'the new action once the refresh ends')


# The table only moves forward.

def test_a_removed_manifest_keeps_the_table(tree, scan, provider):
    publish(tree, scan, provider, 'greet.py', GREET)
    generation = provider.generation
    os.unlink(scan.states.current_path)  # rm state/manifest.json
    for _ in range(3):
        assert provider.find(NAME) is not None
        assert provider.refresh() is False
    assert [d.name for d in provider.find_all()] == [NAME]
    errors = provider.describe()['errors']
    assert len(errors) == 1
    assert 'manifest.json' in errors[0]
    assert provider.describe()['generation'] == generation
    # The daemon publishes again: served as usual.
    publish(tree, scan, provider, 'other.py',
            GREET.replace('Greet', 'Other'))
    assert provider.generation > generation
    assert provider.find('hot.other.other') is not None


def test_a_removed_state_directory_keeps_the_table(tree, scan, provider):
    publish(tree, scan, provider, 'greet.py', GREET)
    shutil.rmtree(scan.states.state_dir)
    for _ in range(3):
        assert provider.find(NAME) is not None
        provider.refresh()
    assert provider.generation == 1
    assert len(provider.describe()['errors']) == 1


def test_an_older_generation_is_refused_once(tree, scan, provider,
                                             monkeypatch):
    publish(tree, scan, provider, 'greet.py', versioned('v1'))
    first = scan.states.load()
    publish(tree, scan, provider, 'greet.py', versioned('v2'))
    serving = provider.find(NAME)
    assert provider.generation == first.generation + 1
    loads = []
    real_load = provider._read_manifest
    monkeypatch.setattr(provider, '_read_manifest',
                        lambda: loads.append(1) or real_load())
    scan.states.publish(first)  # a stale state directory comes back
    for _ in range(3):
        provider.refresh()
        assert provider.find(NAME) is serving
    assert provider.generation == first.generation + 1
    assert len(loads) == 1
    errors = provider.describe()['errors']
    assert len(errors) == 1
    assert f'generation {first.generation} is older' in errors[0]
    publish(tree, scan, provider, 'greet.py', versioned('v3'))
    assert provider.generation == first.generation + 2


def test_a_state_directory_reset_while_the_daemon_was_down_is_taken(
        tree, scan, provider):
    """Generation 1 again, but built after the served one: a reset."""
    publish(tree, scan, provider, 'greet.py', versioned('v1'))
    publish(tree, scan, provider, 'greet.py', versioned('v2'))
    assert provider.generation == 2
    shutil.rmtree(scan.states.state_dir)
    scan.states.ensure()
    publish(tree, scan, provider, 'greet.py', versioned('v3'))
    assert provider.generation == 1
    assert provider.describe()['errors'] == []
    assert run(provider.find(NAME).instantiate({'who': 'x'}, {})) == \
        'v3 x!'


# Item 10: an old version is imported once per process.

COUNTED = GREET.replace(
    'from mistral_lib import actions',
    'import os\n\nfrom mistral_lib import actions\n\n'
    'with open({log!r}, "a") as stream:\n'
    '    stream.write(f"{{os.getpid()}} {word}\\n")')


def imports_here(log: str, word: str) -> int:
    """How many times this process ran the module's top level as ``word``
    (the probe runs it too, in children of its own)."""
    with open(log) as stream:
        return stream.read().splitlines().count(f'{os.getpid()} {word}')


def serialized(ref, **state) -> str:
    """A serialized action of ``ref``, as an engine that ran it sends."""
    action = descriptors.HotloadAction(types.SimpleNamespace(**state), ref)
    return serialization.get_polymorphic_serializer().serialize(action)


def test_an_old_version_is_imported_once_for_many_actions(tree, scan,
                                                          provider, tmp_path):
    log = str(tmp_path / 'imports.log')
    publish(tree, scan, provider, 'greet.py',
            COUNTED.format(log=log, word='v1').replace('"hello "', '"v1 "'))
    ref = provider.find(NAME).ref
    publish(tree, scan, provider, 'greet.py',
            COUNTED.format(log=log, word='v2').replace('"hello "', '"v2 "'))
    assert provider.find(NAME).ref.content_key != ref.content_key
    data = serialized(ref, who='ann', punctuation='!')
    for _ in range(5):  # one after another, each gone before the next
        action = serialization.get_polymorphic_serializer().deserialize(data)
        assert run(action) == 'v1 ann!'
        del action
        gc.collect()
    assert imports_here(log, 'v1') == 1


# Item 14: references are checked before anything is read.

@pytest.fixture
def good(tree, scan, provider):
    """A serialized action's parts, for the tests to spoil."""
    publish(tree, scan, provider, 'greet.py', GREET)
    outer = json.loads(serialized(provider.find(NAME).ref, who='ann',
                                  punctuation='!'))
    return outer, json.loads(outer['__serial_data'])


def deserialize(outer, inner):
    outer = dict(outer, __serial_data=json.dumps(inner))
    return serialization.get_polymorphic_serializer().deserialize(
        json.dumps(outer))


def with_sha256(ref, sha256):
    """``ref`` naming ``sha256``, its content key made to match, as a
    forger would."""
    return dict(ref, sha256=sha256, content_key=manifest_mod.content_key(
        ref['module'], sha256, ref['imports']))


def assert_refused(action, *words):
    result = run(action)
    assert isinstance(result, ml_actions.Result)
    assert result.is_error()
    assert socket.gethostname() in result.error
    for word in words:
        assert word in result.error


@pytest.mark.parametrize('sha256', ['../../../../etc/hostname', '/dev/zero',
                                    'AB' * 32, 'ab' * 31])
def test_a_hash_that_is_no_sha256_is_refused(good, sha256):
    outer, inner = good
    inner['ref'] = with_sha256(inner['ref'], sha256)
    assert_refused(deserialize(outer, inner), NAME, 'sha256',
                   'not 64 lowercase hex digits')


def test_a_hash_naming_a_fifo_is_refused_without_blocking(good, pool,
                                                          tmp_path):
    fifo = str(tmp_path / 'fifo')
    os.mkfifo(fifo)
    outer, inner = good
    inner['ref'] = with_sha256(inner['ref'], fifo)
    try:
        action = pool.submit(deserialize, outer, inner).result(
            timeout=DEADLINE)
    finally:
        unblock(fifo)
    assert_refused(action, NAME, 'sha256', 'not 64 lowercase hex digits')


def unblock(fifo: str) -> None:
    """Let a reader stuck opening ``fifo`` go (it then reads nothing)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # nobody is reading it


@pytest.mark.parametrize('spoil, words', [
    (lambda ref: ref.update(extra=1), ['unknown keys extra']),
    (lambda ref: ref.pop('packages'), ['no keys packages']),
    (lambda ref: ref.update(content_key='../x'), ['content_key']),
    (lambda ref: ref.update(imports={'common': '../../x'}), ['import']),
    (lambda ref: ref.update(module='../../x'), ['module']),
    (lambda ref: ref.update(class_name='Greet; x'), ['class_name']),
    (lambda ref: ref.update(packages='greet'), ['packages']),
    (lambda ref: ref.update(generation=-1), ['generation -1 is not a']),
    (lambda ref: ref.update(generation=False), ['generation False']),
])
def test_a_malformed_reference_fails_the_action_cleanly(good, spoil, words):
    outer, inner = good
    spoil(inner['ref'])
    assert_refused(deserialize(outer, inner), NAME,
                   'the reference sent is invalid', *words)


@pytest.mark.parametrize('inner', [
    [], {'ref': None, 'data': {}}, {'ref': {}, 'data': []},
    {'ref': {}, 'data': {}, 'more': 1}])
def test_a_malformed_action_fails_cleanly_without_a_name(good, inner):
    outer, _ = good
    assert_refused(deserialize(outer, inner), '(name unknown)')


def test_the_blob_store_reads_only_regular_blobs(tmp_path, pool):
    blobs = store.BlobStore(str(tmp_path / 'state'))
    sha = blobs.put(b'x = 1\n')
    assert blobs.get(sha) == b'x = 1\n'
    with pytest.raises(exceptions.BlobError, match='more than the 3'):
        blobs.get(sha, max_size=3)
    for name in ('../../../../etc/hostname', '/dev/zero'):
        with pytest.raises(exceptions.BlobError, match='not a blob name'):
            blobs.get(name)
    fifo, link = 'f' * 64, 'e' * 64
    os.makedirs(os.path.dirname(blobs.path(fifo)))
    os.mkfifo(blobs.path(fifo))
    os.makedirs(os.path.dirname(blobs.path(link)))
    os.symlink('/dev/zero', blobs.path(link))
    try:
        with pytest.raises(exceptions.BlobError, match='not a regular file'):
            pool.submit(blobs.get, fifo).result(timeout=DEADLINE)
    finally:
        unblock(blobs.path(fifo))
    with pytest.raises(exceptions.BlobError, match='cannot open blob'):
        pool.submit(blobs.get, link).result(timeout=DEADLINE)


# Item 16: each version's traceback shows its own source.

BOOM = textwrap.dedent('''
    from mistral_lib import actions


    class Boom(actions.Action):
        def run(self, context):{padding}
            raise ValueError("{word}")  # the {word} line
''')


def failure(action) -> str:
    try:
        run(action)
    except ValueError:
        return traceback.format_exc()
    raise AssertionError('the action did not fail')


def test_each_version_traceback_shows_its_own_source(tree, scan, provider):
    publish(tree, scan, provider, 'boom.py',
            BOOM.format(word='v0', padding=''))
    old = provider.find('hot.boom.boom').instantiate({}, {})
    publish(tree, scan, provider, 'boom.py',
            BOOM.format(word='v1', padding='\n        x = 1'))
    new = provider.find('hot.boom.boom').instantiate({}, {})
    new_traceback = failure(new)
    old_traceback = failure(old)
    assert 'raise ValueError("v1")  # the v1 line' in new_traceback
    assert 'raise ValueError("v0")  # the v0 line' in old_traceback
    assert 'boom.py' in old_traceback
    assert 'v1' not in old_traceback
    # The executor's copy, loaded from the serialized form, too.
    restored = serialization.get_polymorphic_serializer().deserialize(
        serialization.get_polymorphic_serializer().serialize(old))
    assert 'raise ValueError("v0")' in failure(restored)


def test_a_process_names_its_node_by_mistrals_host_option(tree, scan):
    """Several simulated nodes on one machine are told apart by
    ``[DEFAULT] host``, in status and in the "cannot run" failure."""
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    hotload_conf.register_host_opt(conf)
    conf([], default_config_files=[])
    conf.set_override('host', 'node-x')
    conf.set_override('state_dir', scan.states.state_dir, 'hotload')
    conf.set_override('actions_dir', tree.root, 'hotload')
    provider = provider_mod.HotloadActionProvider('hotload', conf=conf)
    assert provider.describe()['host'] == 'node-x'
    publish(tree, scan, provider, 'greet.py', GREET)
    outer = json.loads(serialized(provider.find(NAME).ref, who='ann'))
    inner = json.loads(outer['__serial_data'])
    inner['ref'] = with_sha256(inner['ref'], 'ab' * 32)
    result = run(deserialize(outer, inner))
    assert result.is_error()
    assert 'cannot run on host node-x' in result.error
