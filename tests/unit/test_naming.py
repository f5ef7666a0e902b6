"""Action names: the seed's form, declared names and reserved prefixes."""

import pytest

from hotload import naming


@pytest.mark.parametrize('class_name, expected', [
    ('AssertStatus', 'assert_status'),
    ('FilterBy', 'filter_by'),
    ('Exec', 'exec'),
    ('RunnerAction', 'runner'),
    ('Action', 'action'),
    ('HTTPGet', 'http_get'),
    ('GetV2Status', 'get_v2_status'),
    ('already_snake', 'already_snake'),
])
def test_snake_case(class_name, expected):
    assert naming.snake_case(class_name) == expected


def test_action_name_forms():
    assert naming.action_name('int32bit', 'cinder.backups', 'Create') == \
        'int32bit.cinder.backups.create'
    assert naming.action_name('', 'example', 'RunnerAction') == \
        'example.runner'
    assert naming.action_name('hot', 'x', 'Greet', 'my.own.name') == \
        'my.own.name'


def test_reserved_prefix():
    assert naming.reserved_prefix('std.echo', ['std.']) == 'std.'
    assert naming.reserved_prefix('standard.echo', ['std.']) is None
    assert naming.reserved_prefix('nova.x', ['std.', 'nova.']) == 'nova.'
