"""The state directory: immutable blobs and the manifest generations.

Layout::

    <state_dir>/blobs/ab/ab12...ef          module sources, named by sha256
    <state_dir>/generations/0000000007.json  one manifest per generation
    <state_dir>/manifest.json               the current generation
    <state_dir>/lock                         held by the one writer
    <state_dir>/daemon.json                  the daemon's own status
    <state_dir>/control/disabled.json        actions disabled by the CLI
    <state_dir>/control/rescan               a full rescan asked by the CLI

Every file is written to a temporary name, fsynced, renamed into place and
its directory fsynced, so a reader (or a writer killed at any moment)
never sees a torn file. ``manifest.json`` is a hard link to the newest
generation file, replaced by rename: a provider's cheap "is there a newer
generation?" check is one ``stat`` of it.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator

from oslo_log import log as logging

from hotload import exceptions
from hotload import manifest as manifest_mod

LOG = logging.getLogger(__name__)
CURRENT = 'manifest.json'
GENERATIONS = 'generations'
BLOBS = 'blobs'
LOCK = 'lock'
STATUS = 'daemon.json'
CONTROL = 'control'
LOCK_POLL_INTERVAL = 0.1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``; readers see the old or new file."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


class BlobStore:
    """Module sources stored under their sha256, never modified.

    :param state_dir: The state directory; blobs live in its ``blobs/``.
    """

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, BLOBS)

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    def put(self, data: bytes) -> str:
        """Store ``data`` if it is not there yet; return its sha256."""
        sha = sha256_hex(data)
        path = self.path(sha)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            atomic_write(path, data, mode=0o444)
        return sha

    def get(self, sha256: str) -> bytes:
        """Read a blob and check it still hashes to its name.

        :raises BlobError: when it is missing or corrupt.
        """
        path = self.path(sha256)
        try:
            with open(path, 'rb') as stream:
                data = stream.read()
        except FileNotFoundError:
            raise exceptions.BlobError(
                f'blob {sha256} is not in {self.root}') from None
        if sha256_hex(data) != sha256:
            raise exceptions.BlobError(
                f'blob {path} does not match its sha256; the state '
                f'directory is corrupt or was modified by hand')
        return data

    def collect_garbage(self, keep: set[str]) -> int:
        """Delete every blob not in ``keep``; return how many went."""
        removed = 0
        if not os.path.isdir(self.root):
            return removed
        for shard in os.listdir(self.root):
            shard_dir = os.path.join(self.root, shard)
            for name in os.listdir(shard_dir):
                if name not in keep:
                    os.unlink(os.path.join(shard_dir, name))
                    removed += 1
        return removed


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

    def ensure(self) -> None:
        """Create the directory layout (the writer calls this)."""
        os.makedirs(self.generations_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.control_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.blobs.root, mode=0o755, exist_ok=True)

    @contextlib.contextmanager
    def writer_lock(self, timeout: float = 0.0) -> Iterator[None]:
        """Hold the state directory's single-writer lock.

        :param timeout: Seconds to wait for a previous holder to go (a
            daemon being restarted), polling.
        :raises StateLockedError: when another process still holds it.
        """
        self.ensure()
        fd = os.open(os.path.join(self.state_dir, LOCK),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise exceptions.StateLockedError(
                            f'another mistral-hotload daemon writes to '
                            f'{self.state_dir}') from None
                    time.sleep(LOCK_POLL_INTERVAL)
            yield
        finally:
            os.close(fd)

    def disabled(self) -> tuple[str, ...]:
        """Action names disabled by the operator (kept across restarts)."""
        try:
            with open(self.disabled_path, 'rb') as stream:
                return tuple(sorted(json.loads(stream.read())))
        except FileNotFoundError:
            return ()
        except ValueError as exc:
            raise exceptions.ManifestError(
                f'{self.disabled_path}: not a JSON list: {exc}') from exc

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

    def load_status(self) -> dict:
        """What the daemon last wrote about itself ({} if nothing)."""
        try:
            with open(self.status_path, 'rb') as stream:
                return json.loads(stream.read())
        except (FileNotFoundError, ValueError):
            return {}

    def load(self) -> manifest_mod.Manifest | None:
        """The current generation, or None when none was published.

        :raises ManifestError: when it exists but cannot be used.
        """
        try:
            with open(self.current_path, 'rb') as stream:
                data = stream.read()
        except FileNotFoundError:
            return None
        return manifest_mod.Manifest.from_json(data, self.current_path)

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

    def publish(self, manifest: manifest_mod.Manifest) -> None:
        """Make ``manifest`` the current generation, atomically."""
        self.ensure()
        generation_path = self._generation_path(manifest.generation)
        atomic_write(generation_path, manifest.to_json())
        link = os.path.join(self.state_dir, f'.tmp-current-{os.getpid()}')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.link(generation_path, link)
        os.replace(link, self.current_path)
        _fsync_dir(self.state_dir)

    def commit(self, previous: manifest_mod.Manifest,
               modules: dict[str, manifest_mod.ModuleRecord],
               package_name: str, action_prefix: str,
               keep: int) -> manifest_mod.Manifest:
        """Publish ``modules`` as the next generation if they changed.

        The operator's disabled actions (:meth:`disabled`) are applied.

        :returns: the new manifest, or ``previous`` when nothing changed.
        """
        candidate = manifest_mod.Manifest.build(
            modules, package_name, action_prefix,
            self.next_generation(previous.generation),
            self.disabled())
        if previous.generation and candidate.same_table(previous):
            return previous
        self.publish(candidate)
        self.prune(keep)
        return candidate

    def prune(self, keep: int) -> int:
        """Keep the newest ``keep`` generations and the blobs they use.

        A blob stays while any kept generation serves it, directly or as
        the in-tree import of another module, so an executor can still
        load a version the engine chose a few generations ago.

        :returns: the number of blobs deleted.
        """
        numbers = self.generation_numbers()
        cut = max(len(numbers) - keep, 0)
        stale, kept = numbers[:cut], numbers[cut:]
        for number in stale:
            os.unlink(self._generation_path(number))
        referenced: set[str] = set()
        for number in kept:
            path = self._generation_path(number)
            try:
                with open(path, 'rb') as stream:
                    generation = manifest_mod.Manifest.from_json(
                        stream.read(), path)
            except exceptions.ManifestError as exc:
                LOG.error('Ignoring unreadable old generation: %s', exc)
                continue
            for module in generation.modules.values():
                if module.good:
                    referenced.add(module.good.sha256)
                    referenced.update(s for s in module.good.imports.values()
                                      if s)
        self._remove_stale_temporaries()
        return self.blobs.collect_garbage(referenced)

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
