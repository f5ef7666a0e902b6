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
#: Size the status file is padded to (see ManifestStore.write_status).
STATUS_SIZE = 16 * 1024
#: Largest control file read.
MAX_CONTROL_FILE = 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HEX_DIGITS = frozenset('0123456789abcdef')


def is_sha256(value: object) -> bool:
    """True for a sha256 as the store names blobs: 64 lowercase hex digits.

    Names from a manifest or a serialized action were written by another
    process; only these can never name a path outside the blob store.
    """
    return (isinstance(value, str) and len(value) == 64
            and set(value) <= _HEX_DIGITS)


def timestamp() -> str:
    """Local time as the status files record it."""
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


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


def _padded_status(status: dict) -> bytes:
    text = json.dumps(status, indent=1)
    if len(text) >= STATUS_SIZE:
        # Only error texts grow without bound: cut the longest.
        status = dict(status, error=str(status.get('error'))[:2000])
        text = json.dumps(status, indent=1)[:STATUS_SIZE - 1]
    return (text + ' ' * (STATUS_SIZE - 1 - len(text)) + '\n').encode()


class WriterLock:
    """The state directory's single-writer lock: an ``flock`` on a file.

    An ``flock`` belongs to the open file, not to the name: if the file
    (or the whole state directory) is removed, the holder keeps a lock
    nobody else sees, and a second writer could take a new one.
    :meth:`problem` tells the holder so.

    :param path: The lock file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (polling).

        :raises StateLockedError: when another process still holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise exceptions.StateLockedError(
                        f'another mistral-hotload daemon writes to '
                        f'{os.path.dirname(self.path)}') from None
                time.sleep(LOCK_POLL_INTERVAL)
        self._fd = fd

    def retake(self) -> None:
        """Lock the file now at :attr:`path` (a new one if it was removed)
        and let go of the old one.

        :raises StateLockedError: when another process holds the new one.
        """
        old, self._fd = self._fd, None
        try:
            self.acquire(0.0)
        except BaseException:
            self._fd = old
            raise
        if old is not None:
            os.close(old)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def problem(self) -> str | None:
        """Why the lock held no longer guards the state directory, or None.
        """
        if self._fd is None:
            return 'the lock is not held'
        held = os.fstat(self._fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return f'{self.path} was removed'
        except OSError as exc:
            return f'{self.path}: {exc.strerror}'
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            return f'{self.path} was replaced'
        return None


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

    def get(self, sha256: str, max_size: int = 64 * 1024 * 1024) -> bytes:
        """Read a blob and check it still hashes to its name.

        The name comes from a manifest or from a serialized action, which
        another process wrote: it must be a sha256 (64 lowercase hex
        digits) so it can only name a file in the store, and that file
        must be a regular file (a FIFO would block the reader, a device
        such as ``/dev/zero`` never end) of a bounded size.

        :param sha256: The blob's name, the sha256 of its content.
        :param max_size: Largest blob read, in bytes; far above any module
            the scanner accepts (``max_file_size``).
        :raises BlobError: when the name is not a sha256, or the blob is
            missing, not a regular file, too large or corrupt.
        """
        import stat  # only here: the one user in this module

        if not is_sha256(sha256):
            raise exceptions.BlobError(
                f'{sha256!r:.100} is not a blob name (64 lowercase hex '
                f'digits)')
        path = self.path(sha256)
        try:
            # No symlink at the last component, and an open that cannot
            # block whatever the file is; fstat then checks what was opened.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            raise exceptions.BlobError(
                f'blob {sha256} is not in {self.root}') from None
        except OSError as exc:
            raise exceptions.BlobError(
                f'cannot open blob {path}: {exc.strerror}') from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise exceptions.BlobError(
                    f'blob {path} is not a regular file; the state '
                    f'directory was modified by hand')
            if st.st_size > max_size:
                raise exceptions.BlobError(
                    f'blob {path} has {st.st_size} bytes, more than the '
                    f'{max_size} a module may have')
            chunks = []
            size = 0
            # Bounded even if the file grows while it is read.
            while size <= max_size:
                chunk = os.read(fd, min(1024 * 1024, max_size + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise exceptions.BlobError(
                f'cannot read blob {path}: {exc.strerror}') from None
        finally:
            os.close(fd)
        data = b''.join(chunks)
        if len(data) > max_size or sha256_hex(data) != sha256:
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
               keep: int, disabled: tuple[str, ...] | None = None,
               floor: int = 0, force: bool = False) -> manifest_mod.Manifest:
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
            restore a ``manifest.json`` that was removed).
        :returns: the new manifest, or ``previous`` when nothing changed.
        """
        if disabled is None:
            disabled = self.disabled()
        candidate = manifest_mod.Manifest.build(
            modules, package_name, action_prefix,
            self.next_generation(max(previous.generation, floor)),
            disabled)
        if not force and previous.generation and \
                candidate.same_table(previous):
            return previous
        self.prune(max(keep - 1, 1), also=candidate)
        self.publish(candidate)
        if keep == 1:
            # The prune above kept the served generation, whose blobs must
            # stay until the new one is published.
            self.prune(keep)
        return candidate

    def prune(self, keep: int,
              also: manifest_mod.Manifest | None = None) -> int:
        """Keep the newest ``keep`` generations and the blobs they use.

        A blob stays while any kept generation serves it, directly or as
        the in-tree import of another module, so an executor can still
        load a version the engine chose a few generations ago.

        :param keep: Generations to keep.
        :param also: A generation about to be published, whose blobs stay.
        :returns: the number of blobs deleted.
        """
        numbers = self.generation_numbers()
        cut = max(len(numbers) - keep, 0)
        stale, kept = numbers[:cut], numbers[cut:]
        for number in stale:
            os.unlink(self._generation_path(number))
        referenced: set[str] = set()
        generations = [also] if also is not None else []
        for number in kept:
            path = self._generation_path(number)
            try:
                with open(path, 'rb') as stream:
                    generations.append(manifest_mod.Manifest.from_json(
                        stream.read(), path))
            except (OSError, exceptions.ManifestError) as exc:
                LOG.error('Ignoring unreadable old generation: %s', exc)
        for generation in generations:
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
