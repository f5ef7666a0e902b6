"""The state directory: immutable blobs and the manifest generations.

Layout::

    <state_dir>/blobs/ab/ab12...ef          module sources and module
                                            records, named by sha256
    <state_dir>/generations/0000000007.json  one manifest index per generation
    <state_dir>/manifest.json               the current generation
    <state_dir>/lock                         held by the one writer
    <state_dir>/daemon.json                  the daemon's own status
    <state_dir>/control/disabled.json        actions disabled by the CLI
    <state_dir>/control/rescan               a full rescan asked by the CLI

Every file is written to a temporary name, fsynced, renamed into place and
its directory fsynced, so a reader (or a writer killed at any moment)
never sees a torn file. ``manifest.json`` is a hard link to the newest
generation file, replaced by rename: a provider's cheap "is there a newer
generation?" check is one ``stat`` of it. The records a generation names
are stored before its index, so every record an index names is there.
Blobs themselves are :mod:`hotload.blobs`.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator

from oslo_log import log as logging

from hotload import blobs as blobs_mod
from hotload import exceptions
from hotload import lock as lock_mod
from hotload import manifest as manifest_mod

LOG = logging.getLogger(__name__)
CURRENT = 'manifest.json'
GENERATIONS = 'generations'
LOCK = 'lock'
STATUS = 'daemon.json'
CONTROL = 'control'
#: Size the status file is padded to (see ManifestStore.write_status).
STATUS_SIZE = 16 * 1024
#: Largest control file read.
MAX_CONTROL_FILE = 1024 * 1024
# Defined in hotload.blobs and hotload.lock; these names stay here for
# the callers that know them as the store's.
WriterLock = lock_mod.WriterLock
BLOBS = blobs_mod.BLOBS
BlobStore = blobs_mod.BlobStore
atomic_write = blobs_mod.atomic_write
is_sha256 = blobs_mod.is_sha256
sha256_hex = blobs_mod.sha256_hex
_fsync_dir = blobs_mod.fsync_dir


def timestamp() -> str:
    """Local time as the status files record it."""
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def _padded_status(status: dict) -> bytes:
    text = json.dumps(status, indent=1)
    if len(text) >= STATUS_SIZE:
        # Only error texts grow without bound: cut the longest.
        status = dict(status, error=str(status.get('error'))[:2000])
        text = json.dumps(status, indent=1)[:STATUS_SIZE - 1]
    return (text + ' ' * (STATUS_SIZE - 1 - len(text)) + '\n').encode()


class ManifestStore:
    """The manifest generations of one state directory.

    :param state_dir: The state directory; created if missing.
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.current_path = os.path.join(state_dir, CURRENT)
        self.generations_dir = os.path.join(state_dir, GENERATIONS)
        self.blobs = BlobStore(state_dir)
        self.status_path = os.path.join(state_dir, STATUS)
        #: Requests from the CLI to the daemon, watched by the daemon.
        self.control_dir = os.path.join(state_dir, CONTROL)
        self.disabled_path = os.path.join(self.control_dir, 'disabled.json')
        self.rescan_path = os.path.join(self.control_dir, 'rescan')
        #: Records read or written, by sha256 (immutable, so never stale);
        #: trimmed to those of the kept generations by prune().
        self._records: dict[str, manifest_mod.ModuleRecord] = {}
        #: Indexes of generation files, by number (immutable too).
        self._indexes: dict[int, manifest_mod.Index] = {}
        #: The blobs each generation and each record names (prune()).
        self._generation_blobs: dict[int, frozenset] = {}
        self._record_blobs: dict[str, frozenset] = {}
        #: Temporaries left by a writer killed before this one are
        #: removed by this writer's first prune.
        self._temporaries_removed = False

    def ensure(self) -> None:
        """Create the directory layout (the writer calls this)."""
        os.makedirs(self.generations_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.control_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.blobs.root, mode=0o755, exist_ok=True)

    @contextlib.contextmanager
    def writer_lock(self, timeout: float = 0.0) -> Iterator['WriterLock']:
        """Hold the state directory's single-writer lock.

        :param timeout: Seconds to wait for a previous holder to go (a
            daemon being restarted), polling.
        :raises StateLockedError: when another process still holds it.
        """
        lock = WriterLock(os.path.join(self.state_dir, LOCK))
        self.ensure()
        lock.acquire(timeout)
        try:
            yield lock
        finally:
            lock.release()

    def disabled(self) -> tuple[str, ...]:
        """Action names disabled by the operator (kept across restarts).

        :raises ControlFileError: when ``control/disabled.json`` is not a
            JSON list of names.
        """
        try:
            with open(self.disabled_path, 'rb') as stream:
                names = json.loads(stream.read(MAX_CONTROL_FILE))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise exceptions.ControlFileError(
                f'{self.disabled_path}: not a JSON list of action names: '
                f'{exc}') from exc
        if not isinstance(names, list) or not all(
                isinstance(name, str) for name in names):
            raise exceptions.ControlFileError(
                f'{self.disabled_path}: not a JSON list of action names '
                f'(found {type(names).__name__})')
        return tuple(sorted(set(names)))

    def set_disabled(self, names: set[str]) -> None:
        """Replace the disabled action names; the daemon applies them."""
        os.makedirs(self.control_dir, mode=0o755, exist_ok=True)
        atomic_write(self.disabled_path,
                     json.dumps(sorted(names), indent=1).encode())

    def request_rescan(self) -> None:
        """Ask the daemon for a full rescan (every module probed again)."""
        os.makedirs(self.control_dir, mode=0o755, exist_ok=True)
        atomic_write(self.rescan_path, str(time.time()).encode())

    def rescan_requested(self) -> float:
        """When a full rescan was last requested (0: never)."""
        try:
            with open(self.rescan_path, 'rb') as stream:
                return float(stream.read() or 0)
        except (FileNotFoundError, ValueError):
            return 0.0

    def writer_running(self) -> bool:
        """True while a daemon holds this state directory's lock."""
        try:
            fd = os.open(os.path.join(self.state_dir, LOCK),
                         os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def write_status(self, status: dict) -> None:
        """Replace the daemon's status file, even on a full file system.

        The document is padded with spaces (still valid JSON) to
        ``STATUS_SIZE`` bytes. When the atomic replacement fails (no space
        left for a new file), the existing file is overwritten in place:
        its blocks are already allocated, so ``status`` still learns why
        the daemon is stuck. A reader may then see a torn document and
        reads again (:meth:`load_status`).

        :param status: What to record; must be JSON-serialisable.
        :raises OSError: when neither way works.
        """
        data = _padded_status(status)
        try:
            atomic_write(self.status_path, data)
        except OSError as exc:
            try:
                fd = os.open(self.status_path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                raise exc from None
            try:
                if os.fstat(fd).st_size < len(data):
                    raise exc
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def record_status(self, status: dict) -> None:
        """:meth:`write_status`, logging a failure instead of raising: a
        status that cannot be written must not stop the writer's work.

        :param status: What to record; must be JSON-serialisable.
        """
        try:
            self.write_status(status)
        except OSError as exc:
            LOG.error('Cannot write %s: %s', self.status_path, exc)

    def load_status(self) -> dict:
        """What the daemon last wrote about itself ({} if nothing)."""
        for _attempt in range(3):
            try:
                with open(self.status_path, 'rb') as stream:
                    status = json.loads(stream.read(STATUS_SIZE * 4))
            except FileNotFoundError:
                return {}
            except ValueError:
                continue  # torn by an in-place overwrite: read it again
            return status if isinstance(status, dict) else {}
        return {}

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use on the state's file
        system, or None when it cannot be told."""
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def load(self) -> manifest_mod.Manifest | None:
        """The current generation, or None when none was published.

        :raises ManifestError: when it exists but cannot be used (its
            index is malformed or a record it names is missing or
            corrupt).
        """
        try:
            with open(self.current_path, 'rb') as stream:
                data = stream.read()
        except FileNotFoundError:
            return None
        return self.manifest(manifest_mod.Index.from_json(
            data, self.current_path))

    def manifest(self, index: manifest_mod.Index) -> manifest_mod.Manifest:
        """The generation ``index`` names, its records read from here.

        :param index: A parsed manifest index.
        :raises ManifestError: when a record is missing or corrupt.
        """
        return manifest_mod.Manifest.from_index(index, self.record)

    def record(self, name: str, sha256: str) -> manifest_mod.ModuleRecord:
        """The record of module ``name`` stored under ``sha256``, checked.

        :param name: The module the index names it for.
        :param sha256: The record's sha256, as the index names it.
        :raises ManifestError: when it is missing, corrupt or malformed.
        """
        record = self._records.get(sha256)
        if record is None or record.name != name:
            record = self._records[sha256] = self.read_record(name, sha256)
        return record

    def read_record(self, name: str,
                    sha256: str) -> manifest_mod.ModuleRecord:
        """:meth:`record`, read from disk whatever this store holds.

        :param name: The module the index names it for.
        :param sha256: The record's sha256, as the index names it.
        :raises ManifestError: when it is missing, corrupt or malformed.
        """
        try:
            data = self.blobs.get(sha256)
        except exceptions.BlobError as exc:
            raise exceptions.ManifestError(
                f'the record of module {name!r:.100}: {exc}') from None
        return manifest_mod.record_from_json(data, name, None,
                                             self.blobs.path(sha256))

    def index(self, number: int) -> manifest_mod.Index:
        """The index of generation ``number`` on disk.

        :param number: A generation with a file (:meth:`generation_numbers`).
        :raises OSError: when it cannot be read.
        :raises ManifestError: when it is malformed.
        """
        index = self._indexes.get(number)
        if index is None:
            path = self._generation_path(number)
            with open(path, 'rb') as stream:
                index = manifest_mod.Index.from_json(stream.read(), path)
            self._indexes[number] = index
        return index

    def _generation_path(self, number: int) -> str:
        return os.path.join(self.generations_dir, f'{number:010d}.json')

    def generation_numbers(self) -> list[int]:
        """Generations with a file on disk, oldest first."""
        try:
            names = os.listdir(self.generations_dir)
        except FileNotFoundError:
            return []
        return sorted(int(name[:-5]) for name in names
                      if name.endswith('.json') and name[:-5].isdigit())

    def next_generation(self, current: int) -> int:
        """The number the next published generation must take.

        Takes the generation files into account, not only the current
        generation, so a writer killed between writing a generation and
        pointing ``manifest.json`` at it never reuses its number.

        :param current: The generation being served (0 if none or
            unreadable).
        """
        numbers = self.generation_numbers()
        return max(numbers[-1] if numbers else 0, current) + 1

    def publish(self, manifest: manifest_mod.Manifest,
                verify: bool = True) -> None:
        """Make ``manifest`` the current generation, atomically.

        Its records are stored first (those not stored yet), then its
        index: a reader that sees the index finds every record it names.

        :param manifest: The generation.
        :param verify: Look on disk for every record, even those this
            store wrote or read before (False: only for new ones, so a
            publish costs what changed; the writer verifies after its
            state directory was changed under it).
        """
        self.ensure()
        for name, sha in manifest.record_shas.items():
            record = manifest.modules[name]
            known = not verify and self._records.get(sha) is not None
            if not known and not os.path.exists(self.blobs.path(sha)):
                self.blobs.put(record.blob, sha, wait=False)
            self._records[sha] = record
        # Every blob the index names (sources stored by the walk or a
        # mirror's fetch, records just written) reaches the disk first.
        self.blobs.sync()
        generation_path = self._generation_path(manifest.generation)
        atomic_write(generation_path, manifest.to_json())
        self._indexes[manifest.generation] = manifest.index()
        link = os.path.join(self.state_dir, f'.tmp-current-{os.getpid()}')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.link(generation_path, link)
        os.replace(link, self.current_path)
        _fsync_dir(self.state_dir)

    def without_lost_versions(
            self, modules: dict[str, manifest_mod.ModuleRecord]
    ) -> dict[str, manifest_mod.ModuleRecord]:
        """``modules``, each without the version it serves when a blob of
        that version is gone.

        After the state directory was removed, the writer's scan stored
        every file again, but a module whose current file is broken was
        serving a version whose source is lost: it can no longer be
        served.

        :param modules: Records of the next generation.
        """
        kept = {}
        for name, record in modules.items():
            good = record.good
            shas = [good.sha256, *good.imports.values()] if good else []
            if all(os.path.exists(self.blobs.path(sha))
                   for sha in shas if sha):
                kept[name] = record
                continue
            LOG.error('%s: its last good version was lost with the state '
                      'directory; no longer served', record.path)
            kept[name] = dataclasses.replace(record, good=None)
        return kept

    def commit(self, previous: manifest_mod.Manifest,
               modules: dict[str, manifest_mod.ModuleRecord],
               package_name: str, action_prefix: str,
               keep: int, disabled: tuple[str, ...] | None = None,
               floor: int = 0, force: bool = False,
               full: bool = False) -> manifest_mod.Manifest:
        """Publish ``modules`` as the next generation if they changed.

        Old generations are pruned before the new one is written, so a
        full file system is relieved by the publish itself.

        :param previous: The generation being served.
        :param modules: The records of the next generation.
        :param package_name: Import name the tree was validated under.
        :param action_prefix: Prefix the names were built with.
        :param keep: Generations kept on disk, the new one included.
        :param disabled: Action names not served; by default those of
            ``control/disabled.json`` (:meth:`disabled`).
        :param floor: The highest generation number ever published from
            this state directory, as the writer remembers it: the new one
            is above it even when the files that recorded it are gone.
        :param force: Publish even when the table did not change (to
            restore a ``manifest.json`` that was removed), and store every
            record that is not on disk.
        :param full: Collect every blob no kept generation names
            (:meth:`prune`), not only those of the generation removed.
        :returns: the new manifest, or ``previous`` when nothing changed.
        """
        if disabled is None:
            disabled = self.disabled()
        candidate = manifest_mod.Manifest.build(
            modules, package_name, action_prefix,
            self.next_generation(max(previous.generation, floor)),
            disabled, previous=previous)
        if not force and previous.generation and \
                candidate.same_table(previous):
            return previous
        self.prune(max(keep - 1, 1), also=candidate, full=full)
        self.publish(candidate, verify=force)
        if keep == 1:
            # The prune above kept the served generation, whose blobs must
            # stay until the new one is published.
            self.prune(keep, full=full)
        return candidate

    def prune(self, keep: int,
              also: manifest_mod.Manifest | None = None,
              full: bool = True) -> int:
        """Keep the newest ``keep`` generations and the blobs they use.

        A blob stays while any kept generation serves it (a module's
        record, its source, or the source of an in-tree import of it), so
        an executor can still load a version the engine chose a few
        generations ago.

        :param keep: Generations to keep.
        :param also: A generation about to be published, whose blobs stay.
        :param full: Look at every blob in the store, not only at those
            of the generations removed: also collects what no generation
            ever named (contents read by the walk, then changed again
            before a publish). It lists the whole store, so the daemon
            does it at a full scan, not at every publish.
        :returns: the number of blobs deleted.
        """
        numbers = self.generation_numbers()
        cut = max(len(numbers) - keep, 0)
        stale, kept = numbers[:cut], numbers[cut:]
        candidates: set[str] = set()
        for number in stale:
            if not full:
                candidates |= self._blobs_of(self._index_or_none(number))
            os.unlink(self._generation_path(number))
            self._indexes.pop(number, None)
            self._generation_blobs.pop(number, None)
        referenced: set[str] = set()
        if also is not None:
            # Not stored yet: its records are read from memory.
            referenced |= self._blobs_of_manifest(also)
        for number in kept:
            referenced |= self._blobs_of(self._index_or_none(number))
        self._records = {sha: record for sha, record in self._records.items()
                         if sha in referenced}
        self._record_blobs = {sha: found for sha, found
                              in self._record_blobs.items()
                              if sha in referenced}
        if full or not self._temporaries_removed:
            self._remove_stale_temporaries()
            self._temporaries_removed = True
        if full:
            return self.blobs.collect_garbage(referenced)
        removed = 0
        for sha in candidates - referenced:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blobs.path(sha))
                removed += 1
        return removed

    def _index_or_none(self, number: int) -> manifest_mod.Index | None:
        try:
            return self.index(number)
        except (OSError, exceptions.ManifestError) as exc:
            LOG.error('Ignoring unreadable old generation: %s', exc)
            return None

    def _blobs_of(self, index: manifest_mod.Index | None) -> frozenset:
        """The records an index names and the sources they serve.

        Kept per generation (a generation never changes), so a prune
        costs the generations it removes and adds, not every kept one.
        """
        if index is None:
            return frozenset()
        found = self._generation_blobs.get(index.generation)
        if found is None:
            parts = []
            for name, sha in index.records.items():
                try:
                    parts.append(self._record_blobs_of(
                        sha, lambda n=name, s=sha: self.record(n, s)))
                except exceptions.ManifestError as exc:
                    LOG.error('Ignoring an unreadable record: %s', exc)
                    parts.append(frozenset({sha}))
            found = self._generation_blobs[index.generation] = \
                frozenset().union(*parts)
        return found

    def _blobs_of_manifest(self, current: manifest_mod.Manifest
                           ) -> frozenset:
        """:meth:`_blobs_of` a generation held in memory."""
        found = frozenset().union(*(
            self._record_blobs_of(sha, lambda r=current.modules[name]: r)
            for name, sha in current.record_shas.items()))
        self._generation_blobs[current.generation] = found
        return found

    def _record_blobs_of(self, sha: str, record) -> frozenset:
        """A record's own blob and the sources it names, by its sha256.

        :param sha: The record's sha256.
        :param record: Returns the record, when it is not known yet.
        """
        found = self._record_blobs.get(sha)
        if found is None:
            found = self._record_blobs[sha] = frozenset(
                {sha, *_sources_of(record())})
        return found

    def _remove_stale_temporaries(self) -> None:
        # Left by a writer killed between mkstemp and rename; only the
        # lock holder writes outside control/ (the CLI writes there
        # without the lock), so none of these is in use.
        for directory, dirs, files in os.walk(self.state_dir):
            if directory == self.state_dir and CONTROL in dirs:
                dirs.remove(CONTROL)
            for name in files:
                if name.startswith('.tmp-'):
                    os.unlink(os.path.join(directory, name))


def _sources_of(record: manifest_mod.ModuleRecord) -> set[str]:
    """The source blobs a record names: the version it serves and its
    imports, and the content that failed with what it imported (probed
    again when an import changes, without reading the file again)."""
    found: set[str] = set()
    for attempt in (record.good, record.error):
        if attempt is None or attempt.sha256 is None:
            continue
        found.add(attempt.sha256)
        found.update(s for s in attempt.imports.values() if s)
    return found
