"""The provider on its own: table, exact versions, serialization.

These tests drive the provider directly on a state directory the scanner
filled; the functional tests show the same inside a real Mistral.
"""

import gc
import os
import socket

import pytest
from mistral_lib import actions as ml_actions
from mistral_lib import serialization
from mistral_lib.actions import context as ml_context

from hotload import versions
from tests.polling import wait_for
from tests.unit.conftest import GREET

SLOW = GREET.replace('"hello "', 'VERSION + " "').replace(
    'from mistral_lib import actions',
    'from mistral_lib import actions\n\nVERSION = "v1"')


def run(action):
    return action.run(ml_context.ActionContext())


def roundtrip(action):
    polymorphic = serialization.get_polymorphic_serializer()
    return polymorphic.deserialize(polymorphic.serialize(action))


def test_find_sees_each_new_generation_without_a_signal(tree, scan,
                                                        provider):
    assert provider.find('hot.greet.greet') is None
    tree.write('greet.py', GREET)
    scan()
    descriptor = provider.find('hot.greet.greet')
    assert descriptor.params_spec == 'who, punctuation="!"'
    assert descriptor.description == 'Greet someone.'
    assert [d.name for d in provider.find_all()] == ['hot.greet.greet']
    tree.remove('greet.py')
    scan()
    # A name the table still has is answered at once while the new table
    # is built in the background; it goes a moment later.
    wait_for(lambda: provider.find('hot.greet.greet') is None,
             'the removed action to go')
    assert provider.find_all() == []


def test_instantiated_action_runs_and_travels_with_its_version(
        tree, scan, provider):
    tree.write('greet.py', SLOW)
    scan()
    action = provider.find('hot.greet.greet').instantiate({'who': 'ann'},
                                                          {})
    assert run(action) == 'v1 ann!'
    tree.write('greet.py', SLOW.replace('"v1"', '"v2"'))
    scan()
    provider.refresh()  # as the daemon's signal does
    # The engine chose v1; the executor runs v1 even though v2 is current.
    assert run(roundtrip(action)) == 'v1 ann!'
    newer = provider.find('hot.greet.greet').instantiate({'who': 'bob'}, {})
    assert run(roundtrip(newer)) == 'v2 bob!'
    assert newer.ref.content_key != action.ref.content_key


def test_missing_content_fails_the_action_clearly(tree, scan, provider,
                                                  monkeypatch):
    tree.write('greet.py', SLOW)
    scan()
    action = provider.find('hot.greet.greet').instantiate({'who': 'x'}, {})
    data = serialization.get_polymorphic_serializer().serialize(action)
    ref = action.ref
    # The version is no longer in memory (a newer one is served, the
    # action is gone and its grace passed) and the blob store lost it.
    tree.write('greet.py', SLOW.replace('"v1"', '"v2"'))
    scan()
    provider.refresh()
    del action
    gc.collect()
    monkeypatch.setattr(versions, 'HOLD_GRACE', 0.0)
    provider.cache.sweep()
    assert ref.content_key not in provider.cache.loaded()
    os.unlink(scan.states.blobs.path(ref.sha256))
    restored = serialization.get_polymorphic_serializer().deserialize(data)
    result = run(restored)
    assert isinstance(result, ml_actions.Result)
    assert 'hot.greet.greet' in result.error
    assert ref.content_key in result.error
    assert socket.gethostname() in result.error


def test_in_tree_imports_are_exact_per_version(tree, scan, provider):
    tree.write('common.py', 'WORD = "one"\n')
    tree.write('pkg/use.py', GREET.replace(
        'from mistral_lib import actions',
        'from mistral_lib import actions\n'
        'from hotload_actions import common\nfrom .. import common as rel'
    ).replace('"hello "', 'common.WORD + rel.WORD + " "'))
    scan()
    first = provider.find('hot.pkg.use.greet').instantiate({'who': 'a'}, {})
    tree.write('common.py', 'WORD = "two"\n')
    scan()
    provider.refresh()
    second = provider.find('hot.pkg.use.greet').instantiate({'who': 'a'}, {})
    assert run(first) == 'oneone a!'
    assert run(second) == 'twotwo a!'
    assert run(roundtrip(first)) == 'oneone a!'


def test_seed_style_action_runs_without_context(tree, scan, provider):
    tree.write('seed.py', '''
        class Exec:
            """Run something."""
            __export__ = True

            def __init__(self, cmd):
                self.cmd = cmd

            def run(self):
                return self.cmd.upper()
    ''')
    scan()
    action = provider.find('hot.seed.exec').instantiate({'cmd': 'ls'}, {})
    assert run(roundtrip(action)) == 'LS'
    assert action.is_sync()


def test_wrong_parameters_are_refused_before_running(tree, scan, provider):
    tree.write('greet.py', GREET)
    scan()
    descriptor = provider.find('hot.greet.greet')
    with pytest.raises(Exception, match='missing=.*who'):
        descriptor.check_parameters({})
    assert 'content_key=' in repr(descriptor)


def test_untrusted_or_broken_manifest_keeps_the_table(tree, scan, provider):
    tree.write('greet.py', GREET)
    scan()
    assert provider.find('hot.greet.greet') is not None
    path = scan.states.current_path
    loads = []
    real_load = provider._read_manifest
    provider._read_manifest = lambda: loads.append(1) or real_load()
    os.chmod(path, 0o666)  # someone else could have written it
    for _ in range(3):
        assert provider.find('hot.greet.greet') is not None
    wait_for(lambda: provider.cache.errors, 'the refusal')
    assert loads == []  # refused from its stat, never read
    assert 'manifest.json is not trusted' in provider.cache.errors[-1]
    os.chmod(path, 0o644)
    os.unlink(path)
    with open(path, 'w') as stream:
        stream.write('{"schema": 2, "generation": 9, "created_at": "", '
                     '"package_name": "p", "action_prefix": "", '
                     '"modules": {"x": "not a record"}}')
    for _ in range(3):
        assert provider.find('hot.greet.greet') is not None
    wait_for(lambda: len(provider.cache.errors) == 2, 'the second refusal')
    for _ in range(3):
        assert provider.find('hot.greet.greet') is not None
    assert len(loads) == 1  # read once, refused until it changes
    assert "names record 'not a record', which is not a sha256" in \
        provider.cache.errors[-1]


def test_version_in_use_stays_loaded_until_its_action_is_gone(
        tree, scan, provider, monkeypatch):
    tree.write('helper.py', 'WORD = "old"\n')
    tree.write('late.py', GREET.replace(
        'def run(self, context):',
        'def run(self, context):\n        from . import helper\n'
        '        return helper.WORD\n\n    def unused(self):'))
    scan()
    action = provider.find('hot.late.greet').instantiate({'who': 'x'}, {})
    key = action.ref.content_key
    for word in ('new', 'newer'):  # two generations later...
        tree.write('helper.py', f'WORD = "{word}"\n')
        scan()
        provider.refresh()
    # ...the action in flight still imports its own helper at run time.
    assert key in provider.cache.loaded()
    assert run(action) == 'old'
    del action
    gc.collect()
    provider.cache.sweep()
    assert key in provider.cache.loaded()  # used a moment ago
    monkeypatch.setattr(versions, 'HOLD_GRACE', 0.0)  # ...a while ago
    provider.cache.sweep()
    assert key not in provider.cache.loaded()


def test_a_new_generation_reads_only_the_records_that_changed(
        tree, scan, provider, monkeypatch):
    for index in range(6):
        tree.write(f'greet{index}.py', GREET)
    scan()
    provider.refresh()
    assert len(provider.find_all()) == 6
    kept = provider.find('hot.greet0.greet')
    reads = []
    read_record = provider.states.read_record

    def counted(name, sha):
        reads.append(name)
        return read_record(name, sha)

    monkeypatch.setattr(provider.states, 'read_record', counted)
    tree.write('greet3.py', GREET.replace('hello', 'hi'))
    tree.write('greet6.py', GREET)
    tree.remove('greet5.py')
    scan()
    assert provider.refresh()
    # One record per changed or added module; none for the removed one.
    assert sorted(reads) == ['greet3', 'greet6']
    assert provider.find('hot.greet0.greet') is kept
    assert provider.find('hot.greet5.greet') is None
    assert run(provider.find('hot.greet3.greet').instantiate(
        {'who': 'ann'}, {})) == 'hi ann!'
    assert sorted(d.name for d in provider.find_all()) == [
        f'hot.greet{i}.greet' for i in (0, 1, 2, 3, 4, 6)]
