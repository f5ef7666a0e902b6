"""The daemon as a process: real inotify, no broker (embedded mode)."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from hotload import exceptions
from hotload import store
from tests.polling import DEADLINE
from tests.polling import process_alive
from tests.polling import wait_for
from tests.unit.conftest import GREET


class DaemonProcess:
    """mistral-hotload-daemon on a test tree, stopped by PID."""

    def __init__(self, tree, state_dir, log_path, **options):
        self.config = os.path.join(os.path.dirname(state_dir), 'd.conf')
        options = {'actions_dir': tree.root, 'state_dir': state_dir,
                   'action_prefix': 'hot', 'probe_timeout': 5, **options}
        with open(self.config, 'w') as stream:
            stream.write('[hotload]\n' + ''.join(
                f'{name} = {value}\n' for name, value in options.items()))
        self.states = store.ManifestStore(state_dir)
        self.log_path = log_path
        self.process = None
        #: Extra environment for the daemon (PYTHONPATH, NOTIFY_SOCKET...).
        self.environ: dict[str, str] = {}

    def start(self):
        self.log = open(self.log_path, 'ab')
        self.process = subprocess.Popen(
            [sys.executable, '-c',
             'from hotload.cmd.daemon import main; main()',
             '--config-file', self.config],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **self.environ})
        return self

    def worker_pid(self):
        status = self.states.load_status()
        return status.get('pid') if status else None

    def stop(self, sig=signal.SIGTERM):
        pids = [self.process.pid, self.worker_pid()]
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=DEADLINE)
        for pid in filter(None, pids):
            wait_for(lambda pid=pid: not process_alive(pid),
                     f'process {pid} to exit')
        self.log.close()

    def kill_everything(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=DEADLINE)

    def current(self):
        try:
            return self.states.load()
        except exceptions.ManifestError:
            return None

    def generation(self):
        current = self.current()
        return current.generation if current else 0

    def served(self):
        current = self.current()
        return {a.name for a, _ in current.actions()} if current else set()


@pytest.fixture
def daemon(tree, tmp_path):
    process = DaemonProcess(tree, str(tmp_path / 'state'),
                            str(tmp_path / 'daemon.log'))
    yield process
    process.kill_everything()


def test_dropped_file_is_published_and_bad_files_do_not_stop_it(tree,
                                                                 daemon):
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: 'hot.greet.greet' in daemon.served(), 'first scan')
    first = daemon.generation()

    tree.write('broken.py', 'def f(:\n')
    tree.write('other.py', GREET.replace('Greet(', 'Other('))
    wait_for(lambda: 'hot.other.other' in daemon.served(), 'other.py')
    current = daemon.states.load()
    assert current.generation > first
    assert current.modules['broken'].error.location() == 'broken.py:1'

    tree.remove('greet.py')
    wait_for(lambda: 'hot.greet.greet' not in daemon.served(), 'deletion')
    assert daemon.process.poll() is None
    daemon.stop()
    with open(daemon.log_path) as stream:
        log = stream.read()
    assert 'broken.py:1: syntax' in log


def test_editor_style_save_is_one_change(tree, daemon):
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'first generation')
    # Write a temporary file, then rename it over the module.
    tree.write('.greet.py.swp', 'garbage')
    tree.write('greet.py.tmp~', GREET.replace('hello', 'hi'))
    os.rename(tree.path('greet.py.tmp~'), tree.path('greet.py'))
    os.unlink(tree.path('.greet.py.swp'))
    wait_for(lambda: daemon.generation() == 2, 'the save')
    current = daemon.states.load()
    assert current.errors() == []
    assert b'hi' in daemon.states.blobs.get(
        current.modules['greet'].good.sha256)
    daemon.stop()


def test_burst_of_files_is_coalesced(tree, daemon, tmp_path):
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'first (empty) generation')
    source = tmp_path / 'many'
    for index in range(100):
        path = source / f'mod{index:03d}.py'
        path.parent.mkdir(exist_ok=True)
        path.write_text(GREET.replace('Greet(', f'Greet{index:03d}('))
    shutil.copytree(source, tree.path('many'))
    os.chmod(tree.path('many'), 0o755)
    wait_for(lambda: len(daemon.served()) == 100, 'all 100 actions',
             deadline=60)
    # A burst is a handful of scans, not one per file.
    assert daemon.generation() <= 10
    daemon.stop()


def test_sigkill_and_restart_lose_nothing(tree, daemon):
    tree.write('greet.py', GREET)
    tree.write('broken.py', 'x = (\n')
    daemon.start()
    wait_for(lambda: 'hot.greet.greet' in daemon.served(), 'first scan')
    before = daemon.states.load()
    worker = wait_for(daemon.worker_pid, 'the worker pid')
    daemon.stop(signal.SIGKILL)
    assert not process_alive(worker)
    daemon.start()
    wait_for(lambda: daemon.worker_pid() not in (None, worker),
             'the new worker')
    after = daemon.states.load()
    assert after.generation == before.generation
    assert after.modules == before.modules
    daemon.stop()


def test_systemd_ready_after_first_generation_then_watchdog(tree, daemon,
                                                            tmp_path):
    tree.write('greet.py', GREET)
    address = str(tmp_path / 'notify.sock')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(DEADLINE)
        daemon.environ = {'NOTIFY_SOCKET': address,
                          'WATCHDOG_USEC': '200000'}
        daemon.start()
        first = sock.recv(4096).decode().split('\n')
        # While the first scan runs, only extensions of the start timeout.
        while first[0].startswith('EXTEND_TIMEOUT_USEC='):
            first = sock.recv(4096).decode().split('\n')
        # READY=1 only once the first generation is on disk.
        generation_at_ready = daemon.generation()
        assert first[0] == 'READY=1'
        assert generation_at_ready == 1
        assert 'STATUS=generation 1: 1 actions, 0 file errors' in first
        keepalives = 0
        while keepalives < 3:
            if sock.recv(4096) == b'WATCHDOG=1':
                keepalives += 1
        tree.write('other.py', GREET.replace('Greet(', 'Other('))
        wait_for(lambda: sock.recv(4096).startswith(b'STATUS=generation 2'),
                 'a status update for generation 2')
        daemon.stop()
        messages = []
        while b'STOPPING=1' not in messages:
            messages.append(sock.recv(4096))


def test_reload_probes_again_what_no_file_change_announces(tree, daemon,
                                                           tmp_path):
    """A library installed after the fact: ``mistral-hotload reload``."""
    site = tmp_path / 'site'
    site.mkdir()
    daemon.environ = {'PYTHONPATH': str(site)}
    tree.write('needs.py', 'import late_library\n' + GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first scan')
    error = daemon.states.load().modules['needs'].error
    assert "No module named 'late_library'" in error.message
    (site / 'late_library.py').write_text('VALUE = 1\n')
    result = subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         daemon.config, 'reload'], capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: 'hot.needs.greet' in daemon.served(), 'the reload')
    assert daemon.states.load().errors() == []
    daemon.stop()


def refusal_to_start(config) -> str:
    """Run the daemon on ``config``; it must exit 1 at once. Its output."""
    result = subprocess.run(
        [sys.executable, '-c', 'from hotload.cmd.daemon import main; '
         'raise SystemExit(main())', '--config-file', str(config)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    # oslo.log writes to stdout unless use_stderr is set.
    return result.stdout + result.stderr


def test_missing_actions_dir_is_a_clear_error(tmp_path):
    config = tmp_path / 'd.conf'
    config.write_text(f'[hotload]\nactions_dir = {tmp_path / "nowhere"}\n'
                      f'state_dir = {tmp_path / "state"}\n')
    assert f'actions_dir {tmp_path / "nowhere"} is not a directory' in \
        refusal_to_start(config)


def test_untrusted_state_dir_is_refused_before_start(tree, tmp_path):
    state = tmp_path / 'state'
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    config = tmp_path / 'd.conf'
    config.write_text(f'[hotload]\nactions_dir = {tree.root}\n'
                      f'state_dir = {state}\n')
    assert f'state_dir {state} is not trusted' in refusal_to_start(config)


def test_unreadable_manifest_does_not_stop_it(tree, daemon):
    daemon.states.ensure()
    with open(daemon.states.current_path, 'w') as stream:
        stream.write('{"schema": 99}')
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: 'hot.greet.greet' in daemon.served(),
             'a fresh generation over the unreadable one')
    tree.write('other.py', GREET.replace('Greet(', 'Other('))
    wait_for(lambda: 'hot.other.other' in daemon.served(),
             'the scan loop to go on')
    daemon.stop()
