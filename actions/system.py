"""Run a local command on the Mistral executor host.

There is no shell: the command line is split with :mod:`shlex` and run with
:mod:`subprocess` from an argument list, so variables, globs, redirections,
``;`` and ``&&`` are not interpreted. One pipe (``cmd1 | cmd2``) is
supported, as in the seed. Unquoted ``;``, ``&``, ``<``, ``>`` and a second
``|`` are refused with an error instead of being passed on literally; quote
them to pass them as arguments (``awk '$1 > 5'``).

Commands run as the executor's user with a minimal environment (``PATH``,
``HOME``, ``LANG``), not Mistral's own, so nothing from the service's
environment leaks into a command's output.

Security: any user allowed to run workflows can run this action, i.e. run
commands as the Mistral executor's user on the executor host. Deploy this
module only where every workflow author may do that.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from typing import IO
from typing import Any

from mistral_lib import actions
from mistral_lib.exceptions import ActionException

#: Default seconds a command (or pipeline) may run.
DEFAULT_TIMEOUT = 60

_FORBIDDEN = ";&<>"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_command(cmd: str) -> list[list[str]]:
    """Split a command line into at most two argument lists (one pipe).

    :param cmd: the command line, e.g. ``"ls -l /tmp | grep log"``.
    :returns: one argument list per command of the pipeline.
    :raises ActionException: on an empty command, unbalanced quotes, more
        than one pipe or an unquoted shell operator.
    """
    if not isinstance(cmd, str) or not cmd.strip():
        raise ActionException("cmd must be a non-empty string")
    segments = _split_on_pipes(cmd)
    if len(segments) > 2:
        raise ActionException(f"at most one '|' is supported, got: {cmd}")
    argvs = []
    for segment in segments:
        try:
            argv = shlex.split(segment)
        except ValueError as exc:
            raise ActionException(f"cannot parse {cmd!r}: {exc}") from None
        if not argv:
            raise ActionException(f"empty command around '|' in: {cmd}")
        argvs.append(argv)
    return argvs


def _split_on_pipes(cmd: str) -> list[str]:
    """Split on unquoted, unescaped ``|``; refuse other shell operators."""
    segments: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    pipe_at = -2
    for index, char in enumerate(cmd):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "|":
            if pipe_at == index - 1:
                raise ActionException(
                    "shell operator '||' is not supported (commands run "
                    f"without a shell): {cmd}"
                )
            pipe_at = index
            segments.append("".join(current))
            current = []
            continue
        elif char in _FORBIDDEN:
            raise ActionException(
                f"shell operator {char!r} is not supported (commands run "
                f"without a shell); quote it to pass it literally: {cmd}"
            )
        current.append(char)
    segments.append("".join(current))
    return segments


def run_pipeline(argvs: list[list[str]], timeout: float | None) -> str:
    """Run one command, or two joined by a pipe, and return stdout as text.

    The exit status is the last command's; the first one failing also
    fails the pipeline, unless it was only stopped by SIGPIPE because the
    second one stopped reading (``yes | head -1``). Each command runs in its
    own session; on a timeout or error every process it started is killed.

    :param argvs: argument lists, as returned by :func:`parse_command`.
    :param timeout: seconds before all processes are killed; ``None`` for
        no limit.
    :returns: the last command's standard output, decoded as UTF-8 (bad
        bytes replaced).
    :raises ActionException: command not found, timeout, non-zero exit
        (with exit code and stderr).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    procs: list[subprocess.Popen[bytes]] = []
    errs: list[IO[bytes]] = []
    done = False
    try:
        stdin: Any = subprocess.DEVNULL
        for i, argv in enumerate(argvs):
            err = tempfile.TemporaryFile()
            errs.append(err)
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=_environment(),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ActionException(
                    f"cannot run {argv[0]!r}: {exc}"
                ) from None
            procs.append(proc)
            if i:
                stdin.close()  # only the second command reads the pipe now
            stdin = proc.stdout
        try:
            out, _ = procs[-1].communicate(timeout=_left(deadline))
            for proc in procs[:-1]:
                proc.wait(timeout=_left(deadline))
        except subprocess.TimeoutExpired:
            raise ActionException(
                f"command timed out after {timeout:g}s: {_show(argvs)}"
            ) from None
        for i, proc in enumerate(procs):
            sigpipe = i < len(procs) - 1 and proc.returncode == -signal.SIGPIPE
            if proc.returncode != 0 and not sigpipe:
                raise ActionException(
                    f"command {shlex.join(argvs[i])!r} exited with code "
                    f"{proc.returncode}; stderr: {_read(errs[i]) or '(empty)'}"
                )
        done = True
        return out.decode("utf-8", errors="replace")
    finally:
        for proc in procs:
            if not done:
                _kill_group(proc)
            if proc.stdout:
                proc.stdout.close()
        for err in errs:
            err.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a command and whatever it started (its own session/group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _read(err: IO[bytes], limit: int = 4096) -> str:
    err.seek(0)
    return err.read(limit).decode("utf-8", errors="replace").strip()


def _show(argvs: list[list[str]]) -> str:
    return " | ".join(shlex.join(argv) for argv in argvs)


def _environment() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }


class Exec(actions.Action):
    """Run a command (at most one pipe, no shell) and return its output.

    The output is the last command's standard output as text. A non-zero
    exit fails the action with the exit code and the command's stderr; so
    does running longer than ``timeout`` seconds (the processes are
    killed).

    :param cmd: command line, e.g. ``"df -h /"`` or ``"ps aux | grep ssh"``.
    :param timeout: seconds the command may run; 0 or null for no limit.
    """

    def __init__(self, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.cmd = cmd
        self.timeout = timeout

    def run(self, context: Any) -> str:
        argvs = parse_command(self.cmd)
        try:
            timeout = float(self.timeout or 0) or None
        except (TypeError, ValueError):
            raise ActionException(
                f"timeout must be a number, got {self.timeout!r}"
            ) from None
        if timeout is not None and timeout < 0:
            raise ActionException(f"timeout must be >= 0, got {timeout:g}")
        return run_pipeline(argvs, timeout)
