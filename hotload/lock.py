"""The state directory's single-writer lock.

One daemon (a publisher or a mirror) writes to a state directory; a second
one, started by mistake or while the first is being restarted, waits for
the lock or refuses to start.
"""

import fcntl
import os
import time

from hotload import exceptions

#: Seconds between attempts while waiting for the lock.
LOCK_POLL_INTERVAL = 0.1


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
