"""The daemon as a process under faults: lost events, a deep tree, a state
directory removed under it, a full disk, a bad control file, slow scans
under systemd's watchdog, and signals during a burst.

Real inotify, no broker (embedded mode); each daemon is stopped by PID.
"""

import contextlib
import errno
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from oslo_config import cfg

from hotload import conf as hotload_conf
from hotload import daemon as daemon_mod
from hotload import exceptions
from hotload import manifest
from hotload import signals
from hotload import store
from tests.polling import process_alive
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.test_daemon import DaemonProcess
from tests.unit.test_store import _modules


def _other(name: str) -> str:
    return GREET.replace('Greet(', f'{name.capitalize()}(')


def _log(daemon: DaemonProcess) -> str:
    with open(daemon.log_path, errors='replace') as stream:
        return stream.read()


@pytest.fixture
def make_daemon(tree, tmp_path):
    """Build daemons on the test tree with extra ``[hotload]`` options."""
    started = []

    def make(**options):
        process = DaemonProcess(tree, str(tmp_path / 'state'),
                                str(tmp_path / 'daemon.log'), **options)
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill_everything()


def test_lost_events_cause_a_full_rescan(tree, make_daemon):
    """An inotify queue overflow: the change whose event was dropped is
    published at once, not at the next periodic rescan."""
    daemon = make_daemon(rescan_interval=3600)
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first generation')
    worker = wait_for(daemon.worker_pid, 'the worker pid')
    os.kill(worker, signal.SIGSTOP)
    try:
        # More events than the kernel queues (fs.inotify.max_queued_events,
        # 16384 by default) while the worker cannot read them: distinct
        # names, so the kernel cannot merge them.
        limit = int(open('/proc/sys/fs/inotify/max_queued_events').read())
        for index in range(limit):
            path = tree.path(f'.noise{index}')
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(path)
        tree.write('lost.py', _other('lost'))
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for(lambda: 'hot.lost.lost' in daemon.served(),
             'the module whose events were lost', deadline=20)
    assert 'File system events were lost' in _log(daemon)
    daemon.stop()


def test_periodic_rescan_notices_what_no_event_announces(tree, tmp_path,
                                                         make_daemon):
    """The directory above actions_dir made writable by everyone: no event
    reaches the watcher, the safety rescan refuses the tree anyway."""
    daemon = make_daemon(rescan_interval=1)
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first generation')
    os.chmod(tmp_path, 0o777)
    try:
        error = wait_for(lambda: daemon.states.load_status().get('error'),
                         'the refusal of the tree in the status file')
        assert f'parent directory {tmp_path} is writable by everyone' \
            in error
    finally:
        os.chmod(tmp_path, 0o755)
    wait_for(lambda: not daemon.states.load_status().get('error'),
             'the tree trusted again')
    assert 'hot.greet.greet' in daemon.served()
    daemon.stop()


def _nested(base: str, depth: int) -> None:
    """Make ``depth`` directories, each in the previous, under ``base``.

    Through directory descriptors: os.makedirs recurses per level.
    """
    os.mkdir(base)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _level in range(depth):
            os.mkdir('d', 0o755, dir_fd=fd)
            inner = os.open('d', os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _remove_nested(base: str) -> None:
    """Remove what :func:`_nested` made (shutil.rmtree recurses too)."""
    subprocess.run(['rm', '-rf', '--', base], check=True)


def test_a_very_deep_tree_does_not_make_the_daemon_deaf(tree, tmp_path,
                                                        make_daemon):
    daemon = make_daemon()
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first generation')
    worker = wait_for(daemon.worker_pid, 'the worker pid')
    # Built outside, moved in: watchdog adds watches to the whole tree at
    # once (os.walk, recursive in Python 3.11).
    _nested(str(tmp_path / 'deep'), 1100)
    try:
        os.rename(tmp_path / 'deep', tree.path('deep'))
        tree.write('after.py', _other('after'))
        wait_for(lambda: 'hot.after.after' in daemon.served(),
                 'a file dropped after the deep tree')
        refused = [e for _m, e in daemon.states.load().errors()
                   if e.kind == 'refused']
        assert any('max_depth' in e.message for e in refused), refused
        assert daemon.worker_pid() == worker
        assert 'died' not in _log(daemon)
        daemon.stop()
    finally:
        _remove_nested(tree.path('deep'))


def test_removed_state_directory_is_rebuilt_above_its_generation(
        tree, make_daemon):
    daemon = make_daemon()
    tree.write('greet.py', GREET)
    daemon.start()
    for name in ('one', 'two'):
        tree.write(f'{name}.py', _other(name))
        wait_for(lambda name=name: f'hot.{name}.{name}' in daemon.served(),
                 f'{name}.py')
    before = daemon.states.load()
    assert before.generation >= 2
    # The status file is the scan's last write: removing the directory
    # while it is written would race with it ("Directory not empty").
    wait_for(lambda: daemon.states.load_status().get('generation')
             == before.generation, 'the scan to finish')

    shutil.rmtree(daemon.states.state_dir)
    after = wait_for(lambda: (daemon.current() or None) if (
        daemon.generation() > before.generation) else None,
        'the state directory rebuilt')
    assert {a.name for a, _ in after.actions()} == \
        {a.name for a, _ in before.actions()}
    for _action, module in after.actions():
        assert daemon.states.blobs.get(module.good.sha256)
    # Still the only writer: a second daemon could not take the lock.
    assert daemon.states.writer_running()
    with pytest.raises(exceptions.StateLockedError):
        store.WriterLock(os.path.join(daemon.states.state_dir,
                                      store.LOCK)).acquire()

    # manifest.json alone: put back at once, under a new number.
    os.unlink(daemon.states.current_path)
    again = wait_for(lambda: daemon.current(), 'manifest.json restored')
    assert again.generation > after.generation
    assert again.modules == after.modules
    daemon.stop()


def _mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path)
    result = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size},mode=0755', 'tmpfs',
         path], capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f'mounting a tmpfs needs root: {result.stderr.strip()}')


def _fill(directory: str) -> str:
    """Fill the file system of ``directory``; the filler file."""
    path = os.path.join(directory, 'filler')
    with open(path, 'wb') as stream:
        try:
            while True:
                stream.write(b'\0' * 65536)
                stream.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        os.truncate(path, os.path.getsize(path))
    return path


def _status(daemon: DaemonProcess) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         daemon.config, 'status', '--no-processes', '-f', 'json'],
        capture_output=True, text=True, timeout=60)


def test_full_disk_is_reported_by_status_and_recovers(tree, tmp_path):
    state = str(tmp_path / 'state')
    _mount_tmpfs(state, '2m')
    daemon = DaemonProcess(tree, state, str(tmp_path / 'daemon.log'))
    try:
        tree.write('greet.py', GREET)
        daemon.start()
        wait_for(lambda: daemon.generation() == 1, 'the first generation')
        filler = _fill(state)
        tree.write('new.py', _other('new') + '\n# ' + 'x' * 8192 + '\n')
        wait_for(lambda: 'No space left' in (
            daemon.states.load_status().get('error') or ''),
            'the failed scan in the status file')
        result = _status(daemon)
        assert result.returncode == 2, result.stdout
        assert 'is full' in result.stdout
        assert 'No space left on device' in result.stdout
        assert daemon.served() == {'hot.greet.greet'}

        os.unlink(filler)
        wait_for(lambda: 'hot.new.new' in daemon.served(),
                 'the publish once there is room')
        assert _status(daemon).returncode == 0
        daemon.stop()
    finally:
        daemon.kill_everything()
        subprocess.run(['umount', '-l', state], check=False)


def test_prune_comes_before_publish(tmp_path):
    """Room for the new generation is made before it is written."""
    states = store.ManifestStore(str(tmp_path / 'state'))
    current = manifest.Manifest.empty('pkg', 'hot')
    for index in range(3):
        current = states.commit(current, _modules(f'v{index}'), 'pkg',
                                'hot', keep=2)
    seen = []
    publish = states.publish

    def counting_publish(candidate, **kwargs):
        seen.append(len(states.generation_numbers()))
        publish(candidate, **kwargs)

    states.publish = counting_publish
    states.commit(current, _modules('v9'), 'pkg', 'hot', keep=2)
    assert seen == [1]
    assert len(states.generation_numbers()) == 2


def test_malformed_control_file_is_refused_and_publishing_goes_on(
        tree, make_daemon):
    daemon = make_daemon()
    tree.write('greet.py', GREET)
    tree.write('hidden.py', _other('hidden'))
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first generation')
    daemon.states.set_disabled({'hot.hidden.hidden'})
    wait_for(lambda: 'hot.hidden.hidden' not in daemon.served(),
             'the disabled action')
    with open(daemon.states.disabled_path, 'w') as stream:
        stream.write('{"not": "a list"')
    tree.write('other.py', _other('other'))
    wait_for(lambda: 'hot.other.other' in daemon.served(),
             'a publish despite the bad control file')
    # What the operator disabled stays disabled.
    assert 'hot.hidden.hidden' not in daemon.served()
    warnings = wait_for(lambda: daemon.states.load_status().get('warnings'),
                        'the refusal in the status file')
    assert 'not a JSON list of action names' in warnings[0]
    result = _status(daemon)
    assert result.returncode == 1
    assert 'disabled.json' in result.stdout
    daemon.stop()


class NotifySocket:
    """A systemd notification socket recording what arrives, and when.

    :param path: Where to bind it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[tuple[float, list[str]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = self.sock.recv(4096)
                if not data:
                    return
                self.messages.append((time.monotonic(),
                                      data.decode().split('\n')))

    def fields(self) -> list[list[str]]:
        return [fields for _at, fields in list(self.messages)]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _slow_module(index: int, seconds: float) -> str:
    return (f'import time\ntime.sleep({seconds})\n'
            + GREET.replace('Greet(', f'Slow{index:03d}('))


def test_watchdog_is_fed_while_a_long_scan_progresses(tree, tmp_path,
                                                      make_daemon):
    """Liveness is progress: a scan longer than any fixed limit keeps the
    watchdog fed, and a first scan extends systemd's start timeout."""
    daemon = make_daemon(probe_timeout=1, probe_workers=1)
    for index in range(3):
        tree.write(f'first{index}.py', _slow_module(index, 0.3))
    notify = NotifySocket(str(tmp_path / 'n.sock'))
    try:
        daemon.environ = {'NOTIFY_SOCKET': notify.path,
                          'WATCHDOG_USEC': '1000000'}
        daemon.start()
        wait_for(lambda: ['READY=1'] in [f[:1] for f in notify.fields()],
                 'READY=1')
        before_ready = list(itertools.takewhile(
            lambda f: f[0] != 'READY=1', notify.fields()))
        # Not the start timeout: a first scan as long as the tree needs.
        assert before_ready and all(
            f[0].startswith('EXTEND_TIMEOUT_USEC=') for f in before_ready)
        assert before_ready[0][1].startswith('STATUS=scanning')

        # 45 probes of 0.4 s, one at a time: longer than a loop interval
        # plus a probe timeout, the most a healthy daemon stays silent.
        burst = tmp_path / 'burst'
        burst.mkdir()
        for index in range(45):
            (burst / f'slow{index:03d}.py').write_text(
                _slow_module(index, 0.4))
        os.chmod(burst, 0o755)
        started = time.monotonic()
        shutil.copytree(burst, tree.path('burst'))
        wait_for(lambda: len(daemon.served()) == 48,
                 'the burst published', deadline=60)
        published = time.monotonic()
        assert published - started > 15
        feeds = [t for t, f in notify.messages
                 if t >= started and f == ['WATCHDOG=1']]
        gaps = [b - a for a, b in
                itertools.pairwise([started, *feeds, published])]
        assert max(gaps) < 4, gaps
        assert 'no progress' not in _log(daemon)
        daemon.stop()
    finally:
        notify.close()


def _probe_pids(pid_dir) -> list[int]:
    return [int(p.read_text()) for p in pid_dir.iterdir()
            if p.read_text().strip()]


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_a_burst_stops_in_seconds_leaving_nothing(
        tree, tmp_path, make_daemon, sig):
    daemon = make_daemon(probe_timeout=30, probe_workers=2)
    scratch = tmp_path / 't'
    scratch.mkdir()
    daemon.environ = {'TMPDIR': str(scratch)}
    tree.write('greet.py', GREET)
    daemon.start()
    wait_for(lambda: daemon.generation() == 1, 'the first generation')
    worker = wait_for(daemon.worker_pid, 'the worker pid')
    pid_dir = tmp_path / 'pids'
    pid_dir.mkdir()
    burst = tmp_path / 'burst'
    burst.mkdir()
    for index in range(20):
        (burst / f'slow{index:02d}.py').write_text(
            f'import os, time\n'
            f'open({str(pid_dir / str(index))!r}, "w").write('
            f'str(os.getpid()))\n'
            f'time.sleep(20)\n' + GREET)
    os.chmod(burst, 0o755)
    shutil.copytree(burst, tree.path('burst'))
    wait_for(lambda: len(_probe_pids(pid_dir)) >= 2, 'probes importing')
    probes = _probe_pids(pid_dir)

    old_dirs = [p for p in scratch.iterdir()
                if p.name.startswith('hotload-probe-')]
    assert old_dirs

    # As systemd does (KillMode=mixed): the signal to the master only.
    started = time.monotonic()
    os.kill(daemon.process.pid, sig)
    if sig == signal.SIGTERM:
        daemon.process.wait(timeout=10)
    # SIGHUP: the master starts a new worker, which scans everything again.
    wait_for(lambda: not process_alive(worker), 'the old worker to exit',
             deadline=10)
    assert time.monotonic() - started < 10
    for pid in probes:
        wait_for(lambda pid=pid: not process_alive(pid),
                 f'probe process {pid} to be gone', deadline=5)
    assert not [p for p in old_dirs if p.exists()]
    # Nothing half-done was published.
    assert daemon.generation() == 1
    if sig == signal.SIGHUP:
        # The new worker is in its first scan, which stops as fast.
        daemon.stop()


@pytest.fixture
def daemon_in_process(tree, tmp_path):
    """A Daemon in this process, whose restarts are recorded, not done."""
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    signals.register_transport_opts(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('actions_dir', tree.root, group='hotload')
    conf.set_override('state_dir', str(tmp_path / 'state'), group='hotload')
    restarts: list[str] = []
    daemon = daemon_mod.Daemon(conf, restart=restarts.append)
    daemon.restarts = restarts
    daemon.start()
    yield daemon
    daemon.stop()


def test_a_dead_watcher_thread_restarts_the_worker(daemon_in_process):
    emitters = daemon_in_process._watcher._observer.emitters
    for emitter in list(emitters):
        emitter.stop()
        emitter.join()
    daemon_in_process._changed.set()
    reason = wait_for(lambda: daemon_in_process.restarts,
                      'a restart of the worker')[0]
    assert 'file watcher thread' in reason and 'has died' in reason


def test_any_thread_dying_is_logged_and_restarts_the_worker(
        daemon_in_process):
    def fail():
        raise RecursionError('maximum recursion depth exceeded')

    thread = threading.Thread(target=fail, name='watchdog-reader')
    thread.start()
    thread.join()
    reason = wait_for(lambda: daemon_in_process.restarts,
                      'a restart of the worker')[0]
    assert 'watchdog-reader: RecursionError' in reason


def test_continue_above_republishes_the_same_table_higher(
        tree, daemon_in_process):
    """A mirror serves generation 7 (the publisher moved): the table is
    published again as generation 8, unchanged; then as 9 when a mirror
    has this publisher's number with other bytes."""
    daemon = daemon_in_process
    states = daemon.states
    assert states.load().generation == 1
    first = states.load()
    daemon.continue_above(7)
    wait_for(lambda: states.load().generation == 8, 'generation 8')
    assert states.load().same_table(first)
    daemon.continue_above(8)
    wait_for(lambda: states.load().generation == 9, 'generation 9')
    # Below what is served: a scan, nothing published.
    daemon.continue_above(3)
    wait_for(lambda: daemon._lift_above == 0, 'the scan')
    assert states.generation_numbers()[-1] == 9
    tree.write('greet.py', GREET)
    wait_for(lambda: states.load().generation == 10, 'the next change')
