"""What every part of the harness shares: errors, logging, small file tools.

Standard library only, like the whole harness, so that it runs under any
Python 3.11 before a virtualenv exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The checkout this harness belongs to (installed into the venv).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: The command line script, which the keeper process runs again.
SCRIPT = REPO_ROOT / 'tools' / 'mistral_harness.py'

LOG_TAIL_LINES = 25

#: Type of the progress callbacks every part takes.
Log = Callable[[str], None]


class HarnessError(RuntimeError):
    """Something the harness was asked to do did not happen."""


class ProjectInstallError(HarnessError):
    """``pip install -e`` of this project failed (Mistral itself is fine)."""


def default_log(message: str) -> None:
    """Print a progress line (the default ``log`` everywhere)."""
    print(f'[mistral-harness] {message}', flush=True)


class Step:
    """Logs the start and the duration of one step."""

    def __init__(self, log: Log, what: str) -> None:
        self._log = log
        self._what = what
        self._t0 = 0.0

    def __enter__(self) -> Step:
        self._t0 = time.monotonic()
        self._log(f'{self._what} ...')
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        took = time.monotonic() - self._t0
        state = 'done' if exc_type is None else 'FAILED'
        self._log(f'{self._what}: {state} in {took:.2f}s')


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, indented, for error messages."""
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return f'    ({path}: not there)'
    kept = text.splitlines()[-lines:]
    return '\n'.join(f'    {line}' for line in kept) or '    (empty)'


def rotate(path: Path) -> None:
    """Keep the previous run's file as ``<name>.1`` (one generation)."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(path.name + '.1'))


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, path)


def run_logged(argv: list[str], log_file: Path,
               env: Mapping[str, str] | None = None,
               timeout: float | None = None) -> int:
    """Run ``argv`` with its output appended to ``log_file``.

    :returns: the exit status, -1 after ``timeout``.
    """
    with open(log_file, 'a') as out:
        out.write(f'\n$ {shlex.join(argv)}\n')
        out.flush()
        try:
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env, timeout=timeout,
                check=False)
        except subprocess.TimeoutExpired:
            out.write(f'\n(timed out after {timeout}s)\n')
            return -1
    return proc.returncode
