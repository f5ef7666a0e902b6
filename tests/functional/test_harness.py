"""The Mistral harness itself: a real Mistral 23 comes up and goes away.

Needs RabbitMQ and PostgreSQL on 127.0.0.1 (tools/ensure-services, which
tox's functional environment runs first); without them the tests fail.
The venv is the harness's default one ($MISTRAL_HARNESS_VENV to choose
another); the project is not installed into it here, so these tests do
not depend on its packaging.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tools'))

import mistral_harness

ECHO_WORKFLOW = """---
version: '2.0'
echo_twice:
  input:
    - words
  tasks:
    echo:
      with-items: word in <% $.words %>
      action: std.echo output=<% $.word %>
      publish:
        echoed: <% task().result %>
  output:
    echoed: <% $.echoed %>
"""


@pytest.fixture(scope='module')
def mistral(tmp_path_factory):
    harness = mistral_harness.MistralHarness(
        mistral_harness.default_venv(), tmp_path_factory.mktemp('mistral'),
        install_project=False)
    with harness:
        yield harness


def _family(harness):
    return mistral_harness._family(
        {pid: harness._starttimes[s] for s, pid in harness.pids.items()})


def _actions_run(harness):
    text = harness.server_log('executor').read_text()
    return text.count("Send RPC request 'on_action_complete'")


def _databases(harness):
    rows = harness._pg(('SELECT datname FROM pg_database', []))[0]
    return {row[0] for row in rows}


def test_three_servers_each_with_a_worker(mistral):
    pids = {mistral.api_pid, mistral.engine_pid, mistral.executor_pid}
    assert len(pids) == 3
    family = _family(mistral)
    assert pids <= family
    # Every mistral-server master forks one worker.
    assert len(family) == 6
    status = mistral.status()
    assert status['api'] == 'HTTP 200'
    assert all(s['alive'] and s['workers']
               for s in status['servers'].values())


def test_workflow_over_rest(mistral):
    execution = mistral.run_workflow(
        ECHO_WORKFLOW, 'echo_twice', {'words': ['a', 'b']}, cleanup=True)
    assert execution['state'] == 'SUCCESS'
    assert execution['output'] == {'echoed': ['a', 'b']}


def test_mistral_cli(mistral):
    out = subprocess.run(
        ['mistral', 'run-action', 'std.echo', '{"output": "from the CLI"}'],
        env=mistral.env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {'result': 'from the CLI'}
    names = subprocess.run(
        ['mistral', 'action-list', '-f', 'value', '-c', 'Name'],
        env=mistral.env, capture_output=True, text=True,
        check=True).stdout.split()
    assert 'std.echo' in names


def test_python_mistralclient(mistral):
    code = (
        'import os\n'
        'from mistralclient.api import client\n'
        'c = client.client(mistral_url=os.environ["MISTRAL_URL"])\n'
        'print(sorted(a.name for a in c.actions.list(limit=-1)'
        ' if a.name.startswith("std.e")))\n')
    out = subprocess.run(
        [str(mistral.python), '-c', code], env=mistral.env,
        capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['std.echo', 'std.email']"


def test_second_harness_is_isolated_and_stops_clean(mistral, tmp_path):
    databases_before = set(_databases(mistral))
    other = mistral_harness.MistralHarness(
        mistral.venv, tmp_path, install_project=False)
    other.start()
    try:
        assert other.db_name != mistral.db_name
        assert other.api_port != mistral.api_port
        assert other.db_name in _databases(mistral)
        before = _actions_run(other)
        execution = mistral.run_workflow(
            ECHO_WORKFLOW, 'echo_twice', {'words': ['x']}, cleanup=True)
        assert execution['state'] == 'SUCCESS'
        # The other executor saw none of it.
        assert _actions_run(other) == before
        family = _family(other)
        assert len(family) == 6
    finally:
        other.stop()
    assert not [pid for pid in family if mistral_harness._is_alive(pid)]
    assert other.db_name == ''
    assert set(_databases(mistral)) == databases_before
    assert not (tmp_path / mistral_harness.STATE_FILE).exists()
    # The first one still works.
    assert mistral.status()['api'] == 'HTTP 200'
