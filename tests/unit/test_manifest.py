"""The manifest document: round trip, validation and content keys."""

import dataclasses
import hashlib
import json

import pytest

from hotload import exceptions
from hotload import manifest


def _sample() -> manifest.Manifest:
    good = manifest.ModuleVersion(
        'a' * 64, {'common': 'b' * 64, 'gone': None},
        manifest.content_key('x', 'a' * 64, {'common': 'b' * 64}),
        (manifest.ActionSpec('hot.x.greet', 'Greet', None, 'who',
                             'Greet.', 4),))
    error = manifest.ModuleError('syntax', 'SyntaxError: bad', 'x.py', 2,
                                 sha256='c' * 64)
    return manifest.Manifest.build(
        {'x': manifest.ModuleRecord('x', 'x.py', good, error)},
        'pkg', 'hot', 7)


def _round_trip(sample: manifest.Manifest) -> manifest.Manifest:
    records = {sha: manifest.record_json(sample.modules[name])
               for name, sha in sample.record_shas.items()}
    return manifest.Manifest.from_records(
        manifest.Index.from_json(sample.to_json()), records)


def test_json_round_trip():
    sample = _sample()
    document = json.loads(sample.to_json())
    assert document['schema'] == manifest.SCHEMA_VERSION == 2
    # The index names each record by the sha256 of its bytes.
    assert document['modules'] == {
        'x': hashlib.sha256(manifest.record_json(
            sample.modules['x'])).hexdigest()}
    assert _round_trip(sample) == sample


def test_unchanged_records_keep_their_sha_without_serializing():
    sample = _sample()
    extra = manifest.ModuleRecord('y', 'y.py')
    following = manifest.Manifest.build(
        dict(sample.modules, y=extra), 'pkg', 'hot', 8, previous=sample)
    assert following.record_shas['x'] == sample.record_shas['x']
    assert following.record_shas['y'] == manifest.record_sha(extra)
    assert not following.same_table(sample)
    again = manifest.Manifest.build(dict(following.modules), 'pkg', 'hot',
                                    9, previous=following)
    assert again.same_table(following)
    assert again.to_json() != following.to_json()  # another generation


@pytest.mark.parametrize('data, message', [
    (b'{', 'not a JSON document'),
    (b'[]', 'schema None'),
    (b'{"schema": 1, "generation": 1, "modules": {}}', 'schema 1 is not'),
    (b'{"schema": 2}', 'malformed manifest'),
    (b'{"schema": 2, "generation": 1, "created_at": "", "package_name": '
     b'"p", "action_prefix": "h", "modules": {"x": "../../etc/passwd"}}',
     'not a sha256'),
])
def test_invalid_documents_are_refused(data, message):
    with pytest.raises(exceptions.ManifestError, match=message):
        manifest.Index.from_json(data, 'test')


def test_a_record_must_match_its_sha_and_its_name():
    sample = _sample()
    index = manifest.Index.from_json(sample.to_json())
    data = manifest.record_json(sample.modules['x'])
    with pytest.raises(exceptions.ManifestError, match='does not match'):
        manifest.Manifest.from_records(
            index, {index.records['x']: data + b' '})
    with pytest.raises(exceptions.ManifestError, match='names module'):
        manifest.record_from_json(data, 'y')
    with pytest.raises(exceptions.ManifestError, match='is missing'):
        manifest.Manifest.from_records(index, {})


def test_content_key_covers_module_and_imports():
    key = manifest.content_key('x', 'a' * 64, {'common': 'b' * 64})
    assert key == manifest.content_key('x', 'a' * 64, {'common': 'b' * 64})
    assert key != manifest.content_key('x', 'a' * 64, {'common': 'c' * 64})
    assert key != manifest.content_key('x', 'd' * 64, {'common': 'b' * 64})
    assert key != manifest.content_key('x', 'a' * 64, {})
    assert key != manifest.content_key('y', 'a' * 64, {'common': 'b' * 64})


def test_errors_and_actions_views():
    sample = _sample()
    (action, module), = sample.actions()
    assert (action.name, module.path) == ('hot.x.greet', 'x.py')
    (module, error), = sample.errors()
    assert error.location() == 'x.py:2'


def test_action_owners_follow_the_records_that_changed():
    sample = _sample()
    assert sample.action_owners == {'hot.x.greet': 'x'}
    spec = manifest.ActionSpec('hot.y.wave', 'Wave', None, '', '', 1)
    y = manifest.ModuleRecord('y', 'y.py', dataclasses.replace(
        sample.modules['x'].good, actions=(spec,)))
    following = manifest.Manifest.build({'y': y}, 'pkg', 'hot', 8,
                                        previous=sample)
    # Derived from the previous generation's, and what a fresh count says.
    assert 'action_owners' in vars(following)
    assert following.action_owners == {'hot.y.wave': 'y'}
    assert following.action_owners == dataclasses.replace(
        following).action_owners
