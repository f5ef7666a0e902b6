"""The probe's guard: the process between the daemon and the import.

The daemon starts guards (forked by the forkserver) and hands each one
module after another. The guard never runs module code; for every module
it forks a fresh *worker* that imports that module
(hotload._probe_child.run), exits after it, and answers for everything
below it:

- It is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so processes the
  module starts stay in its subtree even when they double-fork or call
  ``setsid()``; killing a process group, as the daemon did before, misses
  those. When the worker ends, every descendant still running is listed
  (the import left it behind: an error) and killed, and reaped.
- It owns the timeout: on ``probe_timeout`` it asks the worker for a stack
  dump (SIGUSR1), kills it, then its descendants. Holding the timeout here
  rather than in the daemon means the cleanup happens even when the daemon
  itself dies mid-probe.
- SIGTERM (:meth:`hotload.probe.Probe.cancel`) kills the worker and its
  descendants at once.

It reports each module as a small JSON document on its pipe: whether the
import timed out or was cancelled, the worker's exit code, and the
processes left behind. Why one guard for many modules: starting a process
through multiprocessing's forkserver costs the daemon and the forkserver
some 8 ms; a fork of the guard, less than 2. The tree's sources come once
per guard, not once per module (decoding them was 2 ms a probe). Between
modules nothing runs below the guard, and it never runs module code, so
no module's import sees another's.
"""

import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import time
import traceback
from multiprocessing import connection
from typing import Any

from hotload import _probe_child
from hotload import _probe_effects

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Longest the guard spends killing descendants (a fork bomb can keep it
#: busy; SIGKILL itself does not wait).
KILL_LIMIT = 2.0
#: Seconds an idle guard waits for its next module before it exits.
IDLE_LIMIT = 5.0
#: The real os._exit: the worker's module may replace the attribute.
_exit = os._exit
_libc = ctypes.CDLL(None, use_errno=True)
_WATCHED = {signal.SIGCHLD, signal.SIGTERM}
_CANCELLED = object()


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f'prctl({option}): {os.strerror(errno)}')


def run(request: dict[str, Any], conn: connection.Connection) -> None:
    """Entry point of a guard process; see the module docstring.

    :param request: What every probe of this guard shares (see
        :class:`hotload.probe.Probe`): ``timeout``, ``stack_dump_grace``
        and what the worker reads.
    :param conn: The daemon's end sends one command per module (its name,
        its output and result paths, and the tree's sources when they
        changed), or per batch of modules (``batch``: those for each, see
        :func:`hotload._probe_child.run_batch`; one worker imports them
        in turn, within one module's timeout); this end answers each with
        the report, as JSON.
    """
    # A session of its own: the daemon's last resort, if this process
    # stops answering, is to kill the session's process group.
    os.setsid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # Blocked, then taken with sigtimedwait: a worker's exit, a cancel and
    # the timeout are all waited for in one call, without handlers that
    # could interrupt the cleanup.
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    snapshot = None
    while True:
        command = _next_command(conn)
        if command is None:
            return
        if 'sources' in command:
            snapshot = command['snapshot']
            _probe_child.use_sources(command.pop('sources'))
            # What the guard holds now is shared with every worker it
            # forks: out of the collector's sight, no worker's collection
            # touches (and so copies) those pages.
            gc.freeze()
        if command.get('snapshot') != snapshot:
            return  # the daemon lost track of this guard's sources
        report = _probe({**request, **command}, conn.fileno())
        try:
            conn.send_bytes(json.dumps(report).encode())
        except OSError:
            return  # the daemon is gone; what was below is cleaned up
        if report['cancelled']:
            return


def _next_command(conn: connection.Connection) -> dict[str, Any] | None:
    """The next command; None at the end (the daemon closed its end, or
    died, or let this guard idle for IDLE_LIMIT)."""
    # Idle, nothing runs below this process: a cancel (SIGTERM) may end
    # it at once, also one sent while the last probe was finishing.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        if not conn.poll(IDLE_LIMIT):
            return None
        # Pickled by the daemon, the only other end of this pipe (the
        # worker closes its copy before running anything).
        return conn.recv()
    except (EOFError, OSError):
        return None
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _probe(request: dict[str, Any], conn_fd: int) -> dict[str, Any]:
    """Fork a worker for ``request['module']``, wait for it, clean up."""
    guard = os.getpid()
    worker = os.fork()
    if worker == 0:
        _work(request, guard, conn_fd)
    report = {'timed_out': False, 'cancelled': False, 'leftover': []}
    status = _wait(worker, time.monotonic() + request['timeout'])
    if status is None:
        report['timed_out'] = True
        # The worker writes where it is stuck to its output file.
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGUSR1)
        status = _wait(worker, time.monotonic()
                       + request['stack_dump_grace'])
    if status is _CANCELLED:
        report['cancelled'] = True
    if not isinstance(status, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        _, status = os.waitpid(worker, 0)
    report['worker_exitcode'] = os.waitstatus_to_exitcode(status)
    if not report['timed_out'] and not report['cancelled']:
        report['leftover'] = running_descendants(guard)
    kill_descendants()
    return report


def _work(request: dict[str, Any], guard: int, conn_fd: int) -> None:
    """The worker: import the module, then exit without running any
    interpreter shutdown (threads the module left must not hold it)."""
    code = 1
    try:
        # The module's code must not talk to the daemon in the guard's
        # name (forge the report of a later module, say).
        os.close(conn_fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        # If the guard dies, so does the import.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == guard:
            if 'batch' in request:
                _probe_child.run_batch(request)
            else:
                _probe_child.run(request)
            code = 0
    except BaseException:  # noqa: BLE001 - report and exit, whatever it is
        with contextlib.suppress(Exception):
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
    finally:
        _exit(code)


def _wait(worker: int, deadline: float):
    """The worker's wait status; None at the deadline; or _CANCELLED."""
    while True:
        pid, status = os.waitpid(worker, os.WNOHANG)
        if pid:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # SIGCHLD also comes from orphans the guard adopted: wait again.
        info = signal.sigtimedwait(_WATCHED, remaining)
        if info is not None and info.si_signo == signal.SIGTERM:
            return _CANCELLED


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of any of its threads)."""
    found = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f'/proc/{pid}/task'):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f'/proc/{pid}/task/{task}/children') as stream:
                found += [int(child) for child in stream.read().split()]
    return found


def _stat(pid: int) -> dict[str, Any] | None:
    try:
        with open(f'/proc/{pid}/stat') as stream:
            text = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = text[text.index('(') + 1:text.rindex(')')]
    fields = text[text.rindex(')') + 2:].split()
    # state ppid pgrp session ...
    return {'pid': pid, 'name': name, 'state': fields[0],
            'pgid': int(fields[2]), 'sid': int(fields[3])}


def running_descendants(pid: int) -> list[dict[str, Any]]:
    """Every process below ``pid`` that has not exited, parents first.

    :param pid: Root of the subtree (not listed itself).
    """
    found = []
    pending = children(pid)
    while pending:
        child = pending.pop(0)
        stat = _stat(child)
        if stat is None:
            continue
        if stat['state'] != 'Z':
            del stat['state']
            found.append(stat)
        pending += children(child)
    return found


def kill_descendants() -> None:
    """Kill and reap every process below this one (a subreaper).

    Only direct children are signalled: no one else can reap them, so
    their PIDs cannot have been reused. Killing them hands their own
    children to this process, and the next round kills those.
    """
    deadline = time.monotonic() + KILL_LIMIT
    me = os.getpid()
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return  # nothing below this process any more
        if time.monotonic() > deadline:
            return
        for child in children(me):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        signal.sigtimedwait({signal.SIGCHLD}, 0.05)


if _probe_child.IN_FORKSERVER:
    # The forkserver imports this module last of all it preloads. Frozen:
    # a collection in a guard or a worker then leaves the preloaded
    # modules' pages alone, shared with the forkserver (copy-on-write).
    _probe_effects.prepare()
    gc.freeze()
