"""``mistral-hotload-daemon``: watch, validate, publish, signal.

The daemon owns the state directory (one writer, under a lock). At start it
scans the whole actions directory; afterwards every burst of file system
changes triggers an incremental scan. A scan that changes the table is
published as the next generation and announced over oslo.messaging when a
transport is configured. Without one the daemon runs embedded: providers
on the node notice new generations by themselves.

A bad file, a refused directory or a broker outage is logged and reported
in the status file; the daemon keeps running and serving the last good
table.
"""

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time

from oslo_config import cfg
from oslo_log import log as logging
from oslo_service.backend import base as service_base

from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import notify
from hotload import probe as probe_mod
from hotload import scanner as scanner_mod
from hotload import signals
from hotload import store
from hotload import trust
from hotload import watcher

LOG = logging.getLogger(__name__)
LOCK_TIMEOUT = 30.0
#: Seconds between checks of the actions directory when nothing happens.
LOOP_INTERVAL = 5.0
#: Backoff after a failed scan, seconds.
RETRY_MIN = 1.0
RETRY_MAX = 60.0


def _now() -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


class Daemon:
    """The daemon's work, independent of how it is launched.

    :param conf: Configuration with ``[hotload]`` registered and, for
        signals, the messaging transport.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        options = conf.hotload
        self.root = os.path.realpath(options.actions_dir)
        self.states = store.ManifestStore(options.state_dir)
        # What start() took (lock, probe, publisher, watcher), given back
        # in reverse by stop().
        self._resources = contextlib.ExitStack()
        self._probe = None
        self._watcher = None
        self._publisher = None
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._scan_lock = threading.Lock()
        self._worker = None
        self._status = {}
        self._rescan_seen = 0.0
        self._notifier = notify.Notifier(healthy=self.healthy)
        self._alive_at = time.monotonic()
        # The loop wakes every LOOP_INTERVAL; a scan may add a probe
        # timeout per module being probed at once.
        self._alive_limit = (2 * LOOP_INTERVAL + options.probe_timeout
                             * max(1, options.probe_workers))
        self._root_inode = None

    def start(self) -> None:
        """Take the state directory, publish a first full scan, watch."""
        options = self.conf.hotload
        self._resources.enter_context(
            self.states.writer_lock(timeout=LOCK_TIMEOUT))
        self._probe = self._resources.enter_context(probe_mod.Probe(
            self.root, options.package_name, self.states.blobs.root,
            options.probe_timeout, options.probe_memory_limit))
        if signals.transport_configured(self.conf):
            self._publisher = signals.Publisher(self.conf)
            self._resources.callback(self._publisher.close)
        else:
            LOG.info('No transport_url configured: running embedded; '
                     'providers on this node notice new generations '
                     'themselves')
        self._status = {'pid': os.getpid(), 'host': socket.gethostname(),
                        'started_at': _now(), 'actions_dir': self.root}
        # Watch before the first scan, so nothing that changes during it
        # is missed.
        self._watcher = watcher.TreeWatcher(
            self.root, self._on_changes, options.debounce_interval,
            control_dir=self.states.control_dir)
        self._watcher.start()
        self._resources.callback(self._watcher.stop)
        self._root_inode = os.stat(self.root).st_ino
        self._rescan_seen = self.states.rescan_requested()
        current = self.rescan()
        self._notifier.ready(self._summary(current))
        self._worker = threading.Thread(target=self._work,
                                        name='hotload-scanner', daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop watching; a scan in progress finishes its generation."""
        self._notifier.stopping()
        self._stopping.set()
        self._changed.set()
        if self._worker:
            self._worker.join()
        with self._scan_lock:
            self._resources.close()

    def _on_changes(self, changes) -> None:
        LOG.debug('%d file system events', len(changes))
        self._changed.set()

    def _work(self) -> None:
        retry = RETRY_MIN
        while True:
            self._alive_at = time.monotonic()
            if not self._changed.wait(LOOP_INTERVAL):
                self._check_root()
                continue
            if self._stopping.is_set():
                return
            self._changed.clear()
            requested = self.states.rescan_requested()
            full = requested != self._rescan_seen
            self._rescan_seen = requested
            try:
                current = self.rescan(probe_all=full)
            except Exception as exc:
                # Nothing may end this loop but stop(): a full disk or a
                # file vanishing mid-walk is retried, and said, not fatal.
                LOG.exception('Scan failed; still serving the last '
                              'generation, retrying in %.0f s', retry)
                self._write_status(error=f'scan failed: {exc}')
                self._changed.set()
                self._stopping.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
                continue
            retry = RETRY_MIN
            self._notifier.status(self._summary(current))

    def _check_root(self) -> None:
        """Restart the worker if the actions directory was replaced.

        An inotify watch follows the directory's inode: after
        ``rm -rf actions.d; mkdir actions.d`` or a rename over it, no event
        would ever come again. oslo.service starts a new worker, which
        watches the new directory.
        """
        try:
            inode = os.stat(self.root).st_ino
        except OSError:
            inode = None
        if inode != self._root_inode:
            LOG.error('actions_dir %s was removed or replaced; restarting '
                      'to watch it again', self.root)
            os.kill(os.getpid(), signal.SIGTERM)

    def healthy(self) -> bool:
        """True while the scan loop is turning (for the watchdog)."""
        return time.monotonic() - self._alive_at < self._alive_limit

    def _summary(self, current: manifest_mod.Manifest | None) -> str:
        if current is None:
            return 'actions directory refused; see the log'
        return (f'generation {current.generation}: '
                f'{len(current.actions())} actions, '
                f'{len(current.errors())} file errors')

    def rescan(self, probe_all: bool = False
               ) -> manifest_mod.Manifest | None:
        """Scan, publish a new generation if the table changed, signal.

        :param probe_all: Probe every module, not only changed ones.
        """
        if probe_all:
            LOG.info('Full rescan requested')
        with self._scan_lock:
            options = self.conf.hotload
            try:
                previous = self.states.load()
            except exceptions.ManifestError as exc:
                LOG.error('Current manifest unreadable, starting over from '
                          'an empty table: %s', exc)
                previous = None
            previous = previous or manifest_mod.Manifest.empty(
                options.package_name, options.action_prefix)
            policy = trust.TrustPolicy(options.trusted_owners,
                                       options.max_file_size)
            for owner in policy.unknown_owners:
                LOG.warning('trusted_owners: no such user %r', owner)
            scanner = scanner_mod.Scanner(
                self.root, self.states.blobs, self._probe, policy,
                options.package_name, options.action_prefix,
                options.reserved_prefixes, options.probe_workers)
            try:
                result = scanner.scan(previous, probe_all=probe_all)
            except exceptions.UntrustedRootError as exc:
                LOG.error('%s; still serving generation %d', exc,
                          previous.generation)
                self._write_status(previous, error=str(exc))
                return None
            current = self.states.commit(
                previous, result.modules, options.package_name,
                options.action_prefix, options.keep_generations)
            self._report(previous, current, result)
            self._write_status(current, probed=len(result.probed),
                               seconds=result.duration)
        if current is not previous and self._publisher:
            self._publisher.generation_published(current.generation)
        return current

    @staticmethod
    def _report(previous, current, result) -> None:
        for module, error in current.errors():
            old = previous.modules.get(module.name)
            if old is None or old.error != error:
                LOG.error('%s: %s: %s%s', error.location(), error.kind,
                          error.message,
                          '; serving its last good version'
                          if module.good else '')
        if current is previous:
            LOG.debug('Scan found nothing new (%d probed)',
                      len(result.probed))
            return
        LOG.info('Published generation %d: %d modules, %d actions, '
                 '%d errors (%d probed in %.3f s)', current.generation,
                 len(current.modules), len(current.actions()),
                 len(current.errors()), len(result.probed), result.duration)

    def _write_status(self, current=None, error=None, probed=0,
                      seconds=0.0):
        """Record the last scan (or its failure) for ``status``."""
        if current is not None:
            self._status['generation'] = current.generation
        self._status.update({
            'last_scan_at': _now(),
            'last_scan_probed': probed,
            'last_scan_seconds': round(seconds, 3),
            'error': error,
        })
        try:
            store.atomic_write(self.states.status_path,
                               json.dumps(self._status, indent=1).encode())
        except OSError as exc:
            LOG.error('Cannot write %s: %s', self.states.status_path, exc)


class DaemonService(service_base.ServiceBase):
    """oslo.service lifecycle around :class:`Daemon`.

    SIGTERM stops it after the generation being written is finished;
    SIGHUP re-reads the configuration files and restarts the worker, which
    rescans with the new options.

    :param conf: The daemon's configuration.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__()
        self.conf = conf
        self.daemon: Daemon | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        self.daemon = Daemon(self.conf)
        self.daemon.start()

    def stop(self, graceful: bool = False) -> None:
        if self.daemon:
            self.daemon.stop()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def reset(self) -> None:
        # Part of oslo.service's interface; on its threading backend SIGHUP
        # restarts the worker instead of calling this.
        if self.daemon:
            self.daemon.rescan()


def startup_problem(conf: cfg.ConfigOpts) -> str | None:
    """Why the daemon cannot start with ``conf``, or None.

    Checked before launching, in the master: a worker that failed on these
    would be restarted forever.
    """
    options = conf.hotload
    if not os.path.isdir(options.actions_dir):
        return (f'actions_dir {options.actions_dir} is not a directory; '
                f'create it (owned by root or the service user, mode 0755) '
                f'or set [hotload] actions_dir')
    # Providers run whatever the state directory's manifest names: it must
    # be as trusted as the actions directory.
    policy = trust.TrustPolicy(options.trusted_owners,
                               options.max_file_size)
    state_dir = options.state_dir
    problem = policy.check_ancestors(state_dir)
    if not problem and os.path.exists(state_dir):
        problem = policy.check_dir(state_dir, os.stat(state_dir))
    if problem:
        return f'state_dir {state_dir} is not trusted: {problem}'
    return None


def load_config(argv: list[str]) -> cfg.ConfigOpts:
    """The daemon's configuration from its command line.

    ``--config-file`` may be given several times, typically Mistral's
    ``mistral.conf`` (for ``transport_url``, and ``[hotload]`` so that the
    daemon and the providers agree) and the daemon's own file. The global
    ``cfg.CONF`` is used, as oslo.messaging expects of a service.
    """
    conf = cfg.CONF
    hotload_conf.register_opts(conf)
    signals.register_transport_opts(conf)
    logging.register_options(conf)
    conf(argv, project='mistral-hotload',
         default_config_files=[f for f in hotload_conf.DEFAULT_CONFIG_FILES
                               if os.path.exists(f)])
    return conf


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; see :mod:`hotload.cmd.daemon` for the backend."""
    from oslo_service import service

    conf = load_config(sys.argv[1:] if argv is None else argv)
    logging.setup(conf, 'mistral-hotload')
    problem = startup_problem(conf)
    if problem:
        LOG.error('%s', problem)
        return 1
    notify.claim_environment()
    # 'reload' re-reads every option on SIGHUP ('mutate' would skip the
    # immutable ones); cotyledon then restarts the worker, which rescans.
    launcher = service.launch(conf, DaemonService(conf),
                              restart_method='reload')
    return launcher.wait() or 0
