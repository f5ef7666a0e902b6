"""The manifest document: round trip, validation and content keys."""

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


def test_json_round_trip():
    sample = _sample()
    data = sample.to_json()
    assert json.loads(data)['schema'] == manifest.SCHEMA_VERSION
    assert manifest.Manifest.from_json(data) == sample


@pytest.mark.parametrize('data, message', [
    (b'{', 'not a JSON document'),
    (b'[]', 'schema None'),
    (b'{"schema": 1}', 'malformed manifest'),
])
def test_invalid_documents_are_refused(data, message):
    with pytest.raises(exceptions.ManifestError, match=message):
        manifest.Manifest.from_json(data, 'test')


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
