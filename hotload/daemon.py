"""``mistral-hotload-daemon``: watch, validate, publish, signal.

The daemon owns the state directory (one writer, under a lock). At start it
scans the whole actions directory; afterwards every burst of file system
changes triggers an incremental scan: only the paths the events name are
read again, and only the modules whose content (or imports) changed are
probed. A scan that changes the table is
published as the next generation and announced over oslo.messaging when a
transport is configured. Without one the daemon runs embedded: providers
on the node notice new generations by themselves.

A bad file, a refused directory or a broker outage is logged and reported
in the status file; the daemon keeps running and serving the last good
table. What can go wrong under it is checked at every turn of its loop:
events lost in an inotify queue overflow (a full rescan), a dead watcher
thread or a replaced actions directory (a new worker process), a state
directory removed under it (its lock taken again, the table republished
above every generation it published). Liveness, for systemd's watchdog,
is progress: a loop turn, a file hashed, a probe finished.

In a cluster (a ``cluster_key`` and a transport) it also serves mirrors
(:mod:`hotload.publication`), answers status requests and, when a mirror
serves a generation above its own (the publisher moved), publishes its
table again above that one (:mod:`hotload.cluster`,
:meth:`Daemon.continue_above`).
"""

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Callable

from oslo_config import cfg
from oslo_log import log as logging

from hotload import cluster
from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import notify
from hotload import probe as probe_mod
from hotload import publication
from hotload import scanner as scanner_mod
from hotload import signals
from hotload import store
from hotload import tree as tree_mod
from hotload import trust
from hotload import watcher

LOG = logging.getLogger(__name__)
LOCK_TIMEOUT = 30.0
#: Seconds between checks of the directories when nothing happens.
LOOP_INTERVAL = 5.0
#: Backoff after a failed scan, seconds.
RETRY_MIN = 1.0
RETRY_MAX = 60.0
#: Slack on top of the longest expected silence before the daemon is
#: called stuck (file system hiccups, a slow fork).
PROGRESS_MARGIN = 5.0
#: Python 3.11's os.walk (which watchdog uses to add watches) recurses
#: once per directory level. PATH_MAX stops any walk at about 2,050
#: levels, so this many frames cover every tree the kernel lets it walk;
#: the scanner itself refuses trees deeper than ``max_depth``.
RECURSION_LIMIT = 10_000
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Scan reasons after which the events cannot be trusted to name every
#: change, so the whole tree is walked: lost events (inotify overflow),
#: a state directory restored (its blobs are gone, and the watches were
#: set up again), and the periodic safety net (for whatever no event
#: announced at all).
WALK_ALL_REASONS = frozenset({'events lost', 'state', 'safety'})


class Daemon:
    """The daemon's work, independent of how it is launched.

    :param conf: Configuration with ``[hotload]`` registered and, for
        signals, the messaging transport.
    :param restart: Called with a reason when the worker process must be
        replaced (its watches are lost, its state directory was taken by
        another writer); under oslo.service,
        :func:`hotload.service.restart_worker`.
    """

    def __init__(self, conf: cfg.ConfigOpts,
                 restart: Callable[[str], None]) -> None:
        self.conf = conf
        options = conf.hotload
        self.root = os.path.realpath(options.actions_dir)
        self.states = store.ManifestStore(options.state_dir)
        self._restart_hook = restart
        # What start() took (lock, probe, publisher), given back in
        # reverse by stop().
        self._resources = contextlib.ExitStack()
        self._lock: store.WriterLock | None = None
        self._probe = None
        self._watcher: watcher.TreeWatcher | None = None
        self._publisher = None
        #: Serves mirrors (mode = publisher with a cluster_key), or None.
        self._publication: publication.Publication | None = None
        #: Answers status requests, checks that no mirror is ahead.
        self._presence: cluster.PublisherPresence | None = None
        #: A mirror serves this generation: the next publish goes above
        #: it, even with an unchanged table (continue_above).
        self._lift_above = 0
        self._lift_lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        #: Set by stop(): the scan in progress gives up, publishing nothing.
        self._cancelled = threading.Event()
        self._scan_lock = threading.Lock()
        self._worker = None
        self._status = {}
        self._rescan_seen = 0.0
        self._root_inode = None
        #: The generation being served, as this (single) writer knows it:
        #: the state directory may lose its files, this does not.
        self._current: manifest_mod.Manifest | None = None
        #: Highest generation number ever seen here; the next is above it.
        self._floor = 0
        self._published_inode: int | None = None
        self._restore = False
        self._last_reason_published = False
        self._events_lost = False
        self._last_scan = time.monotonic()
        self._dead_threads: list[str] = []
        self._previous_excepthook = None
        self._control_error: str | None = None
        self._unstable = scanner_mod.UnstableFiles()
        #: What the last walk learned; kept so that a changed file costs
        #: one file, not the tree.
        self._tree = tree_mod.TreeState(self.root)
        #: Paths (relative to root) the events named since the last scan
        #: took them; the watcher's thread adds, the scan takes.
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        # Liveness is progress: a loop turn, a file hashed, a probe ended.
        # The longest silence of a healthy daemon is a loop interval or
        # one probe that runs into its timeout (probes run in parallel, so
        # their number does not add up).
        self._alive_at = time.monotonic()
        self._alive_limit = (LOOP_INTERVAL + options.probe_timeout
                             + probe_mod.STACK_DUMP_GRACE + PROGRESS_MARGIN)
        self._steps = 0
        self._notifier = notify.Notifier(
            healthy=self.healthy, progress=self._progress_text,
            start_extension=2 * self._alive_limit)

    def start(self) -> None:
        """Take the state directory, publish a first full scan, watch."""
        options = self.conf.hotload
        sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
        self._hear_thread_deaths()
        self._notifier.starting()
        self._lock = self._resources.enter_context(
            self.states.writer_lock(timeout=LOCK_TIMEOUT))
        self._probe = self._resources.enter_context(probe_mod.Probe(
            self.root, options.package_name, self.states.blobs.root,
            options.probe_timeout, options.probe_memory_limit))
        self._probe.prestart(options.probe_workers)
        if signals.transport_configured(self.conf):
            self._publisher = signals.Publisher(self.conf)
            self._resources.callback(self._publisher.close)
            self._publication = publication.start_publication(
                self.conf, self.states)
            if self._publication:
                self._resources.callback(self._publication.close)
            self._presence = cluster.start_presence(
                self.conf, self._publication, self.states,
                scan_error=lambda: self._status.get('error'),
                continue_above=self.continue_above,
                on_rival=self._changed.set)
            if self._presence:
                self._resources.callback(self._presence.stop)
        else:
            LOG.info('No transport_url configured: running embedded; '
                     'providers on this node notice new generations '
                     'themselves')
        self._status = {'pid': os.getpid(),
                        'host': hotload_conf.node_name(self.conf),
                        'started_at': store.timestamp(),
                        'actions_dir': self.root}
        # Watch before the first scan, so nothing that changes during it
        # is missed.
        self._start_watcher()
        self._root_inode = os.stat(self.root).st_ino
        self._rescan_seen = self.states.rescan_requested()
        self._current = self._stored_generation()
        self._floor = max([self._floor, self._current.generation,
                           *self.states.generation_numbers()])
        try:
            current = self.rescan()
        except exceptions.ScanCancelled:
            LOG.info('Stopped during the first scan; nothing published')
            return
        self._notifier.ready(self._summary(current))
        self._worker = threading.Thread(target=self._work,
                                        name='hotload-scanner', daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop within seconds: probes in flight are killed, the scan in
        progress publishes nothing, a generation being written is finished.
        """
        self._notifier.stopping()
        self._stopping.set()
        self._cancelled.set()
        self._changed.set()
        if self._probe is not None:
            self._probe.cancel()
        if self._worker:
            self._worker.join()
        with self._scan_lock:
            if self._watcher:
                self._watcher.stop()
            self._resources.close()
        if self._previous_excepthook is not None:
            threading.excepthook = self._previous_excepthook

    def _start_watcher(self) -> None:
        if self._watcher:
            self._watcher.stop()
        self._watcher = watcher.TreeWatcher(
            self.root, self._on_changes, self.conf.hotload.debounce_interval,
            control_dir=self.states.control_dir,
            state_dir=self.states.state_dir, on_overflow=self._on_overflow)
        self._watcher.start()

    def _hear_thread_deaths(self) -> None:
        """Log a thread's death through oslo.log and wake the loop.

        By default a thread that dies prints to stderr only; a dead
        watchdog thread would leave the daemon deaf without a word.
        """
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            name = args.thread.name if args.thread else '?'
            LOG.error('Thread %s died', name, exc_info=(
                args.exc_type, args.exc_value, args.exc_traceback))
            self._dead_threads.append(
                f'{name}: {args.exc_type.__name__}: {args.exc_value}')
            self._changed.set()

        self._previous_excepthook = previous
        threading.excepthook = hook

    def continue_above(self, generation: int) -> None:
        """Publish the table again above ``generation``, changed or not.

        A mirror serves ``generation`` (this publisher moved to another
        node or state directory): it refuses every generation of ours
        until one is above it. Called from another thread; the scanning
        loop publishes.

        :param generation: The generation the next one must be above.
        """
        with self._lift_lock:
            self._lift_above = max(self._lift_above, generation)
        self._changed.set()

    def _on_changes(self, changes) -> None:
        paths = watcher.changed_paths(changes, self.root)
        LOG.debug('%d file system events, %d paths of the tree',
                  len(changes), len(paths))
        # Events in control/ and the state directory name no tree path:
        # they only wake the loop, which reads them itself.
        with self._dirty_lock:
            self._dirty |= paths
        self._changed.set()

    def _on_overflow(self) -> None:
        self._events_lost = True
        self._changed.set()

    def _progress(self) -> None:
        self._alive_at = time.monotonic()
        self._steps += 1

    def _progress_text(self) -> str:
        return f'scanning: {self._steps} files hashed or probed so far'

    def _wait_time(self) -> float:
        deadlines = [LOOP_INTERVAL]
        interval = self.conf.hotload.rescan_interval
        if interval:
            deadlines.append(self._last_scan + interval - time.monotonic())
        due = self._unstable.next_due()
        if due is not None:
            deadlines.append(due - time.monotonic())
        return max(min(deadlines), 0.0)

    def _work(self) -> None:
        retry = RETRY_MIN
        while True:
            self._progress()
            woken = self._changed.wait(self._wait_time())
            if self._stopping.is_set():
                return
            self._changed.clear()
            if not self._checks_pass():
                return
            reason = self._scan_reason(woken)
            if reason is None:
                continue
            requested = self.states.rescan_requested()
            full = requested != self._rescan_seen
            self._rescan_seen = requested
            try:
                current = self.rescan(
                    probe_all=full, walk_all=reason in WALK_ALL_REASONS)
            except exceptions.ScanCancelled:
                return
            except Exception as exc:
                # Nothing may end this loop but stop(): a full disk or a
                # file vanishing mid-walk is retried, and said, not fatal.
                LOG.exception('Scan failed; still serving the last '
                              'generation, retrying in %.0f s', retry)
                if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
                    self._relieve_disk()
                self._write_status(error=f'scan failed: {exc}')
                self._changed.set()
                self._stopping.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
                continue
            retry = RETRY_MIN
            if reason == 'safety' and current is not None and \
                    self._last_reason_published:
                LOG.warning('The periodic rescan found changes no file '
                            'system event announced')
            self._notifier.status(self._summary(current))

    def _scan_reason(self, woken: bool) -> str | None:
        """Why the loop should scan now, or None."""
        if self._events_lost:
            self._events_lost = False
            LOG.warning('File system events were lost (inotify queue '
                        'overflow); rescanning the whole actions directory')
            return 'events lost'
        if self._restore:
            return 'state'
        if woken:
            return 'change'
        interval = self.conf.hotload.rescan_interval
        if interval and time.monotonic() - self._last_scan >= interval:
            return 'safety'
        due = self._unstable.next_due()
        if due is not None and due <= time.monotonic():
            return 'backoff'
        return None

    def _checks_pass(self) -> bool:
        """Check what can go wrong under a running daemon; False to stop.
        """
        problem = self._watcher.problem() if self._watcher else None
        if self._dead_threads:
            problem = f'thread {self._dead_threads[0]}'
        if problem:
            self._restart(f'{problem}; no change would be noticed any more')
            return False
        try:
            inode = os.stat(self.root).st_ino
        except OSError:
            inode = None
        if inode != self._root_inode:
            # An inotify watch follows the directory's inode: after
            # ``rm -rf actions.d; mkdir actions.d`` or a rename over it, no
            # event would ever come again.
            self._restart(f'actions_dir {self.root} was removed or '
                          f'replaced')
            return False
        return self._check_state()

    def _check_state(self) -> bool:
        """Repair a state directory changed under the daemon."""
        problem = self._lock.problem()
        if problem:
            LOG.error('The state directory %s lost its writer lock (%s); '
                      'taking it again and publishing above generation %d',
                      self.states.state_dir, problem, self._floor)
            try:
                self.states.ensure()
                self._lock.retake()
            except (OSError, exceptions.StateLockedError) as exc:
                self._restart(f'cannot take the writer lock of '
                              f'{self.states.state_dir} again: {exc}')
                return False
            # The watches of the old directory went with it.
            self._start_watcher()
            self._restore = True
            return True
        if self._current is not None and self._current.generation:
            try:
                inode = os.stat(self.states.current_path).st_ino
            except OSError:
                inode = None
            if inode != self._published_inode:
                LOG.error('%s was removed or replaced; publishing '
                          'generation %d again, above generation %d',
                          self.states.current_path,
                          self._current.generation, self._floor)
                self._restore = True
        return True

    def _restart(self, reason: str) -> None:
        LOG.error('%s; restarting the worker', reason)
        self._write_status(error=f'restarting: {reason}')
        self._restart_hook(reason)

    def _relieve_disk(self) -> None:
        """Free what the state directory can give back on a full disk."""
        try:
            removed = self.states.prune(self.conf.hotload.keep_generations)
        except OSError as exc:
            LOG.error('Cannot prune %s: %s', self.states.state_dir, exc)
            return
        LOG.warning('File system of %s is full: removed %d unused blobs',
                    self.states.state_dir, removed)

    def healthy(self) -> bool:
        """True while the daemon makes progress (for the watchdog)."""
        return time.monotonic() - self._alive_at < self._alive_limit

    def _summary(self, current: manifest_mod.Manifest | None) -> str:
        if current is None:
            return 'actions directory refused; see the log'
        return (f'generation {current.generation}: '
                f'{current.action_count()} actions, '
                f'{len(current.errors())} file errors')

    def _stored_generation(self) -> manifest_mod.Manifest:
        options = self.conf.hotload
        try:
            stored = self.states.load()
        except exceptions.ManifestError as exc:
            LOG.error('Current manifest unreadable, starting over from '
                      'an empty table: %s', exc)
            stored = None
        return stored or manifest_mod.Manifest.empty(
            options.package_name, options.action_prefix)

    def _disabled(self, previous: manifest_mod.Manifest) -> tuple[str, ...]:
        """The operator's disabled actions; a malformed control file keeps
        those of ``previous`` rather than stopping every publish."""
        try:
            disabled = self.states.disabled()
        except exceptions.ControlFileError as exc:
            if str(exc) != self._control_error:
                LOG.error('%s; keeping the disabled actions of generation '
                          '%d', exc, previous.generation)
            self._control_error = str(exc)
            return previous.disabled
        self._control_error = None
        return disabled

    def rescan(self, probe_all: bool = False, walk_all: bool = True
               ) -> manifest_mod.Manifest | None:
        """Scan, publish a new generation if the table changed, signal.

        :param probe_all: Probe every module, not only changed ones (and
            walk the whole tree).
        :param walk_all: Walk the whole tree; otherwise only the paths
            the watcher named since the last scan are read again.
        :raises ScanCancelled: when :meth:`stop` interrupted it.
        """
        if probe_all:
            LOG.info('Full rescan requested')
        with self._scan_lock:
            if self._cancelled.is_set():
                raise exceptions.ScanCancelled('the daemon is stopping')
            options = self.conf.hotload
            previous = self._current or self._stored_generation()
            policy = trust.TrustPolicy(options.trusted_owners,
                                       options.max_file_size)
            for owner in policy.unknown_owners:
                LOG.warning('trusted_owners: no such user %r', owner)
            scanner = scanner_mod.Scanner(
                self.root, self.states.blobs, self._probe, policy,
                options.package_name, options.action_prefix,
                options.reserved_prefixes, options.probe_workers,
                max_depth=options.max_depth, on_progress=self._progress,
                cancelled=self._cancelled, unstable=self._unstable,
                tree=self._tree)
            self._last_scan = time.monotonic()
            # Taken now: what the events name from here on is for the
            # next scan (their change may come after this walk read it).
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            changed = None if walk_all or probe_all or self._restore \
                else dirty
            try:
                result = scanner.scan(previous, probe_all=probe_all,
                                      changed=changed)
            except exceptions.UntrustedRootError as exc:
                self._keep_dirty(dirty)
                LOG.error('%s; still serving generation %d', exc,
                          previous.generation)
                self._write_status(previous, error=str(exc))
                return None
            except BaseException:
                # Judged again by the retry: reading a path twice is
                # harmless, forgetting one is a missed change.
                self._keep_dirty(dirty)
                raise
            LOG.debug('%s walk, %d paths named by events', 'Full'
                      if changed is None else 'Incremental', len(dirty))
            restore = self._restore
            modules = self.states.without_lost_versions(result.modules) \
                if restore else result.modules
            lift = self._lift_above
            # Equal counts too: a mirror with our number and other bytes.
            lifting = bool(lift) and lift >= previous.generation
            current = self.states.commit(
                previous, modules, options.package_name,
                options.action_prefix, options.keep_generations,
                disabled=self._disabled(previous),
                floor=max(self._floor, lift), force=restore or lifting,
                # Listing the whole blob store goes with walking the
                # whole tree, not with every change.
                full=changed is None)
            self._restore = False
            with self._lift_lock:
                # A higher one may have come during the scan: kept.
                if self._lift_above <= current.generation:
                    self._lift_above = 0
            self._last_reason_published = current is not previous
            self._current = current
            self._floor = max(self._floor, current.generation)
            with contextlib.suppress(OSError):
                self._published_inode = os.stat(
                    self.states.current_path).st_ino
            self._report(previous, current, result)
            self._write_status(current, probed=len(result.probed),
                               seconds=result.duration)
        if current is not previous and self._publisher:
            self._publisher.generation_published(current.generation)
        if current is not previous and self._publication:
            self._publication.announce(current)
        return current

    def _keep_dirty(self, dirty: set[str]) -> None:
        with self._dirty_lock:
            self._dirty |= dirty

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
                 len(current.modules), current.action_count(),
                 len(current.errors()), len(result.probed), result.duration)

    def _write_status(self, current=None, error=None, probed=0,
                      seconds=0.0):
        """Record the last scan (or its failure) for ``status``."""
        if current is not None:
            self._status['generation'] = current.generation
        self._status.update({
            'last_scan_at': store.timestamp(),
            'last_scan_probed': probed,
            'last_scan_seconds': round(seconds, 3),
            'error': error,
            'warnings': ([self._control_error] if self._control_error
                         else [])
            + (self._presence.rivals() if self._presence else []),
        })
        self.states.record_status(self._status)
