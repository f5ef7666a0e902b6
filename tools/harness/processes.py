"""Processes by PID: who belongs to a server, how to end them all, ports.

Every server is started as the leader of its own session; its family is
found through /proc (session, parent links) and checked by start time, so
that a reused PID is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import time
from collections.abc import Callable
from collections.abc import Mapping

from .common import HarnessError
from .common import Log
from .common import default_log


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start time) of ``pid``, None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may itself contain ')' or spaces.
    fields = raw[raw.rindex(')') + 2:].split()
    # fields[0] is field 3 of proc(5): state, ppid, pgrp, session, ...
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def all_pids() -> list[int]:
    """Every PID in /proc now."""
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def is_alive(pid: int, starttime: int | None = None) -> bool:
    """True when ``pid`` runs (zombies are dead) and started at starttime."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ('Z', 'X'):
        return False
    return starttime is None or stat[3] == starttime


def family(roots: Mapping[int, int]) -> set[int]:
    """Live processes belonging to the given roots ({pid: starttime}).

    A root counts while its start time matches (so a reused PID is never
    touched). Members are: the roots, every process in their sessions (each
    server was started as a session leader, and its forked workers stay in
    that session even when reparented), and every descendant of either.
    """
    live_roots = {pid for pid, st in roots.items() if is_alive(pid, st)}
    # A root that exited (gone, or a zombie) still names its session; one
    # whose PID now belongs to another process does not.
    sessions = set()
    for pid, starttime in roots.items():
        stat = proc_stat(pid)
        if stat is None or stat[3] == starttime:
            sessions.add(pid)
    stats = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[0] not in ('Z', 'X'):
            stats[pid] = stat
    members = set(live_roots)
    members.update(pid for pid, st in stats.items() if st[2] in sessions)
    grew = True
    while grew:
        children = {pid for pid, st in stats.items()
                    if st[1] in members and pid not in members}
        grew = bool(children)
        members |= children
    members.discard(os.getpid())
    return members


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each PID; one already gone is no error."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate_processes(roots: Mapping[int, int], *,
                        term_timeout: float = 15.0,
                        kill_timeout: float = 10.0,
                        reap: Callable[[], None] = lambda: None,
                        log: Log = default_log) -> None:
    """End the given processes and everything that belongs to them.

    ``roots`` maps PID to start time (field 22 of /proc/PID/stat). SIGTERM
    goes once to every member of the family (see ``family``), which is
    recomputed on each poll so that a worker forked meanwhile gets it too;
    whatever still runs after ``term_timeout`` gets SIGKILL. ``reap`` is
    called on each poll to collect our own exited children.

    :raises HarnessError: if anything is still alive after SIGKILL.
    """
    members: set[int] = set()
    phases = ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout))
    for sig, timeout in phases:
        members = family(roots)
        if not members:
            return
        if sig == signal.SIGKILL:
            log(f'still running {term_timeout:g}s after SIGTERM, sending '
                f'SIGKILL: {sorted(members)}')
        signalled: set[int] = set()
        deadline = time.monotonic() + timeout
        while members:
            signal_all(members - signalled, sig)
            signalled |= members
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
            reap()
            members = family(roots)
        if not members:
            return
    raise HarnessError(f'processes survived SIGKILL: {sorted(members)}')


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for prctl."""
    # Loaded once in the parent: no dlopen() between fork and exec.
    return ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int) -> None:
    """prctl(2) with one argument; OSError on failure."""
    if libc().prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f'prctl({option}, {arg})')


def die_with_parent() -> None:
    """In a forked child: get SIGKILL when the parent goes away."""
    parent = os.getppid()
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port nothing listens on now (for the API)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]



def become_subreaper() -> None:
    """Adopt orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    prctl(36, 1)


def refuses_connections(port: int, host: str = '127.0.0.1') -> bool:
    """True when nothing listens on ``host:port`` (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False
