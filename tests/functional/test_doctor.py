"""``mistral-hotload doctor`` on a real, healthy node: every check is ok."""

import json
import subprocess
import sys

# Node A has a cluster_key: it publishes to the mirrors of nodes B and C.
CHECKS = ['provider', 'allow/deny lists', 'actions_dir', 'state_dir',
          'broker', 'daemon', 'mode', 'cluster_key', 'publisher']


def test_good_setup_is_all_ok(node):
    result = node.hotload('doctor', '--mistral-python',
                          str(node.harness.python), '-f', 'json')
    rows = {row['Check']: row for row in json.loads(result.stdout)}
    assert {c: r['Result'] for c, r in rows.items()} == dict.fromkeys(
        CHECKS, 'ok'), result.stdout
    assert result.returncode == 0, result.stderr
    assert 'Mistral 23.' in rows['provider']['Detail']
    assert rows['broker']['Detail'].startswith('rabbit at 127.0.0.1:5672 ')
    worker = node.daemon.states.load_status()['pid']
    assert rows['daemon']['Detail'].startswith(f'running (pid {worker} on ')
    # The transport URL's credentials never reach the output.
    assert 'guest' not in result.stdout + result.stderr


def test_mirror_node_is_all_ok(cluster):
    result = subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         str(cluster.b.config_file), 'doctor', '--mistral-python',
         str(cluster.a.python), '-f', 'json'],
        capture_output=True, text=True, timeout=120)
    rows = {row['Check']: row for row in json.loads(result.stdout)}
    assert {c: r['Result'] for c, r in rows.items()} == dict.fromkeys(
        CHECKS, 'ok'), result.stdout
    assert result.returncode == 0, result.stderr
    assert 'mirror' in rows['mode']['Detail']
    assert cluster.a.host in rows['publisher']['Detail']
    assert 'functional-cluster-key' not in result.stdout
