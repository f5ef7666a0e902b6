"""The example workflows pass a real Mistral's workflow validation."""

import pathlib

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[2] / 'actions'
                   / 'examples').glob('*.yaml'))


@pytest.mark.parametrize('path', EXAMPLES, ids=lambda p: p.stem)
def test_example_workflow_is_valid(node, path):
    # POST /v2/workflows/validate
    result = node.client.workflows.validate(path.read_text())
    assert result == {'valid': True}, result


def test_all_seed_examples_are_there():
    assert [p.stem for p in EXAMPLES] == [
        'create_image', 'create_volume_backup', 'start_server']
