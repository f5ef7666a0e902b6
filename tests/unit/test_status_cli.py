"""``mistral-hotload status`` without a working broker, run as monitoring
runs it: it must answer within its timeout, with an exit status that says
whether convergence was confirmed.

A node with a real broker and Mistral is in tests/functional.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from hotload import manifest
from hotload import store

PACKAGE = 'hotload_actions'
# monitoring's own timeout would fire long before this; the command must
# answer within its --timeout and a few seconds of start-up.
WALL_TIMEOUT = 30
UNASKED = 'Mistral processes could not be asked'


def _record(name: str, error: bool = False) -> manifest.ModuleRecord:
    source = f'# {name}\n'
    sha = store.sha256_hex(source.encode())
    action = manifest.ActionSpec(f'hot.{name}.greet', 'Greet', None, 'who',
                                 'Greet someone.', 3)
    good = manifest.ModuleVersion(
        sha, {}, manifest.content_key(name, sha, {}), (action,))
    failure = manifest.ModuleError(
        'syntax', "SyntaxError: '(' was never closed", f'{name}.py', 2) \
        if error else None
    return manifest.ModuleRecord(name, f'{name}.py', good, failure)


def publish(state_dir: str, *, file_error: bool = False) -> None:
    """Publish a generation, as the daemon would, into ``state_dir``."""
    states = store.ManifestStore(state_dir)
    states.ensure()
    modules = {'greet': _record('greet')}
    if file_error:
        modules['broken'] = _record('broken', error=True)
    states.commit(manifest.Manifest.empty(PACKAGE, 'hot'), modules,
                  PACKAGE, 'hot', keep=3)


@contextlib.contextmanager
def daemon_running(state_dir: str):
    """Hold the state directory's lock, as a running daemon does."""
    with store.ManifestStore(state_dir).writer_lock():
        yield


@contextlib.contextmanager
def silent_broker():
    """A port that accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def write_conf(tmp_path, transport_url: str | None) -> str:
    path = tmp_path / 'mistral.conf'
    default = (f'[DEFAULT]\ntransport_url = {transport_url}\n'
               if transport_url else '')
    path.write_text(default + textwrap.dedent(f'''\
        [hotload]
        actions_dir = {tmp_path / 'actions'}
        state_dir = {tmp_path / 'state'}
    '''))
    return str(path)


def hotload(config: str, *args: str) -> tuple[subprocess.CompletedProcess,
                                               float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file', config,
         *args],
        capture_output=True, text=True, timeout=WALL_TIMEOUT)
    return result, time.monotonic() - started


def status(config: str, *args: str):
    result, elapsed = hotload(config, 'status', '-f', 'json', *args)
    assert result.stdout, result.stderr
    return result, json.loads(result.stdout), elapsed


@pytest.fixture
def state_dir(tmp_path) -> str:
    return str(tmp_path / 'state')


def test_broker_down_is_exit_2_within_the_timeout(tmp_path, state_dir):
    publish(state_dir)
    config = write_conf(tmp_path, 'rabbit://guest:guest@127.0.0.1:1/')
    with daemon_running(state_dir):
        result, found, _ = status(config)
    assert result.returncode == 2, result.stderr
    assert found['daemon'].startswith('running')
    assert found['generation'] == 1
    assert found['errors'] == [
        f'broker 127.0.0.1:1 unreachable (Connection refused): {UNASKED}']
    assert found['processes'] == []
    # The URL's user and password are both "guest".
    assert 'guest' not in result.stdout + result.stderr


def test_broker_that_never_speaks_amqp_is_exit_2_at_the_deadline(
        tmp_path, state_dir):
    publish(state_dir)
    with silent_broker() as port:
        config = write_conf(tmp_path,
                            f'rabbit://guest:guest@127.0.0.1:{port}/')
        with daemon_running(state_dir):
            result, found, elapsed = status(config, '--timeout', '1')
    assert result.returncode == 2, result.stderr
    (error,) = found['errors']
    # Within what is left of the second once the TCP check is done.
    assert re.fullmatch(r'the messaging transport did not connect to the '
                        rf'broker within [01]\.\d s: {UNASKED}', error)
    assert found['processes'] == []
    assert 'guest' not in result.stdout + result.stderr
    # The abandoned thread does not hold the process: start-up, the
    # timeout and nothing like the minutes oslo.messaging would retry.
    assert elapsed < 15


def test_action_show_with_the_broker_down_says_who_could_not_be_asked(
        tmp_path, state_dir):
    publish(state_dir)
    config = write_conf(tmp_path, 'rabbit://guest:guest@127.0.0.1:1/')
    result, _ = hotload(config, 'action', 'show', 'hot.greet.greet',
                        '-f', 'json')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['loaded_by'] == []
    assert (f'broker 127.0.0.1:1 unreachable (Connection refused): '
            f'{UNASKED} whether they loaded it') in result.stderr
    assert 'guest' not in result.stdout + result.stderr


@pytest.mark.parametrize('running, file_error, expected', [
    (True, False, 0),
    (True, True, 1),
    (False, False, 2),
])
def test_without_transport_the_daemon_and_files_decide(
        tmp_path, state_dir, running, file_error, expected):
    publish(state_dir, file_error=file_error)
    config = write_conf(tmp_path, None)
    with daemon_running(state_dir) if running else contextlib.nullcontext():
        result, found, _ = status(config)
    assert result.returncode == expected, result.stdout + result.stderr
    assert 'Mistral processes cannot be asked' in result.stderr
    assert found['processes'] == []
    assert not any(UNASKED in e for e in found['errors'])


# status --cluster: from any node's configuration (a mirror's: no
# actions_dir, no state_dir of its own needed), never hanging.

def write_mirror_conf(tmp_path, transport_url: str | None) -> str:
    path = tmp_path / 'mirror.conf'
    default = (f'[DEFAULT]\ntransport_url = {transport_url}\n'
               if transport_url else '')
    path.write_text(default + textwrap.dedent(f'''\
        [hotload]
        mode = mirror
        cluster_key = {CLUSTER_KEY}
        state_dir = {tmp_path / 'no-state'}
    '''))
    return str(path)


CLUSTER_KEY = 'a-cluster-key-for-the-status-tests-0123456789'


def cluster_status(config: str, *args: str):
    result, elapsed = hotload(config, 'status', '--cluster', '-f', 'json',
                              *args)
    assert result.stdout, result.stderr
    output = result.stdout + result.stderr
    assert CLUSTER_KEY not in output and 'guest' not in output
    return result, json.loads(result.stdout), elapsed


def test_cluster_status_with_the_broker_down_is_exit_2(tmp_path):
    config = write_mirror_conf(tmp_path, 'rabbit://guest:guest@127.0.0.1:1/')
    result, found, _ = cluster_status(config)
    assert result.returncode == 2, result.stderr
    why = 'broker 127.0.0.1:1 unreachable (Connection refused)'
    assert found['publisher'] == f'unreachable: {why}'
    assert found['errors'] == [f'the publisher is unreachable: {why}']
    assert found['nodes'] == []
    assert found['grace'] == 60.0
    assert not os.path.exists(tmp_path / 'no-state')


def test_cluster_status_with_a_silent_broker_answers_at_the_deadline(
        tmp_path):
    with silent_broker() as port:
        config = write_mirror_conf(
            tmp_path, f'rabbit://guest:guest@127.0.0.1:{port}/')
        result, found, elapsed = cluster_status(config, '--timeout', '1',
                                                '--grace', '5')
    assert result.returncode == 2, result.stderr
    assert found['publisher'].startswith('unreachable: ')
    assert found['grace'] == 5.0
    assert any('could not be asked' in e for e in found['errors'])
    assert elapsed < 15


def test_cluster_status_without_transport_is_exit_2(tmp_path):
    result, found, _ = cluster_status(write_mirror_conf(tmp_path, None))
    assert result.returncode == 2
    assert found['publisher'].startswith(
        'unreachable: no transport_url is configured')
