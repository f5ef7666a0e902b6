"""Probing the modules of one scan: in parallel, and in batches when many.

The scanner decides which modules must be probed; this module runs those
probes on ``workers`` threads and judges each result against the files:
a module whose file (or the file of an in-tree module it imports) changed
while it was probed is held back (:class:`hotload.scanner.UnstableFiles`)
rather than published, since serving what was probed would publish a
generation per write.

Why batches: a probe of its own costs a module a process, and copying
every page of the interpreter that its import touches, some three times
what importing a small module costs. A first scan of a thousand modules
then took three times the target. Many modules at once (a first scan, a
``reload``, a changed module many others import) are imported in batches,
several per process (:meth:`hotload.probe.Probe.probe_batch`): the
modules a batch did not bring back clean are probed again alone, so every
error is reported as an isolated probe finds it. One module, or a few,
are always probed alone.
"""

import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Callable
from collections.abc import Iterable

from oslo_log import log as logging

from hotload import blobs
from hotload import exceptions
from hotload import loader
from hotload import manifest
from hotload import probe as probe_mod
from hotload import walk

LOG = logging.getLogger(__name__)

#: A module whose files changed while it was being probed.
UNSTABLE = 'unstable'
PROGRESS_EVERY = 50
#: Seconds between looks at the cancellation event while probes run.
CANCEL_POLL = 0.1
#: Most modules a batch imports. Past some 16, a batch saves little more,
#: and a module that is not clean sends more of them to probes of their
#: own.
BATCH_SIZE = 16
#: Batches per worker thread, at least: small enough batches that the
#: threads finish together.
BATCHES_PER_WORKER = 4

#: What a probe gives: the result, and the file that changed during it.
Outcome = tuple[probe_mod.ProbeResult, str | None]


@dataclasses.dataclass
class ProbeScheduler:
    """Runs the probes of one scan and judges their results.

    :param probe: The probe.
    :param root: The actions directory (real path).
    :param max_file_size: Largest module file read (``[hotload]
        max_file_size``), to hash a file again.
    :param flag_unstable: Called with a module whose files changed while
        it was probed; returns its strikes and the backoff before its next
        probe (:meth:`hotload.scanner.UnstableFiles.flag`).
    :param clear_unstable: Called with a module probed with no such change.
    :param workers: Probes run at the same time.
    :param on_progress: Called after each probe completed; must be cheap.
    :param cancelled: When set, probes not started are dropped, those in
        flight are not waited for, and :meth:`run` raises
        :class:`~hotload.exceptions.ScanCancelled`.
    """

    probe: probe_mod.Probe
    root: str
    max_file_size: int
    flag_unstable: Callable[[str], tuple[int, float]]
    clear_unstable: Callable[[str], None]
    workers: int = 1
    on_progress: Callable[[], None] = lambda: None
    cancelled: threading.Event | None = None

    def run(self, names: list[str], snapshot: walk.TreeSnapshot
            ) -> dict[str, probe_mod.ProbeResult]:
        """Probe ``names`` against ``snapshot``.

        :param names: Modules of the snapshot, each with a sha256.
        :param snapshot: The tree as the scan walked and hashed it.
        :returns: A result for every name.
        :raises ScanCancelled: when ``cancelled`` was set.
        """
        results: dict[str, probe_mod.ProbeResult] = {}
        if not names:
            return results
        pool = concurrent.futures.ThreadPoolExecutor(self.workers)
        finished = False
        try:
            futures = {pool.submit(self._probe_pool, batch, snapshot): batch
                       for batch in self._batches(names)}
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, CANCEL_POLL if self.cancelled else None,
                    concurrent.futures.FIRST_COMPLETED)
                self._check_cancelled()
                for future in done:
                    batch = futures.pop(future)
                    outcomes = self._batch_outcomes(batch, future)
                    for name in batch:
                        if name not in outcomes:
                            alone = pool.submit(self._probe_one, name,
                                                snapshot)
                            futures[alone] = [name]
                            pending.add(alone)
                    for name, outcome in outcomes.items():
                        results[name] = self._judged(name, outcome,
                                                     snapshot)
                        self._progress(len(results), len(names))
            finished = True
        finally:
            # A cancelled scan returns at once: probes not started are
            # dropped, and those in flight are not waited for (the
            # daemon's Probe.cancel(), or probe_timeout, ends them).
            pool.shutdown(wait=finished, cancel_futures=True)
        return results

    def _batches(self, names: list[str]) -> Iterable[list[str]]:
        size = min(BATCH_SIZE, len(names) // (self.workers
                                              * BATCHES_PER_WORKER))
        if size < 2:
            return [[name] for name in names]
        return [names[start:start + size]
                for start in range(0, len(names), size)]

    def _progress(self, count: int, total: int) -> None:
        self.on_progress()
        if total >= PROGRESS_EVERY and (count % PROGRESS_EVERY == 0
                                        or count == total):
            LOG.info('Probed %d/%d modules', count, total)

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise exceptions.ScanCancelled('scan cancelled')

    def _probe_pool(self, names: list[str], snapshot: walk.TreeSnapshot
                     ) -> dict[str, Outcome | BaseException]:
        if len(names) == 1:
            return self._probe_one(names[0], snapshot)
        self._check_cancelled()
        results = self.probe.probe_batch(names, snapshot.sources)
        # Only a module probed alone is held back for a file that changed
        # under it: in a batch, another module may have written it.
        return {name: (result, None) for name, result in results.items()
                if self._changed_file(snapshot, [name, *result.imports])
                is None}

    def _probe_one(self, name: str, snapshot: walk.TreeSnapshot
                   ) -> dict[str, Outcome | BaseException]:
        """Probe ``name`` alone; also the file its probe changed, if any."""
        self._check_cancelled()
        # A file that changed before the probe began was changed by
        # someone else (an editor, another module's probe): only what
        # changes during the probe is held against the module.
        before = self._changed_file(snapshot, [name])
        try:
            result = self.probe.probe(name, snapshot.sources)
        except exceptions.ScanCancelled:
            raise
        except Exception as exc:
            # The probe machinery itself failed (no memory to fork, say):
            # that module waits for the next scan, the others go on.
            LOG.exception('Probing %s failed', name)
            return {name: exc}
        if before:
            return {name: (result, None)}
        return {name: (result, self._changed_file(
            snapshot, [name, *result.imports]))}

    def _batch_outcomes(self, batch: list[str],
                        future: concurrent.futures.Future
                        ) -> dict[str, Outcome | BaseException]:
        try:
            return future.result()
        except exceptions.ScanCancelled:
            raise  # not the module's fault: nothing of this scan is kept
        except Exception:
            # The batch's machinery failed: its modules go alone.
            LOG.exception('Probing %d modules in one process failed',
                          len(batch))
            return {}

    def _changed_file(self, snapshot: walk.TreeSnapshot,
                      names: list[str]) -> str | None:
        for name in names:
            ref = snapshot.sources.get(name)
            identity = snapshot.identities.get(name)
            if ref and ref.sha256 and identity and content_changed(
                    self.root, ref, identity, self.max_file_size):
                return ref.path
        return None

    def _judged(self, name: str, outcome: Outcome | BaseException,
                snapshot: walk.TreeSnapshot) -> probe_mod.ProbeResult:
        if isinstance(outcome, BaseException):
            return probe_mod.ProbeResult(
                name, (), {}, manifest.ModuleError(
                    kind='probe', path=snapshot.sources[name].path,
                    message=f'the probe itself failed: {outcome!r}'))
        result, changed = outcome
        if changed is None:
            self.clear_unstable(name)
            return result
        # Serving what was probed would publish a generation per write;
        # the module keeps its last good version instead.
        error = unstable_error(name, snapshot.sources[name].path, changed,
                               *self.flag_unstable(name))
        error = dataclasses.replace(error, sha256=snapshot.sha(name),
                                    imports=result.imports)
        return dataclasses.replace(result, exports=(), error=error)


def unstable_error(name: str, path: str, changed: str, strikes: int,
                   backoff: float) -> manifest.ModuleError:
    """The error of a module whose files changed while it was probed.

    :param name: The module.
    :param path: Its file.
    :param changed: The file that changed (its own, or an import's).
    :param strikes: Probes in a row that saw a change.
    :param backoff: Seconds before it is probed again.
    """
    times = 'once' if strikes == 1 else f'{strikes} times in a row'
    who = 'the module' if changed == path else \
        'the module, or a module it imports,'
    return manifest.ModuleError(
        kind=UNSTABLE, path=changed,
        message=f'{changed} changed while the probe imported {name}, '
                f'{times}: does {who} write to its own file at import? '
                f'Probed again at most every {backoff:g} s')


def content_changed(root: str, ref: loader.SourceRef,
                    identity: walk.FileIdentity, max_size: int) -> bool:
    """True when the file of ``ref`` no longer holds the content hashed.

    The stat is compared first; the content is read again only when it
    differs, so a file rewritten with the same bytes is not a change. A
    file that is gone is not a change either: its removal is seen by the
    next scan.

    :param root: The actions directory.
    :param ref: The module's file and the sha256 read from it.
    :param identity: The file's identity when it was read.
    :param max_size: Largest content read again (``max_file_size``).
    """
    path = os.path.join(root, ref.path)
    try:
        if walk.FileIdentity.of(os.stat(path)) == identity:
            return False
        with open(path, 'rb') as stream:
            data = stream.read(max_size + 1)
    except OSError:
        return False
    return blobs.sha256_hex(data) != ref.sha256
