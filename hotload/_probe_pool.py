"""The daemon's side of the probe's guards: start, reuse, stop them.

A guard (hotload._probe_guard) probes one module after another, each in a
fresh worker it forks. Starting it through multiprocessing's forkserver is
most of what a probe used to cost the daemon (about 8 ms of some 40), so a
scan reuses guards: :class:`GuardPool` keeps the idle ones of the latest
snapshot of the tree, and a probe takes one, or starts one when none is
idle. A scan of ``probe_workers`` threads then starts about that many
guards, and a guard receives the tree's sources once.

A guard left idle exits by itself after
:data:`hotload._probe_guard.IDLE_LIMIT`; one whose snapshot is outdated
is told to go when the next snapshot comes.
"""

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import connection
from typing import Any

from hotload import _probe_guard

#: Largest guard report accepted (its list of leftover processes).
REPORT_LIMIT = 1024 * 1024


class GuardDied(Exception):
    """The guard ended without a report; see :attr:`exitcode`.

    :param exitcode: The guard's exit code (negative: killed by a signal).
    :param idle: True when it ended before it took the module (idle
        limit, killed while idle): the module may go to another guard.
    """

    def __init__(self, exitcode: int | None, idle: bool) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode
        self.idle = idle


class Guard:
    """One guard process and the daemon's end of its pipe.

    Signalled through a pidfd where there is one, so a signal never
    reaches another process that took over a reused PID.

    :param context: The forkserver context.
    :param request: What every probe of this guard shares.
    :param name: Process name, for ``ps``.
    """

    def __init__(self, context: multiprocessing.context.BaseContext,
                 request: dict[str, Any], name: str) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_probe_guard.run,
                                       args=(request, theirs), name=name,
                                       daemon=True)
        try:
            self.process.start()
        finally:
            theirs.close()
        #: The snapshot whose sources the guard holds (see GuardPool).
        self.snapshot: int | None = None
        #: Modules it probed: 0 is a guard that never answered yet.
        self.probed = 0
        self.idle_since = time.monotonic()
        self._pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.process.pid)

    @property
    def pid(self) -> int:
        """The guard's process ID."""
        return self.process.pid

    def send(self, command: dict[str, Any]) -> None:
        """Hand the guard its next module.

        :param command: Module, paths, and the sources when the guard does
            not hold this snapshot yet.
        :raises GuardDied: when the guard is gone (then it never saw the
            module: ``idle`` is true).
        """
        if connection.wait([self.process.sentinel], 0):
            raise self._died(idle=True)
        try:
            self.conn.send(command)
        except (OSError, ValueError):
            raise self._died(idle=True) from None

    def report(self, should_stop: Callable[[], bool]) -> dict | None:
        """The guard's report of its module; None when ``should_stop``
        (polled every 0.1 s) said so and the guard was killed.

        :param should_stop: True when the daemon must kill the guard
            (cancelled and past the grace, or long past the timeout).
        :raises GuardDied: when the guard ended without a report.
        """
        sentinel = self.process.sentinel
        while True:
            ready = connection.wait([self.conn, sentinel], 0.1)
            if self.conn in ready:
                try:
                    data = self.conn.recv_bytes(REPORT_LIMIT)
                except (EOFError, OSError):
                    raise self._died() from None
                self.probed += 1
                self.idle_since = time.monotonic()
                # JSON, not pickle: the daemon never runs what a process
                # this close to module code could have crafted.
                try:
                    report = json.loads(data)
                except ValueError:
                    report = None
                return report if isinstance(report, dict) else {}
            if sentinel in ready:
                raise self._died()
            if should_stop():
                self.kill()
                self.process.join()
                return None

    def _died(self, idle: bool = False) -> GuardDied:
        self.process.join(1.0)
        exitcode = self.process.exitcode
        # A guard exits with 0 only between modules (idle too long, or
        # told to go); a guard killed once it had the module is the
        # module's doing, as it can signal its parent.
        return GuardDied(exitcode, idle=idle or exitcode == 0)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the guard if it still runs.

        :param signum: The signal.
        """
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            elif self.process.exitcode is None:
                os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """Kill the guard and its process group (its session's leader).

        The guard's own cleanup does not run then; its subreaper role
        goes with it, so setsid'd descendants may escape. Only for a
        guard that stopped answering.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Let the guard go: it exits when it reads the end of its pipe."""
        with contextlib.suppress(OSError):
            self.conn.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)


class GuardPool:
    """The idle guards of the latest snapshot, and all guards running.

    Thread-safe.

    :param start: Starts a new guard.
    """

    def __init__(self, start: Callable[[], Guard]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._idle: list[Guard] = []
        self._snapshot: int | None = None
        #: Every guard started and not closed, by PID (for cancel).
        self.running: dict[int, Guard] = {}

    def prestart(self, count: int) -> None:
        """Start guards until ``count`` are idle, for the next snapshot.

        Starting the forkserver and a guard takes some 0.4 s; started
        while a scan walks the tree, it costs that scan nothing.

        :param count: Idle guards wanted.
        """
        with self._lock:
            missing = count - len(self._idle)
        for _ in range(missing):
            guard = self._start()
            with self._lock:
                self.running[guard.pid] = guard
                self._idle.append(guard)

    def take(self, snapshot: int) -> Guard:
        """An idle guard (one that holds ``snapshot``, if any), or a new
        one.

        :param snapshot: The snapshot the probe imports from.
        """
        stale = []
        with self._lock:
            if snapshot != self._snapshot:
                # A new snapshot: the guards of the old one go; those
                # that hold none yet serve it.
                stale = [g for g in self._idle if g.snapshot is not None]
                self._idle = [g for g in self._idle if g.snapshot is None]
                self._snapshot = snapshot
            now = time.monotonic()
            guard = None
            while self._idle:
                candidate = self._idle.pop()
                # Close to its idle limit, it may be exiting: not reused.
                if now - candidate.idle_since < _probe_guard.IDLE_LIMIT / 2:
                    guard = candidate
                    break
                stale.append(candidate)
        for old in stale:
            self.close(old)
        if guard is None:
            guard = self._start()
            with self._lock:
                self.running[guard.pid] = guard
        return guard

    def give_back(self, guard: Guard, snapshot: int) -> None:
        """``guard`` answered and may probe the next module.

        :param guard: From :meth:`take`.
        :param snapshot: The snapshot it holds now.
        """
        with self._lock:
            if snapshot == self._snapshot:
                self._idle.append(guard)
                return
        self.close(guard)

    def close(self, guard: Guard) -> None:
        """Stop using ``guard`` (it exits on its own, or was killed).

        :param guard: From :meth:`take`.
        """
        with self._lock:
            self.running.pop(guard.pid, None)
            with contextlib.suppress(ValueError):
                self._idle.remove(guard)
        guard.close()

    def close_all(self) -> None:
        """Let every idle guard go."""
        with self._lock:
            idle, self._idle = self._idle, []
        for guard in idle:
            self.close(guard)

    def all(self) -> list[Guard]:
        """Every guard running, idle or not."""
        with self._lock:
            return list(self.running.values())
