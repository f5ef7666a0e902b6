"""From the actions directory to the module records of a new generation.

A scan walks the directory, applies the trust rules, hashes every module
and stores it as a blob, then probes only the modules whose content, or the
content of an in-tree module they import, changed since the previous
generation. Between full walks, only the paths the watcher named are
judged again (:mod:`hotload.tree`). Names are given and collisions
refused last, over the whole table, so the result does not depend on
which file changed first.

The walk itself (trust rules, hashing) is :mod:`hotload.walk`.

What is not probed costs little: the records of unchanged modules are the
previous generation's own objects (so the store need not serialize them
again), and no per-action work is redone for them but a name check.
"""

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable

from oslo_log import log as logging

from hotload import exceptions
from hotload import manifest
from hotload import naming
from hotload import probe as probe_mod
from hotload import probe_scheduler
from hotload import store
from hotload import tree as tree_mod
from hotload import trust
from hotload import walk

LOG = logging.getLogger(__name__)

#: Errors not decided by the module's own content (the whole table's
#: names, or the probe machinery failing): a module carrying one is
#: probed again at the next scan.
RETRIED_ERRORS = frozenset({'collision', 'reserved', 'probe'})
#: A module whose files changed while it was being probed.
UNSTABLE = probe_scheduler.UNSTABLE

# The walk moved to hotload.walk; these names stay here for callers
# (doctor, tests) that know them as the scanner's.
TreeSnapshot = walk.TreeSnapshot
snapshot_tree = walk.snapshot_tree

#: Action names of unchanged modules are checked at every scan (the prefix
#: may have changed since the previous generation); the names themselves
#: rarely change, so they are computed once.
_action_name = functools.lru_cache(maxsize=1 << 16)(naming.action_name)


class UnstableFiles:
    """Modules whose probe changes their files, and how long they wait.

    A module that writes to its own file at import changes the tree on
    every probe: each write is an event, each event a scan, each scan a new
    generation, until ``keep_generations`` turns over in under a second and
    blobs that running actions need are collected. A flagged module is not
    probed again before its backoff expires (``first_backoff``, doubling on
    every strike up to ``max_backoff``); meanwhile its record stays as
    published, so its writes publish nothing. A probe that leaves its files
    alone clears it. The daemon keeps one across scans, and schedules a
    scan at :meth:`next_due`.

    :param first_backoff: Seconds a module waits after its first strike.
    :param max_backoff: Longest wait, in seconds.
    :param clock: Monotonic time in seconds (tests inject their own).
    """

    def __init__(self, first_backoff: float = 1.0, max_backoff: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.clock = clock
        # The daemon may ask next_due() from another thread than the scan.
        self._lock = threading.Lock()
        #: module -> (strikes in a row, backoff, monotonic time it is due)
        self._flagged: dict[str, tuple[int, float, float]] = {}

    def flag(self, module: str) -> tuple[int, float]:
        """Count one more probe of ``module`` that changed its files.

        :param module: Dotted module name.
        :returns: the strikes in a row, and the seconds it now waits.
        """
        with self._lock:
            strikes, backoff, _due = self._flagged.get(module, (0, 0.0, 0.0))
            backoff = min(backoff * 2 if strikes else self.first_backoff,
                          self.max_backoff)
            self._flagged[module] = (strikes + 1, backoff,
                                     self.clock() + backoff)
            return strikes + 1, backoff

    def clear(self, module: str) -> None:
        """``module`` was probed and its files stayed as they were.

        :param module: Dotted module name.
        """
        with self._lock:
            self._flagged.pop(module, None)

    def strikes(self, module: str) -> tuple[int, float] | None:
        """(strikes in a row, backoff) of a flagged module, else None.

        :param module: Dotted module name.
        """
        with self._lock:
            flagged = self._flagged.get(module)
        return flagged[:2] if flagged else None

    def is_held(self, module: str) -> bool:
        """True while ``module`` waits for its backoff to expire.

        :param module: Dotted module name.
        """
        with self._lock:
            flagged = self._flagged.get(module)
        return flagged is not None and self.clock() < flagged[2]

    def flagged(self) -> frozenset[str]:
        """The modules flagged now, held back or due."""
        with self._lock:
            return frozenset(self._flagged)

    def retain(self, modules: Iterable[str]) -> None:
        """Forget the modules that are no longer in the tree.

        :param modules: The modules of the tree.
        """
        keep = set(modules)
        with self._lock:
            for module in [m for m in self._flagged if m not in keep]:
                del self._flagged[module]

    def next_due(self) -> float | None:
        """Monotonic time the earliest flagged module may be probed again.

        None when no module is flagged. A scan at that time probes it
        even if nothing else changed, and so clears or re-flags it.
        """
        with self._lock:
            return min((due for _s, _b, due in self._flagged.values()),
                       default=None)


@dataclasses.dataclass
class ScanResult:
    """The outcome of one scan.

    :param modules: Records for the next generation.
    :param probed: Modules that were probed, sorted.
    :param duration: Seconds the scan took.
    """

    modules: dict[str, manifest.ModuleRecord]
    probed: list[str]
    duration: float


class Scanner:
    """Turns the actions directory into the records of a generation.

    :param root: The actions directory.
    :param blobs: Blob store the probe reads sources from.
    :param probe: The probe (its package name must be ``package_name``).
    :param policy: The trust rules.
    :param package_name: Import name the directory is mounted as.
    :param action_prefix: Prefix of the action names.
    :param reserved_prefixes: Name prefixes no hot action may take.
    :param workers: Modules probed at the same time.
    :param max_depth: Deepest directory level walked (``[hotload]
        max_depth``).
    :param on_progress: Called after each directory listed, file hashed
        and probe completed (the daemon's watchdog records the time); must
        be cheap.
    :param cancelled: When set, the walk and the probing stop: probes not
        started are dropped, probes in flight are not waited for (the
        daemon ends them with ``Probe.cancel()``), and :meth:`scan` raises
        :class:`~hotload.exceptions.ScanCancelled`.
    :param unstable: The modules held back for changing their files while
        probed; the daemon keeps one across scans. Without it, a new one
        per scanner.
    :param tree: What the last walk of ``root`` learned, for a scan that
        judges only changed paths again; the daemon keeps one across
        scans. Without it, a new one per scanner.
    """

    def __init__(self, root: str, blobs: store.BlobStore,
                 probe: probe_mod.Probe, policy: trust.TrustPolicy,
                 package_name: str, action_prefix: str,
                 reserved_prefixes: list[str], workers: int = 1, *,
                 max_depth: int = 32,
                 on_progress: Callable[[], None] | None = None,
                 cancelled: threading.Event | None = None,
                 unstable: UnstableFiles | None = None,
                 tree: tree_mod.TreeState | None = None) -> None:
        self.root = os.path.realpath(root)
        self.blobs = blobs
        self.probe = probe
        self.policy = policy
        self.package_name = package_name
        self.action_prefix = action_prefix
        self.reserved_prefixes = list(reserved_prefixes)
        self.workers = workers
        self.max_depth = max_depth
        self.on_progress = on_progress or (lambda: None)
        self.cancelled = cancelled
        self.unstable = unstable if unstable is not None else UnstableFiles()
        self.tree = tree if tree is not None else \
            tree_mod.TreeState(self.root)
        self._reserved = tuple(p for p in self.reserved_prefixes if p)

    def scan(self, previous: manifest.Manifest, probe_all: bool = False,
             changed: Iterable[str] | None = None) -> ScanResult:
        """Scan the directory against ``previous``.

        :param previous: The generation being served.
        :param probe_all: Probe every module, changed or not (an operator's
            ``mistral-hotload reload``, e.g. after installing a library a
            module imports), even those held back by ``unstable``.
        :param changed: Paths relative to the directory that changed since
            the previous scan with this ``tree`` (both ends of a move);
            only they are judged again. None walks the whole directory.
        :raises UntrustedRootError: when the directory itself is refused;
            the caller keeps serving ``previous``.
        :raises ScanCancelled: when ``cancelled`` was set.
        """
        started = time.monotonic()
        snapshot = self._walk(changed)
        if previous.package_name != self.package_name:
            previous = manifest.Manifest.empty(self.package_name,
                                               self.action_prefix)
        self._check_cancelled()
        self.unstable.retain(snapshot.modules())
        flagged = self.unstable.flagged()
        # A held module is not probed, whatever changed: its writes are
        # what changed. One whose backoff expired is probed even if
        # nothing changed, to clear it or flag it again.
        stale = [name for name in snapshot.modules()
                 if probe_all or (
                     name not in flagged and self._needs_probe(
                         previous.modules.get(name), snapshot, name)) or (
                     name in flagged and not self.unstable.is_held(name))]
        if stale:
            snapshot = self._with_blobs(snapshot, previous)
            stale = [name for name in stale if snapshot.sha(name)]
        results = probe_scheduler.ProbeScheduler(
            self.probe, self.root, self.policy.max_file_size,
            self.unstable.flag, self.unstable.clear, self.workers,
            self.on_progress, self.cancelled).run(stale, snapshot)
        modules = self._records(previous, snapshot, results)
        modules = self._assign_names(previous, modules,
                                     incremental=changed is not None)
        return ScanResult(modules, sorted(stale),
                          time.monotonic() - started)

    def _walk(self, changed: Iterable[str] | None) -> TreeSnapshot:
        return self.tree.snapshot(
            self.policy, self.blobs, changed, max_depth=self.max_depth,
            on_progress=self.on_progress, cancelled=self.cancelled)

    def _with_blobs(self, snapshot: TreeSnapshot,
                    previous: manifest.Manifest) -> TreeSnapshot:
        """``snapshot``, once every content it names is in the blob store.

        Files that did not change are not read again, but their blobs may
        have gone since they were (the store collects what no kept
        generation serves, e.g. a broken module's content), and a probe
        reads every in-tree import from the store. Those files are read
        again, which stores them. A content that ``previous`` serves, or
        names as the one that failed, is kept by the store, so only the
        others are looked at.
        """
        def served(name: str, sha: str) -> bool:
            record = previous.modules.get(name)
            return bool(record and (
                record.good and record.good.sha256 == sha
                or record.error and record.error.sha256 == sha))

        missing = [ref.path for name, ref in snapshot.sources.items()
                   if ref.sha256 and not served(name, ref.sha256)
                   and not os.path.exists(self.blobs.path(ref.sha256))]
        if not missing:
            return snapshot
        LOG.debug('Reading again %d files whose blobs were collected',
                  len(missing))
        return self._walk(missing)

    @staticmethod
    def _needs_probe(record: manifest.ModuleRecord | None,
                     snapshot: TreeSnapshot, name: str) -> bool:
        if record is None:
            return True
        error = record.error
        if error and error.kind in RETRIED_ERRORS:
            return True
        if error and error.kind != 'refused':
            attempt = (error.sha256, error.imports)
        elif record.good:
            attempt = (record.good.sha256, record.good.imports)
        else:
            return True
        sha, imports = attempt
        if sha != snapshot.sha(name):
            return True
        return any(snapshot.sha(dep) != dep_sha
                   for dep, dep_sha in imports.items())

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise exceptions.ScanCancelled('scan cancelled')

    def _version(self, name: str, sha: str,
                 result: probe_mod.ProbeResult) -> manifest.ModuleVersion:
        actions = tuple(manifest.ActionSpec(
            name=naming.action_name(self.action_prefix, name, e.class_name,
                                    e.declared_name),
            class_name=e.class_name, declared_name=e.declared_name,
            input=e.input, description=e.description, line=e.line)
            for e in result.exports)
        return manifest.ModuleVersion(
            sha256=sha, imports=result.imports,
            content_key=manifest.content_key(name, sha, result.imports),
            actions=actions, packages=result.packages)

    def _renamed(self, version: manifest.ModuleVersion | None,
                 module: str) -> manifest.ModuleVersion | None:
        """``version`` with its actions named under the current prefix;
        ``version`` itself when they already are."""
        if version is None:
            return None
        names = [_action_name(self.action_prefix, module, a.class_name,
                              a.declared_name) for a in version.actions]
        pairs = list(zip(version.actions, names, strict=True))
        if all(a.name == name for a, name in pairs):
            return version
        actions = tuple(dataclasses.replace(a, name=name)
                        for a, name in pairs)
        return dataclasses.replace(version, actions=actions)

    @staticmethod
    def _record(old: manifest.ModuleRecord | None, name: str, path: str,
                good: manifest.ModuleVersion | None,
                error: manifest.ModuleError | None) -> manifest.ModuleRecord:
        """The record, as the previous generation's object if unchanged."""
        if old is not None and old.path == path and old.good is good and \
                (old.error is error or old.error == error):
            return old
        return manifest.ModuleRecord(name, path, good, error)

    def _records(self, previous: manifest.Manifest, snapshot: TreeSnapshot,
                 results: dict[str, probe_mod.ProbeResult]
                 ) -> dict[str, manifest.ModuleRecord]:
        records: dict[str, manifest.ModuleRecord] = {}
        # A name depends on the prefix, the module and the class: under the
        # previous generation's prefix, a version keeps its names.
        if previous.action_prefix == self.action_prefix:
            def renamed(old: manifest.ModuleRecord | None,
                        name: str) -> manifest.ModuleVersion | None:
                return old.good if old else None
        else:
            def renamed(old: manifest.ModuleRecord | None,
                        name: str) -> manifest.ModuleVersion | None:
                return self._renamed(old.good, name) if old else None
        for name, refusal in snapshot.refused.items():
            old = previous.modules.get(name)
            records[name] = self._record(old, name, refusal.path,
                                         renamed(old, name), refusal)
        for name in snapshot.modules():
            ref = snapshot.sources[name]
            old = previous.modules.get(name)
            last_good = renamed(old, name)
            result = results.get(name)
            if result is None:
                error = old.error if old and old.error and \
                    old.error.kind != 'refused' else None
                held = self.unstable.strikes(name)
                if held and error is None:
                    # Held back, but its report was never published (the
                    # generation that had it failed to commit): the same
                    # report on every scan, so its writes publish nothing.
                    error = probe_scheduler.unstable_error(
                        name, ref.path, ref.path, *held)
                records[name] = self._record(old, name, ref.path, last_good,
                                             error)
            elif result.error:
                error = dataclasses.replace(
                    result.error, sha256=ref.sha256, imports=result.imports)
                records[name] = manifest.ModuleRecord(
                    name, ref.path, last_good, error)
            else:
                records[name] = manifest.ModuleRecord(
                    name, ref.path, self._version(name, ref.sha256, result))
        return records

    def _assign_names(self, previous: manifest.Manifest,
                      records: dict[str, manifest.ModuleRecord],
                      incremental: bool = False
                      ) -> dict[str, manifest.ModuleRecord]:
        """Refuse reserved and colliding names; incumbents keep theirs.

        A module whose new version takes a reserved name or one another
        module exports falls back to its last good version. Modules that
        serve what they served in the previous generation claim their names
        first; newcomers follow in path order. Repeats until no conflict is
        left (each round demotes at least one module, so it ends).

        :param incremental: The records the previous generation published
            as they are (the same objects) were checked by the scan that
            made it, under the same prefixes (they are options, read at
            start, and a start walks the whole tree): only the others are
            checked, against their names. Ten thousand actions are not
            walked for a change of one module.
        """
        def served_before(record: manifest.ModuleRecord) -> bool:
            old = previous.modules.get(record.name)
            return bool(old and old.good and record.good
                        and old.good.sha256 == record.good.sha256)

        records = dict(records)
        candidates = list(records.values())

        def settled(action_name: str) -> tuple | None:
            return None

        if incremental and previous.action_prefix == self.action_prefix:
            candidates = [r for r in candidates
                          if previous.modules.get(r.name) is not r]
            owners = previous.action_owners

            def settled(action_name: str) -> tuple | None:
                """The unchanged record that exports ``action_name``."""
                owner = owners.get(action_name)
                record = records.get(owner)
                if record is None or previous.modules[owner] is not record:
                    return None
                return next(((record, a) for a in record.actions
                             if a.name == action_name), None)

        order = sorted(candidates,
                       key=lambda r: (not served_before(r), r.path))
        reserved_prefixes = self._reserved
        while True:
            claims: dict[str, tuple[manifest.ModuleRecord,
                                    manifest.ActionSpec]] = {}
            conflict = None
            for record in (records[r.name] for r in order):
                for action in record.actions:
                    # One startswith over all prefixes first: this loop
                    # runs over every action of the tree at every scan.
                    reserved = naming.reserved_prefix(
                        action.name, self.reserved_prefixes) \
                        if action.name.startswith(reserved_prefixes) \
                        else None
                    holder = claims.get(action.name) or \
                        settled(action.name)
                    if reserved or holder:
                        conflict = (record, action, reserved, holder)
                        break
                    claims[action.name] = (record, action)
                if conflict:
                    break
            if conflict is None:
                return records
            record, action, reserved, holder = conflict
            records[record.name] = self._demoted(previous, record, action,
                                                 reserved, holder)

    def _demoted(self, previous, record, action, reserved, holder):
        if reserved:
            error = manifest.ModuleError(
                kind='reserved',
                message=f'action name {action.name} (class '
                        f'{action.class_name}) uses the reserved prefix '
                        f'{reserved!r} (reserved_prefixes)',
                path=record.path, line=action.line)
        else:
            other, other_action = holder
            error = manifest.ModuleError(
                kind='collision',
                message=f'action name {action.name} (class '
                        f'{action.class_name}) is already exported by '
                        f'{other.path}:{other_action.line} (class '
                        f'{other_action.class_name}); rename the class or '
                        f'set __action_name__',
                path=record.path, line=action.line)
        if record.good:
            error = dataclasses.replace(error, sha256=record.good.sha256,
                                        imports=record.good.imports)
        old = previous.modules.get(record.name)
        fallback = self._renamed(old.good, record.name) if old else None
        if fallback is not None and record.good is not None and \
                fallback.sha256 == record.good.sha256:
            fallback = None  # the served version itself conflicts
        return manifest.ModuleRecord(record.name, record.path, fallback,
                                     error)
