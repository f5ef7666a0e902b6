"""Immutable files named by the sha256 of their content, written atomically.

Module sources and module records (:mod:`hotload.manifest`) are stored as
blobs; :mod:`hotload.store` lays them out in the state directory and
decides when they can go.
"""

import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import stat
import tempfile
import threading

from hotload import exceptions
from hotload import manifest as manifest_mod

BLOBS = 'blobs'
is_sha256 = manifest_mod.is_sha256


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data``; readers see the old or new file.

    :param path: The file.
    :param data: Its new content.
    :param mode: Its permission bits.
    :param durable: fsync the file and its directory before returning;
        False leaves that to a later :meth:`BlobStore.sync`.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            if durable:
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def _syncfs():
    """glibc's ``syncfs(2)``, or None where it cannot be had."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


_SYNCFS = _syncfs()


class BlobStore:
    """Module sources and records stored under their sha256, never modified.

    Blobs are written without waiting for the disk, and made durable
    together by :meth:`sync`, which the store calls before it publishes a
    manifest naming them: a first scan of a thousand modules would
    otherwise wait for two thousand ``fsync`` calls (most of its time).

    Many blobs at once (a first scan's sources and records) are written
    by :data:`WRITERS` threads: creating a file costs some 0.5 ms of
    kernel time on the machines this project runs its benchmarks on, and
    several creations overlap (3x faster with four threads there).

    :param state_dir: The state directory; blobs live in its ``blobs/``.
    """

    #: Threads writing blobs that :meth:`put` does not wait for.
    WRITERS = 4

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(state_dir, BLOBS)
        self._lock = threading.Lock()
        #: Blobs were written since the last sync().
        self._unsynced = False
        #: Writes put() did not wait for, by path; see flush().
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._writers: concurrent.futures.ThreadPoolExecutor | None = None

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    def put(self, data: bytes, sha256: str | None = None,
            wait: bool = True) -> str:
        """Store ``data`` if it is not there yet; return its sha256.

        It is durable once :meth:`sync` returned.

        :param data: The content.
        :param sha256: Its sha256, when the caller computed it already.
        :param wait: False returns before the blob is written (by one of
            :data:`WRITERS` threads): it is there once :meth:`flush` (or
            :meth:`sync`) returned, which raises what the write raised.
        """
        sha = sha256 or sha256_hex(data)
        path = self.path(sha)
        try:
            # A crash before the sync may leave a blob short (the rename
            # reached the disk, the data did not): written again.
            present = os.stat(path).st_size == len(data)
        except FileNotFoundError:
            present = False
        if present:
            return sha
        with self._lock:
            self._unsynced = True
            if not wait and path not in self._pending:
                if self._writers is None:
                    self._writers = concurrent.futures.ThreadPoolExecutor(
                        self.WRITERS, thread_name_prefix='hotload-blobs')
                self._pending[path] = self._writers.submit(
                    self._write, path, data)
        if wait:
            self._write(path, data)
        return sha

    def _write(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        # A mkdir that finds the directory there costs as much as one
        # that creates it (a quarter of a blob's write where measured);
        # a stat, a fortieth.
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        atomic_write(path, data, mode=0o444, durable=False)

    def flush(self) -> None:
        """Wait for the writes :meth:`put` did not wait for.

        :raises OSError: the first error of those writes (the others are
            dropped: a blob that failed is written again by the next
            put of it).
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        errors = [future.exception() for future in pending.values()]
        for error in errors:
            if error is not None:
                raise error

    def sync(self) -> None:
        """Make every blob written so far durable, with one ``syncfs`` of
        the store's file system (``sync`` where there is no ``syncfs``).

        :raises OSError: when the file system reports a write error, or
            a write :meth:`put` did not wait for failed.
        """
        self.flush()
        with self._lock:
            if not self._unsynced:
                return
            self._unsynced = False
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            with self._lock:
                self._unsynced = True
            raise
        try:
            if _SYNCFS is None:
                os.sync()
            elif _SYNCFS(fd) != 0:
                error = ctypes.get_errno()
                with self._lock:
                    self._unsynced = True
                raise OSError(error, os.strerror(error), self.root)
        finally:
            os.close(fd)

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
