#!/usr/bin/env python3
"""Run a real OpenStack Mistral 23 on this machine, for tests and for trying.

Standard library only, so that it runs under any Python 3.11 before a
virtualenv exists. It is both a command line tool and a module::

    tools/ensure-services                     # RabbitMQ + PostgreSQL
    python3 tools/mistral_harness.py up       # venv, database, 3 servers
    eval "$(python3 tools/mistral_harness.py env)"
    mistral action-list
    python3 tools/mistral_harness.py down

and, from a pytest fixture::

    from mistral_harness import MistralHarness

    with MistralHarness(venv, tmp_path) as mistral:
        mistral.run_workflow(definition, 'my_wf', {'x': 1})

What ``up`` (``MistralHarness.start``) does:

1. creates or reuses a virtualenv with Mistral 23 from PyPI,
   python-mistralclient, psycopg2-binary and (unless told not to) this
   project installed in editable mode; a marker file in the venv records
   what was installed, so a warm venv costs nothing;
2. creates a fresh PostgreSQL database with a unique name, tagged with a
   comment so that only databases this harness made are ever dropped;
3. writes ``mistral.conf`` in the work directory: authentication off, API on
   a free port of 127.0.0.1, logs in files, and RabbitMQ topics and control
   exchange of its own, so that several harnesses share one broker without
   seeing each other's messages;
4. runs ``mistral-db-manage upgrade head`` and ``populate``;
5. starts ``mistral-server --server api``, ``engine`` and ``executor`` as
   three processes, each the leader of its own session, and records their
   PIDs in a state file in the work directory;
6. waits until the API answers ``GET /v2/actions`` with 200, the engine
   and the executor have logged that they listen, and a workflow running
   ``std.echo`` and ``std.noop`` completes with the expected output.

``down`` (``MistralHarness.stop``) ends every process of the three sessions
(masters, their forked workers, anything reparented) with SIGTERM, then
SIGKILL after a deadline, checks that none is left, and drops the database.

The servers get SIGKILL if their parent dies (PR_SET_PDEATHSIG), so a
killed test run leaves no Mistral running; ``prune`` drops the databases
such runs leave. From the command line the parent is a small keeper
process (see ``_cmd_up``), so that ``up`` can return.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What the venv gets, besides the project itself. The two upper caps are
#: guard rails, not fixes: Mistral 23.0.0 was verified here with
#: SQLAlchemy 2.1.9 and oslo.db 18.1.1 (the newest releases), and those are
#: the two libraries whose major releases have broken Mistral before.
MISTRAL_REQUIREMENTS: tuple[str, ...] = (
    'mistral>=23,<24',
    'python-mistralclient',
    'psycopg2-binary',
    'SQLAlchemy>=2.0,<2.2',
    'oslo.db<19',
)

#: Files whose content decides how the project installs (entry points!).
PROJECT_INSTALL_FILES: tuple[str, ...] = (
    'setup.cfg', 'setup.py', 'requirements.txt', 'pyproject.toml')

SERVERS: tuple[str, ...] = ('api', 'engine', 'executor')

#: Log line each RPC server writes once its queues are declared. A message
#: published to a topic before its queue exists is dropped by RabbitMQ, so
#: the smoke workflow is only submitted after both appear.
_STARTED_LINES: dict[str, str] = {
    'engine': 'Engine server started.',
    'executor': 'Executor server started.',
}

#: Variables that would make python-mistralclient try Keystone.
_AUTH_ENV_VARS: tuple[str, ...] = (
    'OS_AUTH_URL', 'OS_AUTH_TOKEN', 'OS_TOKEN', 'OS_AUTH_TYPE',
    'OS_USERNAME', 'OS_PASSWORD', 'OS_CLOUD', 'OS_PROJECT_NAME',
    'OS_PROJECT_ID', 'OS_TENANT_NAME', 'OS_TENANT_ID',
    'MISTRAL_AUTH_TYPE',
)

#: Read by Mistral itself as default config file/dir: never inherited.
_MISTRAL_ENV_VARS: tuple[str, ...] = (
    'MISTRAL_CONFIG_FILE', 'MISTRAL_CONFIG_DIR')

STATE_FILE = 'harness-state.json'
VENV_MARKER = 'mistral-harness.json'
DB_COMMENT_PREFIX = 'created by mistral-hotload tools/mistral_harness.py'

SMOKE_WORKFLOW_NAME = 'mistral_harness_smoke'
SMOKE_WORKFLOW = f"""---
version: '2.0'
{SMOKE_WORKFLOW_NAME}:
  input:
    - message
  tasks:
    echo:
      action: std.echo output=<% $.message %>
      publish:
        echoed: <% task().result %>
      on-success: noop
    noop:
      action: std.noop
  output:
    echoed: <% $.echoed %>
"""

_NAME_RE = re.compile(r'^[a-z][a-z0-9_]{0,62}$')
_COUNTER = itertools.count(1)
_LOG_TAIL_LINES = 25


class HarnessError(RuntimeError):
    """Something the harness was asked to do did not happen."""


class ProjectInstallError(HarnessError):
    """``pip install -e`` of this project failed (Mistral itself is fine)."""


def _default_log(message: str) -> None:
    print(f'[mistral-harness] {message}', flush=True)


def default_venv() -> Path:
    """Where the venv lives unless told otherwise.

    ``$MISTRAL_HARNESS_VENV``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/mistral-hotload/mistral23-venv``: outside the repository, kept
    between runs so that only the first ``up`` pays for the install.
    """
    if os.environ.get('MISTRAL_HARNESS_VENV'):
        return Path(os.environ['MISTRAL_HARNESS_VENV'])
    cache = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(cache) / 'mistral-hotload' / 'mistral23-venv'


def default_workdir() -> Path:
    """Work directory of the command line tool unless told otherwise.

    ``$MISTRAL_HARNESS_WORKDIR``, else ``mistral-harness-<uid>`` in the
    temporary directory: a fixed place, so that ``down``, ``status`` and
    ``env`` find what ``up`` started.
    """
    if os.environ.get('MISTRAL_HARNESS_WORKDIR'):
        return Path(os.environ['MISTRAL_HARNESS_WORKDIR'])
    return Path(tempfile.gettempdir()) / f'mistral-harness-{os.getuid()}'


class _Step:
    """Logs the start and the duration of one step."""

    def __init__(self, log: Callable[[str], None], what: str) -> None:
        self._log = log
        self._what = what
        self._t0 = 0.0

    def __enter__(self) -> _Step:
        self._t0 = time.monotonic()
        self._log(f'{self._what} ...')
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        took = time.monotonic() - self._t0
        state = 'done' if exc_type is None else 'FAILED'
        self._log(f'{self._what}: {state} in {took:.2f}s')


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return f'    ({path}: not there)'
    kept = text.splitlines()[-lines:]
    return '\n'.join(f'    {line}' for line in kept) or '    (empty)'


def _rotate(path: Path) -> None:
    """Keep the previous run's file as ``<name>.1`` (one generation)."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(path.name + '.1'))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, path)


def _run_logged(argv: list[str], log_file: Path,
                env: Mapping[str, str] | None = None,
                timeout: float | None = None) -> int:
    """Run ``argv`` with its output appended to ``log_file``."""
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


# --------------------------------------------------------------------------
# The virtualenv
# --------------------------------------------------------------------------

def _project_fingerprint(root: Path) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode() + b'\0')
    for name in PROJECT_INSTALL_FILES:
        path = root / name
        if path.exists():
            digest.update(name.encode() + b'\0' + path.read_bytes() + b'\0')
    return digest.hexdigest()


def ensure_venv(venv: Path, *, install_project: bool = True,
                python: str | None = None,
                extra_requirements: tuple[str, ...] = (),
                project_root: Path = REPO_ROOT,
                log: Callable[[str], None] = _default_log) -> Path:
    """Create or reuse a virtualenv with Mistral 23 in it.

    A marker file in the venv records the requirement set and the
    fingerprint of the project's packaging files; when they still match,
    nothing is installed. The project is installed in editable mode, so code
    changes need no reinstall; a change to setup.cfg (entry points) does,
    and the fingerprint notices it. Concurrent callers are serialised by a
    lock file next to the venv.

    :returns: the venv's python.
    :raises ProjectInstallError: if only ``pip install -e`` of the project
        failed; Mistral itself is installed and marked by then, so a retry
        with ``install_project=False`` is fast.
    """
    venv = Path(venv).absolute()
    vpython = venv / 'bin' / 'python'
    requirements = sorted(set(MISTRAL_REQUIREMENTS) | set(extra_requirements))
    lock = venv.parent / f'.{venv.name}.lock'
    marker_path = venv / VENV_MARKER
    pip_log = venv.parent / f'{venv.name}-pip.log'
    with _flock(lock):
        marker: dict[str, Any] = {}
        if marker_path.exists() and vpython.exists():
            with contextlib.suppress(ValueError, OSError):
                marker = json.loads(marker_path.read_text())
        changed = False
        if not vpython.exists():
            with _Step(log, f'creating virtualenv {venv}'):
                subprocess.run(
                    [python or sys.executable, '-m', 'venv', str(venv)],
                    check=True, stdin=subprocess.DEVNULL)
        if marker.get('requirements') != requirements:
            with _Step(log, 'pip install ' + ' '.join(requirements)
                       + f' (log: {pip_log})'):
                code = _run_logged(
                    [str(vpython), '-m', 'pip', 'install',
                     '--disable-pip-version-check', *requirements],
                    pip_log)
                if code != 0:
                    raise HarnessError(
                        f'pip install of Mistral failed (exit {code}); '
                        f'end of {pip_log}:\n{_tail(pip_log)}')
            marker = {'requirements': requirements}
            _write_json_atomic(marker_path, marker)
            changed = True
        if install_project:
            fingerprint = _project_fingerprint(project_root)
            if marker.get('project') != fingerprint:
                with _Step(log, f'pip install -e {project_root}'):
                    code = _run_logged(
                        [str(vpython), '-m', 'pip', 'install',
                         '--disable-pip-version-check',
                         '-e', str(project_root), *requirements],
                        pip_log)
                    if code != 0:
                        raise ProjectInstallError(
                            f'pip install -e {project_root} failed (exit '
                            f'{code}); Mistral itself is installed. Use '
                            f'--no-project (install_project=False) to run '
                            f'without the project. End of {pip_log}:\n'
                            f'{_tail(pip_log)}')
                marker['project'] = fingerprint
                _write_json_atomic(marker_path, marker)
                changed = True
        if changed:
            freeze = subprocess.run(
                [str(vpython), '-m', 'pip', 'freeze',
                 '--disable-pip-version-check'],
                capture_output=True, text=True, check=False)
            (venv / 'mistral-harness-freeze.txt').write_text(freeze.stdout)
        else:
            log(f'virtualenv {venv} is up to date')
    return vpython


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
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


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def _is_alive(pid: int, starttime: int | None = None) -> bool:
    """True when ``pid`` runs (zombies are dead) and started at starttime."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ('Z', 'X'):
        return False
    return starttime is None or stat[3] == starttime


def _family(roots: Mapping[int, int]) -> set[int]:
    """Live processes belonging to the given roots ({pid: starttime}).

    A root counts while its start time matches (so a reused PID is never
    touched). Members are: the roots, every process in their sessions (each
    server was started as a session leader, and its forked workers stay in
    that session even when reparented), and every descendant of either.
    """
    live_roots = {pid for pid, st in roots.items() if _is_alive(pid, st)}
    # A root that exited (gone, or a zombie) still names its session; one
    # whose PID now belongs to another process does not.
    sessions = set()
    for pid, starttime in roots.items():
        stat = _proc_stat(pid)
        if stat is None or stat[3] == starttime:
            sessions.add(pid)
    stats = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
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


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate_processes(roots: Mapping[int, int], *,
                        term_timeout: float = 15.0,
                        kill_timeout: float = 10.0,
                        reap: Callable[[], None] = lambda: None,
                        log: Callable[[str], None] = _default_log) -> None:
    """End the given processes and everything that belongs to them.

    ``roots`` maps PID to start time (field 22 of /proc/PID/stat). SIGTERM
    goes once to every member of the family (see ``_family``), which is
    recomputed on each poll so that a worker forked meanwhile gets it too;
    whatever still runs after ``term_timeout`` gets SIGKILL. ``reap`` is
    called on each poll to collect our own exited children.

    :raises HarnessError: if anything is still alive after SIGKILL.
    """
    members: set[int] = set()
    phases = ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout))
    for sig, timeout in phases:
        members = _family(roots)
        if not members:
            return
        if sig == signal.SIGKILL:
            log(f'still running {term_timeout:g}s after SIGTERM, sending '
                f'SIGKILL: {sorted(members)}')
        signalled: set[int] = set()
        deadline = time.monotonic() + timeout
        while members:
            _signal_all(members - signalled, sig)
            signalled |= members
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
            reap()
            members = _family(roots)
        if not members:
            return
    raise HarnessError(f'processes survived SIGKILL: {sorted(members)}')


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once in the parent: no dlopen() between fork and exec.
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f'prctl({option}, {arg})')


def _die_with_parent() -> None:
    """In a forked child: get SIGKILL when the parent goes away."""
    parent = os.getppid()
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _free_port(host: str = '127.0.0.1') -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# PostgreSQL, through the venv's psycopg2 (no psql needed)
# --------------------------------------------------------------------------

_PG_SNIPPET = r'''
import json, sys
import psycopg2
args = json.loads(sys.argv[1])
conn = psycopg2.connect(host=args['host'], port=args['port'],
                        user=args['user'], dbname='postgres',
                        connect_timeout=10)
conn.autocommit = True
out = []
with conn.cursor() as cur:
    for sql, params in args['statements']:
        cur.execute(sql, params)
        out.append(cur.fetchall() if cur.description else None)
conn.close()
print(json.dumps(out))
'''


def prune_databases(venv: Path, *, older_than: float = 3600.0,
                    dry_run: bool = False, pg_host: str = '127.0.0.1',
                    pg_port: int = 5432, pg_user: str = 'postgres',
                    log: Callable[[str], None] = _default_log) -> list[str]:
    """Drop databases a killed harness left behind.

    Only databases whose comment says this harness made them, made more
    than ``older_than`` seconds ago, and with no open connection (a running
    Mistral always holds some) are dropped.

    :returns: the names dropped (or that would be, with ``dry_run``).
    """
    harness = MistralHarness(venv, tempfile.gettempdir(), pg_host=pg_host,
                             pg_port=pg_port, pg_user=pg_user, log=log)
    rows = harness._pg((
        "SELECT d.datname, shobj_description(d.oid, 'pg_database'),"
        ' (SELECT count(*) FROM pg_stat_activity a'
        '  WHERE a.datname = d.datname)'
        ' FROM pg_database d'
        " WHERE shobj_description(d.oid, 'pg_database') LIKE %s",
        [DB_COMMENT_PREFIX + ' %']))[0]
    dropped = []
    now = time.time()
    for name, comment, connections in rows:
        match = re.fullmatch(
            re.escape(DB_COMMENT_PREFIX) + r' (\S+) at (\d+)', comment)
        if not match or match.group(1) != name or not _NAME_RE.match(name):
            continue
        age = now - int(match.group(2))
        if age < older_than or connections:
            log(f'keeping {name} (age {age:.0f}s, {connections} '
                'connections)')
            continue
        if dry_run:
            log(f'would drop {name} (age {age:.0f}s)')
        else:
            log(f'dropping {name} (age {age:.0f}s)')
            harness._pg((f'DROP DATABASE IF EXISTS "{name}"', []))
        dropped.append(name)
    return dropped


# --------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------

class MistralHarness:
    """One Mistral (API, engine, executor) with its own database.

    :param venv: virtualenv to create or reuse (see ``ensure_venv``).
    :param workdir: directory for ``mistral.conf``, logs and the state file.
    :param install_project: ``pip install -e`` this project into the venv.
    :param extra_requirements: more requirements for the venv (pytest...).
    :param extra_config: more options for ``mistral.conf``, as
        ``{section: {key: value}}``; they win over the harness's own.
    :param api_port: API port; a free one of 127.0.0.1 when None.
    :param timeout: seconds allowed for the servers to become ready.
    :param debug: ``debug = True`` in ``mistral.conf``.
    :param smoke_test: run the smoke workflow in ``start()``.
    :param die_with_parent: the servers get SIGKILL when the thread that
        started them ends (prctl PR_SET_PDEATHSIG), so a test run that is
        killed leaves no Mistral behind. Call ``start()`` from a thread that
        outlives the harness (the main thread), or pass False.
    :param log: where progress lines go (``print`` by default).

    After ``start()``: ``api_url`` (``http://127.0.0.1:PORT``),
    ``mistral_url`` (``.../v2``, what python-mistralclient wants), ``pids``
    (``{'api': PID, 'engine': PID, 'executor': PID}`` of the three master
    processes), ``api_pid`` / ``engine_pid`` / ``executor_pid``,
    ``config_file``, ``log_dir``, ``db_name`` and ``env`` (the environment in
    which ``mistral`` and python-mistralclient reach this Mistral).
    """

    def __init__(self, venv: str | os.PathLike[str],
                 workdir: str | os.PathLike[str], *,
                 install_project: bool = True,
                 extra_config: Mapping[str, Mapping[str, Any]] | None = None,
                 api_port: int | None = None,
                 pg_host: str = '127.0.0.1', pg_port: int = 5432,
                 pg_user: str = 'postgres',
                 transport_url: str = 'rabbit://guest:guest@127.0.0.1:5672/',
                 timeout: float = 120.0, debug: bool = False,
                 smoke_test: bool = True, die_with_parent: bool = True,
                 extra_requirements: tuple[str, ...] = (),
                 log: Callable[[str], None] = _default_log) -> None:
        self.venv = Path(venv).absolute()
        self.workdir = Path(workdir).absolute()
        self.install_project = install_project
        self.extra_config = {s: dict(o) for s, o in
                             (extra_config or {}).items()}
        self.api_port = api_port
        self.pg = {'host': pg_host, 'port': pg_port, 'user': pg_user}
        self.transport_url = transport_url
        self.timeout = timeout
        self.debug = debug
        self.smoke_test = smoke_test
        self.die_with_parent = die_with_parent
        self.extra_requirements = tuple(extra_requirements)
        self.log = log
        self.config_file = self.workdir / 'mistral.conf'
        self.log_dir = self.workdir / 'logs'
        self.state_file = self.workdir / STATE_FILE
        self.tag = ''
        self.db_name = ''
        self.pids: dict[str, int] = {}
        self._starttimes: dict[str, int] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        #: (pid, starttime) of the keeper process that ``up`` leaves as the
        #: parent of the servers (command line only; see ``_cmd_keep``).
        self.keeper: tuple[int, int] | None = None

    # -- public attributes -------------------------------------------------

    @property
    def python(self) -> Path:
        """The venv's python."""
        return self.venv / 'bin' / 'python'

    @property
    def bin_dir(self) -> Path:
        """The venv's bin directory (``mistral``, ``mistral-server``...)."""
        return self.venv / 'bin'

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f'http://127.0.0.1:{self.api_port}'

    @property
    def mistral_url(self) -> str:
        """``http://127.0.0.1:PORT/v2``: the URL python-mistralclient uses."""
        return f'{self.api_url}/v2'

    @property
    def api_pid(self) -> int:
        """PID of the API master process."""
        return self.pids['api']

    @property
    def engine_pid(self) -> int:
        """PID of the engine master process."""
        return self.pids['engine']

    @property
    def executor_pid(self) -> int:
        """PID of the executor master process."""
        return self.pids['executor']

    @property
    def env(self) -> dict[str, str]:
        """Environment for ``mistral`` / python-mistralclient / tests.

        The current environment without Keystone settings, with the venv
        first on PATH, ``OS_MISTRAL_URL`` (read by the ``mistral`` CLI),
        ``MISTRAL_URL`` and ``MISTRAL_HARNESS_CONFIG`` (our mistral.conf).
        """
        env = {k: v for k, v in os.environ.items()
               if k not in _AUTH_ENV_VARS and k not in _MISTRAL_ENV_VARS}
        env.update(self.env_exports())
        env['PATH'] = f'{self.bin_dir}{os.pathsep}{os.environ.get("PATH", "")}'
        return env

    def env_exports(self) -> dict[str, str]:
        """The variables ``env`` sets (PATH aside)."""
        return {
            'OS_MISTRAL_URL': self.mistral_url,
            'MISTRAL_URL': self.mistral_url,
            'MISTRAL_HARNESS_CONFIG': str(self.config_file),
            'VIRTUAL_ENV': str(self.venv),
        }

    def server_log(self, server: str) -> Path:
        """Log file of one server (``api``, ``engine`` or ``executor``)."""
        return self.log_dir / f'{server}.log'

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> MistralHarness:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Bring Mistral up (see the module docstring); stop() on failure."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        if self.state_file.exists() and not self.pids:
            previous = MistralHarness.from_state(self.workdir, log=self.log)
            if any(_is_alive(pid, previous._starttimes[s])
                   for s, pid in previous.pids.items()):
                raise HarnessError(
                    f'a Mistral started from {self.workdir} still runs '
                    f'(pids {previous.pids}); stop it first')
            self.log('cleaning up what a previous run left behind')
            previous.stop()
        ensure_venv(self.venv, install_project=self.install_project,
                    extra_requirements=self.extra_requirements, log=self.log)
        self.tag = (f'hotload_{os.getpid()}_{next(_COUNTER)}_'
                    f'{secrets.token_hex(2)}')
        self.db_name = self.tag
        if self.api_port is None:
            self.api_port = _free_port()
        try:
            self._create_database()
            self._save_state()
            self._write_config()
            self._db_manage()
            self._start_servers()
            self._wait_ready()
            if self.smoke_test:
                self._smoke()
        except BaseException:
            self.log('start failed; tearing down')
            with contextlib.suppress(HarnessError):
                self.stop()
            raise
        self.log(f'Mistral is up in {time.monotonic() - t0:.2f}s: '
                 f'{self.mistral_url} (pids {self.pids}, workdir '
                 f'{self.workdir})')

    def stop(self) -> None:
        """Kill every process by PID, drop the database, forget the state.

        Idempotent; works on a harness loaded with ``from_state``.
        """
        t0 = time.monotonic()
        roots = {self.pids[s]: self._starttimes[s] for s in self.pids}
        if roots:
            with _Step(self.log, 'stopping Mistral servers '
                       f'{sorted(roots)}'):
                terminate_processes(roots, reap=self._reap, log=self.log)
        self._reap()
        left = _family(roots)
        if left:
            raise HarnessError(f'processes left behind: {sorted(left)}')
        if self.db_name:
            self._drop_database()
        self._wait_keeper()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.pids.clear()
        self._starttimes.clear()
        self._popens.clear()
        self.db_name = ''
        self.log(f'Mistral is down ({time.monotonic() - t0:.2f}s)')

    def _wait_keeper(self, timeout: float = 10.0) -> None:
        """Let the keeper reap the servers and exit; SIGKILL it if not."""
        if self.keeper is None or self.keeper[0] == os.getpid():
            return
        pid, starttime = self.keeper
        deadline = time.monotonic() + timeout
        while _is_alive(pid, starttime):
            if time.monotonic() >= deadline:
                self.log(f'keeper {pid} did not exit; sending SIGKILL')
                _signal_all({pid}, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)
        self.keeper = None

    @classmethod
    def from_state(cls, workdir: str | os.PathLike[str],
                   log: Callable[[str], None] = _default_log
                   ) -> MistralHarness:
        """A harness for what an earlier ``start()`` left in ``workdir``.

        :raises HarnessError: if there is no state file there.
        """
        state_file = Path(workdir).absolute() / STATE_FILE
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            raise HarnessError(
                f'no harness state in {state_file.parent}: nothing is up '
                f'there') from None
        harness = cls(state['venv'], state['workdir'],
                      api_port=state['api_port'], pg_host=state['pg']['host'],
                      pg_port=state['pg']['port'],
                      pg_user=state['pg']['user'], log=log)
        harness.tag = state['tag']
        harness.db_name = state['db_name']
        for server, info in state['servers'].items():
            harness.pids[server] = info['pid']
            harness._starttimes[server] = info['starttime']
        if state.get('keeper'):
            harness.keeper = (state['keeper']['pid'],
                              state['keeper']['starttime'])
        return harness

    def status(self) -> dict[str, Any]:
        """What runs: each master (alive?) and its workers, the API."""
        servers = {}
        for server, pid in self.pids.items():
            family = _family({pid: self._starttimes[server]})
            servers[server] = {
                'pid': pid,
                'alive': _is_alive(pid, self._starttimes[server]),
                'workers': sorted(family - {pid}),
            }
        try:
            code = self._http('GET', '/v2/actions?limit=1', timeout=5)[0]
            api = f'HTTP {code}'
        except OSError as exc:
            api = f'not answering ({exc})'
        keeper = None
        if self.keeper:
            keeper = {'pid': self.keeper[0],
                      'alive': _is_alive(*self.keeper)}
        return {'mistral_url': self.mistral_url, 'api': api,
                'servers': servers, 'keeper': keeper,
                'database': self.db_name,
                'config_file': str(self.config_file),
                'log_dir': str(self.log_dir), 'venv': str(self.venv)}

    # -- REST helpers, usable by tests ------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = 'application/json',
                timeout: float = 30.0) -> Any:
        """Call the Mistral REST API; returns the decoded JSON (or None).

        ``path`` starts with ``/v2/``. A dict or list body is sent as JSON,
        a str as is (with ``content_type``).

        :raises HarnessError: on an HTTP status of 400 or more.
        """
        code, payload = self._http(method, path, body,
                                   content_type=content_type,
                                   timeout=timeout)
        if code >= 400:
            raise HarnessError(f'{method} {path}: HTTP {code}: {payload}')
        return json.loads(payload) if payload.strip() else None

    def create_workflows(self, definition: str) -> list[dict[str, Any]]:
        """Create (or fail on existing) workflows from a YAML definition."""
        return self.request('POST', '/v2/workflows', definition,
                            content_type='text/plain')['workflows']

    def run_workflow(self, definition: str | None, name: str,
                     workflow_input: Mapping[str, Any] | None = None, *,
                     timeout: float = 60.0,
                     cleanup: bool = False) -> dict[str, Any]:
        """Run a workflow to its end; returns the execution.

        ``definition`` is created first unless None. The returned execution
        has ``state`` (SUCCESS or ERROR), and ``output`` decoded.

        :raises HarnessError: if it is still running after ``timeout``.
        """
        if definition is not None:
            self.create_workflows(definition)
        execution = self.request('POST', '/v2/executions', {
            'workflow_name': name,
            'input': json.dumps(dict(workflow_input or {})),
        })
        path = f'/v2/executions/{execution["id"]}'
        deadline = time.monotonic() + timeout
        while execution['state'] not in ('SUCCESS', 'ERROR', 'CANCELLED'):
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f'workflow {name} still {execution["state"]} after '
                    f'{timeout}s; engine log:\n'
                    f'{_tail(self.server_log("engine"))}')
            time.sleep(0.1)
            execution = self.request('GET', path)
        execution['output'] = json.loads(execution.get('output') or '{}')
        if cleanup:
            self.request('DELETE', path)
            if definition is not None:
                self.request('DELETE', f'/v2/workflows/{name}')
        return execution

    # -- steps ---------------------------------------------------------------

    def _http(self, method: str, path: str, body: Any = None, *,
              content_type: str = 'application/json',
              timeout: float = 30.0) -> tuple[int, str]:
        data = None
        headers = {'Accept': 'application/json'}
        if body is not None:
            if isinstance(body, str):
                data = body.encode()
                # Mistral answers 406 to a text/plain POST (a workflow
                # definition) that accepts only application/json.
                headers['Accept'] = '*/*'
            else:
                data = json.dumps(body).encode()
            headers['Content-Type'] = content_type
        req = urllib.request.Request(  # noqa: S310 - our own http URL
            self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own http URL
                    req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors='replace')

    def _pg(self, *statements: tuple[str, list[Any]]) -> list[Any]:
        args = json.dumps({**self.pg, 'statements': statements})
        proc = subprocess.run(
            [str(self.python), '-c', _PG_SNIPPET, args],
            capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise HarnessError(
                f'PostgreSQL on {self.pg["host"]}:{self.pg["port"]} as '
                f'{self.pg["user"]}: {proc.stderr.strip().splitlines()[-1:]}'
                ' (is it up? tools/ensure-services)')
        return json.loads(proc.stdout)

    def _create_database(self) -> None:
        if not _NAME_RE.match(self.db_name):
            raise HarnessError(f'bad database name {self.db_name!r}')
        with _Step(self.log, f'creating database {self.db_name}'):
            comment = f'{DB_COMMENT_PREFIX} {self.tag} at {int(time.time())}'
            self._pg((f'CREATE DATABASE "{self.db_name}"', []),
                     (f'COMMENT ON DATABASE "{self.db_name}" IS %s',
                      [comment]))

    def _drop_database(self) -> None:
        """Drop our database, and only if its comment says it is ours."""
        if not _NAME_RE.match(self.db_name):
            raise HarnessError(f'bad database name {self.db_name!r}')
        rows = self._pg((
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
            ' WHERE datname = %s', [self.db_name]))[0]
        if not rows:
            self.log(f'database {self.db_name} is already gone')
            return
        comment = rows[0][0] or ''
        if not comment.startswith(f'{DB_COMMENT_PREFIX} {self.tag} at '):
            raise HarnessError(
                f'database {self.db_name} is not tagged as made by this '
                f'harness (comment {comment!r}); not dropping it')
        with _Step(self.log, f'dropping database {self.db_name}'):
            self._pg((f'DROP DATABASE IF EXISTS "{self.db_name}" '
                      'WITH (FORCE)', []))

    def _config(self) -> dict[str, dict[str, Any]]:
        user = self.pg['user']
        host, port = self.pg['host'], self.pg['port']
        tag = self.tag
        conf: dict[str, dict[str, Any]] = {
            'DEFAULT': {
                'transport_url': self.transport_url,
                # Exchange and topics of our own: queue names are global to
                # the broker, so distinct topics are what keeps two
                # harnesses apart; the exchange keeps the bindings apart.
                'control_exchange': tag,
                'debug': self.debug,
                'use_stderr': False,
            },
            'database': {
                'connection':
                    f'postgresql+psycopg2://{user}@{host}:{port}/{tag}',
            },
            'pecan': {'auth_enable': False},
            'api': {'host': '127.0.0.1', 'port': self.api_port},
            'engine': {'topic': self.topics['engine']},
            'executor': {'topic': self.topics['executor']},
            'notifier': {'topic': self.topics['notifier']},
            'event_engine': {'topic': self.topics['event_engine']},
            # mistral-hotload's provider and daemon signal each other with
            # a fanout on this topic; the fanout exchange is named after
            # the topic alone (not scoped by control_exchange), so it must
            # be ours too. Mistral ignores the section without the project.
            'hotload': {'signal_topic': self.topics['hotload_signal']},
            # With run_in_api, the API master process (not its worker)
            # runs the cron trigger loop in a non-daemon thread, and then
            # ignores SIGTERM forever.
            'cron_trigger': {'run_in_api': False},
            # Queues and exchanges go away with their last consumer, and
            # the transient (fanout, reply) ones a minute after it, so
            # nothing piles up in the shared broker.
            'oslo_messaging_rabbit': {'amqp_auto_delete': True,
                                      'rabbit_transient_queues_ttl': 60},
        }
        for section, options in self.extra_config.items():
            conf.setdefault(section, {}).update(options)
        return conf

    @property
    def control_exchange(self) -> str:
        """The oslo.messaging control exchange of this harness."""
        return self.tag

    @property
    def topics(self) -> dict[str, str]:
        """The RabbitMQ topics of this harness, by user.

        ``engine``, ``executor``, ``notifier``, ``event_engine`` (Mistral's)
        and ``hotload_signal`` (``[hotload] signal_topic``).
        """
        return {name: f'{self.tag}_{name}' for name in (
            'engine', 'executor', 'notifier', 'event_engine',
            'hotload_signal')}

    def _write_config(self) -> None:
        lines = [f'# Written by {Path(__file__).name} for {self.tag}']
        for section, options in self._config().items():
            lines.append(f'\n[{section}]')
            for key, value in options.items():
                if isinstance(value, bool):
                    value = str(value).lower()
                lines.append(f'{key} = {value}')
        self.config_file.write_text('\n'.join(lines) + '\n')
        self.log(f'wrote {self.config_file}')

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _MISTRAL_ENV_VARS and k not in _AUTH_ENV_VARS}
        env['PATH'] = f'{self.bin_dir}{os.pathsep}{env.get("PATH", "")}'
        env['VIRTUAL_ENV'] = str(self.venv)
        env['PYTHONUNBUFFERED'] = '1'
        return env

    def _db_manage(self) -> None:
        log_file = self.log_dir / 'db-manage.log'
        _rotate(log_file)
        for command in (['upgrade', 'head'], ['populate']):
            argv = [str(self.bin_dir / 'mistral-db-manage'),
                    '--config-file', str(self.config_file), *command]
            with _Step(self.log, 'mistral-db-manage ' + ' '.join(command)):
                code = _run_logged(argv, log_file, env=self._server_env(),
                                   timeout=self.timeout)
                if code != 0:
                    raise HarnessError(
                        f'{shlex.join(argv)} failed (exit {code}); end of '
                        f'{log_file}:\n{_tail(log_file)}')

    def restart(self, servers: tuple[str, ...]) -> None:
        """Stop the given servers by PID, start them again, wait ready.

        The way users load new actions without mistral-hotload; the
        benchmark times it.
        """
        roots = {self.pids[s]: self._starttimes[s] for s in servers}
        with _Step(self.log, f'restarting {", ".join(servers)}'):
            terminate_processes(roots, reap=self._reap, log=self.log)
            self._reap()
            self._start_servers(servers)
            self._wait_ready(servers)

    def _start_servers(self, servers: tuple[str, ...] = SERVERS) -> None:
        _libc()  # before fork, for _die_with_parent
        with _Step(self.log, f'starting mistral-server {", ".join(servers)}'):
            for server in servers:
                # Readiness is read from these logs: none from a past run.
                _rotate(self.server_log(server))
                _rotate(self.log_dir / f'{server}.out')
                argv = [str(self.bin_dir / 'mistral-server'),
                        '--server', server,
                        '--config-file', str(self.config_file),
                        '--log-file', str(self.server_log(server))]
                out_path = self.log_dir / f'{server}.out'
                with open(out_path, 'ab') as out:
                    popen = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, env=self._server_env(),
                        cwd=self.workdir, start_new_session=True,
                        preexec_fn=(_die_with_parent if self.die_with_parent
                                    else None))
                self._popens[server] = popen
                self.pids[server] = popen.pid
                stat = _proc_stat(popen.pid)
                self._starttimes[server] = stat[3] if stat else 0
            self._save_state()
            self.log(f'pids: {self.pids}')

    def _reap(self) -> None:
        for popen in self._popens.values():
            popen.poll()

    def _check_servers_alive(self) -> None:
        for server, pid in self.pids.items():
            popen = self._popens.get(server)
            dead = (popen.poll() is not None if popen
                    else not _is_alive(pid, self._starttimes[server]))
            if dead:
                raise HarnessError(
                    f'mistral-server --server {server} (pid {pid}) exited; '
                    f'{self.log_dir / (server + ".out")}:\n'
                    f'{_tail(self.log_dir / (server + ".out"))}\n'
                    f'{self.server_log(server)}:\n'
                    f'{_tail(self.server_log(server))}')

    def _diagnostics(self) -> str:
        parts = []
        for server in SERVERS:
            parts.append(f'{self.server_log(server)}:\n'
                         f'{_tail(self.server_log(server))}')
        return '\n'.join(parts)

    def _wait_ready(self, servers: tuple[str, ...] = SERVERS) -> None:
        pending = set(servers)
        with _Step(self.log, f'waiting for {", ".join(sorted(pending))} to '
                   'be ready'):
            deadline = time.monotonic() + self.timeout
            while pending:
                self._check_servers_alive()
                for server in sorted(pending):
                    if self._is_ready(server):
                        pending.discard(server)
                        self.log(f'{server} is ready')
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    raise HarnessError(
                        f'not ready after {self.timeout}s: '
                        f'{sorted(pending)}\n{self._diagnostics()}')
                time.sleep(0.05)

    def _is_ready(self, server: str) -> bool:
        if server == 'api':
            try:
                return self._http('GET', '/v2/actions', timeout=10)[0] == 200
            except OSError:
                return False
        try:
            text = self.server_log(server).read_text(errors='replace')
        except FileNotFoundError:
            return False
        return _STARTED_LINES[server] in text

    def _smoke(self) -> None:
        with _Step(self.log, 'smoke workflow (std.echo + std.noop)'):
            message = f'hello from {self.tag}'
            execution = self.run_workflow(
                SMOKE_WORKFLOW, SMOKE_WORKFLOW_NAME, {'message': message},
                timeout=self.timeout, cleanup=True)
            if (execution['state'] != 'SUCCESS'
                    or execution['output'] != {'echoed': message}):
                raise HarnessError(
                    f'smoke workflow ended {execution["state"]} with '
                    f'output {execution["output"]!r} '
                    f'({execution.get("state_info")})\n{self._diagnostics()}')

    def _save_state(self) -> None:
        _write_json_atomic(self.state_file, {
            'tag': self.tag,
            'db_name': self.db_name,
            'api_port': self.api_port,
            'mistral_url': self.mistral_url,
            'config_file': str(self.config_file),
            'venv': str(self.venv),
            'workdir': str(self.workdir),
            'pg': self.pg,
            'servers': {s: {'pid': self.pids[s],
                            'starttime': self._starttimes[s]}
                        for s in self.pids},
            'keeper': ({'pid': self.keeper[0], 'starttime': self.keeper[1]}
                       if self.keeper else None),
        })


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _parse_set(values: list[str]) -> dict[str, dict[str, str]]:
    conf: dict[str, dict[str, str]] = {}
    for item in values:
        key, sep, value = item.partition('=')
        section, dot, option = key.rpartition('.')
        if not sep or not dot or not section or not option:
            raise SystemExit(f'--set wants SECTION.KEY=VALUE, got {item!r}')
        conf.setdefault(section, {})[option] = value
    return conf


_READY = '\0mistral-harness-ready'
_FAILED = '\0mistral-harness-failed '


def _cmd_up(args: argparse.Namespace) -> int:
    """Start a keeper process that starts Mistral, and relay its output.

    The servers must outlive this command. Orphans are adopted by PID 1,
    which (in containers) may reap them late, leaving ``<defunct>`` entries
    after ``down``. So the servers are children of a keeper: a process of
    its own session, made a child subreaper, that starts the harness, then
    does nothing but reap until no child is left (after ``down``).
    """
    workdir = Path(args.workdir).absolute()
    with _flock(workdir / '.lock'):
        if (workdir / STATE_FILE).exists():
            old = MistralHarness.from_state(workdir)
            alive = [s for s, pid in old.pids.items()
                     if _is_alive(pid, old._starttimes[s])]
            if alive:
                print(f'already up in {workdir} ({old.mistral_url}, pids '
                      f'{old.pids}); run "down" first', file=sys.stderr)
                return 1
            old.log('cleaning up what a previous run left behind')
            old.stop()
        spec = {
            'venv': str(Path(args.venv).absolute()),
            'workdir': str(workdir),
            'install_project': not args.no_project,
            'extra_requirements': args.extra,
            'extra_config': _parse_set(args.set),
            'api_port': args.api_port,
            'timeout': args.timeout,
            'debug': args.debug,
        }
        (workdir / 'logs').mkdir(parents=True, exist_ok=True)
        _rotate(workdir / 'logs' / 'keeper.log')
        with open(workdir / 'logs' / 'keeper.log', 'ab') as keeper_log:
            keeper = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), '_keep',
                 json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=keeper_log, start_new_session=True, text=True)
        code = 1
        relay = _Relay(sys.stdout)
        keeper_out = keeper.stdout
        if keeper_out is None:  # cannot happen with stdout=PIPE
            raise HarnessError('no pipe from the keeper process')
        try:
            for line in keeper_out:
                if line.startswith(_READY):
                    code = 0
                    break
                if line.startswith(_FAILED):
                    code = int(line[len(_FAILED):])
                    break
                relay.write(line)
        except KeyboardInterrupt:
            # The keeper tears down what it started, then exits.
            relay.write('interrupted: tearing down\n')
            keeper.send_signal(signal.SIGTERM)
            for line in keeper_out:
                if not line.startswith(_FAILED):
                    relay.write(line)
            keeper.wait()
            return 130
        finally:
            keeper_out.close()
        if code != 0:
            keeper.wait()
            return code
    relay.write(f'\nTry it:\n  eval "$({_self_command()} env --workdir '
                f'{shlex.quote(str(workdir))})"\n  mistral action-list\n'
                f'Stop it:\n  {_self_command()} down --workdir '
                f'{shlex.quote(str(workdir))}\n')
    return 0


class _Relay:
    """Writes lines to a stream until its reader goes away (EPIPE).

    The keeper must finish (or tear down) what it started even when the
    ``up`` it reports to, or whoever reads ``up``, has gone: a broken pipe
    only ends the relaying, and the stream is pointed at /dev/null so that
    the interpreter's final flush does not fail either.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.alive = True

    def write(self, text: str) -> None:
        """Write and flush ``text``, unless the reader is gone."""
        if not self.alive:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:
            self.alive = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


class _Stop(Exception):
    """Raised by the keeper's SIGTERM handler."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def _become_subreaper() -> None:
    """Adopt orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    _prctl(36, 1)


def _cmd_keep(args: argparse.Namespace) -> int:
    """The keeper: start the harness, report, then reap until childless.

    Its stdout goes to ``up`` until the harness is ready, its stderr to
    logs/keeper.log. SIGTERM before ready aborts the start (tearing down);
    after, it stops the harness like ``down`` would.
    """
    spec = json.loads(args.spec)
    _become_subreaper()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = _Relay(sys.stdout)

    def log(message: str) -> None:
        _stderr_log(message)
        relay.write(f'[mistral-harness] {message}\n')

    harness = MistralHarness(**spec, log=log)
    stat = _proc_stat(os.getpid())
    harness.keeper = (os.getpid(), stat[3] if stat else 0)
    try:
        harness.start()
    except ProjectInstallError as exc:
        _stderr_log(f'ERROR: {exc}')
        relay.write(f'ERROR: {exc}\n{_FAILED}3\n')
        return 3
    except (HarnessError, _Stop) as exc:
        message = str(exc) or 'interrupted'
        _stderr_log(f'ERROR: {message}')
        relay.write(f'ERROR: {message}\n{_FAILED}1\n')
        return 1
    relay.write(_READY + '\n')
    relay.alive = False
    harness.log = _stderr_log
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
        except _Stop:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            harness.log('SIGTERM: stopping Mistral')
            with contextlib.suppress(HarnessError):
                harness.stop()
    _stderr_log('no child left, keeper exits')
    return 0


def _stderr_log(message: str) -> None:
    print(f'[mistral-harness keeper {os.getpid()}] {message}',
          file=sys.stderr, flush=True)


def _self_command() -> str:
    return f'python3 {shlex.quote(str(Path(__file__).resolve()))}'


def _cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    with _flock(workdir / '.lock'):
        try:
            harness = MistralHarness.from_state(workdir)
        except HarnessError as exc:
            print(exc)
            return 0
        try:
            harness.stop()
        except HarnessError as exc:
            print(f'ERROR: {exc}', file=sys.stderr)
            return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        harness = MistralHarness.from_state(args.workdir)
    except HarnessError as exc:
        print(exc)
        return 1
    status = harness.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f'Mistral API  {status["mistral_url"]}: {status["api"]}')
        for server, info in status['servers'].items():
            state = 'running' if info['alive'] else 'NOT RUNNING'
            print(f'  {server:<9} pid {info["pid"]:<7} {state}, workers '
                  f'{info["workers"]}')
        if status['keeper']:
            state = 'running' if status['keeper']['alive'] else 'gone'
            print(f'  keeper    pid {status["keeper"]["pid"]:<7} {state}')
        for key in ('database', 'config_file', 'log_dir', 'venv'):
            print(f'{key:<12} {status[key]}')
    up = all(i['alive'] for i in status['servers'].values())
    return 0 if up and status['api'] == 'HTTP 200' else 1


def _cmd_env(args: argparse.Namespace) -> int:
    try:
        harness = MistralHarness.from_state(args.workdir)
    except HarnessError as exc:
        print(f'echo {shlex.quote(str(exc))} >&2; false')
        return 1
    print(f'unset {" ".join(_AUTH_ENV_VARS + _MISTRAL_ENV_VARS)}')
    for key, value in harness.env_exports().items():
        print(f'export {key}={shlex.quote(value)}')
    print(f'export PATH={shlex.quote(str(harness.bin_dir))}:"$PATH"')
    return 0


def _cmd_venv(args: argparse.Namespace) -> int:
    try:
        ensure_venv(Path(args.venv), install_project=not args.no_project,
                    extra_requirements=tuple(args.extra))
    except ProjectInstallError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 3
    except HarnessError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 1
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    try:
        prune_databases(Path(args.venv), older_than=args.older_than,
                        dry_run=args.dry_run)
    except HarnessError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (``--help`` tells the whole story)."""
    parser = argparse.ArgumentParser(
        prog='mistral_harness.py',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Run a real OpenStack Mistral 23 (API, engine and '
                    'executor as three processes) on this machine, against '
                    'the local RabbitMQ and PostgreSQL (start those with '
                    'tools/ensure-services).',
        epilog=f'''\
first time:
  tools/ensure-services
  python3 tools/mistral_harness.py up        # ~1 min the first time (pip)
  eval "$(python3 tools/mistral_harness.py env)"
  mistral action-list
  mistral workflow-create my.yaml && mistral execution-create my_wf '{{}}'
  python3 tools/mistral_harness.py status
  python3 tools/mistral_harness.py down

defaults:
  --venv     $MISTRAL_HARNESS_VENV or {default_venv()}
  --workdir  $MISTRAL_HARNESS_WORKDIR or {default_workdir()}

in the work directory: mistral.conf, logs/{{api,engine,executor}}.log
(Mistral's logs), logs/*.out (stdout/stderr), logs/db-manage.log and
{STATE_FILE} (PIDs, database, port; "down" reads it).

exit status: 0 fine, 1 failed, 3 "pip install -e" of the project failed
(retry with --no-project to run Mistral without it).''')
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='{up,down,status,env,venv,prune}')

    def add_workdir(p: argparse.ArgumentParser) -> None:
        p.add_argument('--workdir', default=str(default_workdir()),
                       help='work directory (default: %(default)s)')

    def add_venv(p: argparse.ArgumentParser) -> None:
        p.add_argument('--venv', default=str(default_venv()),
                       help='virtualenv to create or reuse '
                            '(default: %(default)s)')
        p.add_argument('--no-project', action='store_true',
                       help='do not pip install -e this project into it')
        p.add_argument('--extra', action='append', default=[],
                       metavar='REQUIREMENT',
                       help='one more requirement for the venv, e.g. '
                            'pytest (repeatable; part of what the venv '
                            'marker records)')

    up = sub.add_parser(
        'up', help='start Mistral (creating the venv if needed)',
        description='Create or reuse the venv, create a database, write '
                    'mistral.conf, start API, engine and executor, and wait '
                    'until a workflow runs. Tears down again on failure.')
    add_venv(up)
    add_workdir(up)
    up.add_argument('--api-port', type=int,
                    help='API port (default: a free one)')
    up.add_argument('--timeout', type=float, default=120.0,
                    help='seconds allowed for the servers to become ready '
                         '(default: %(default)s)')
    up.add_argument('--debug', action='store_true',
                    help='debug = true in mistral.conf (verbose logs)')
    up.add_argument('--set', action='append', default=[],
                    metavar='SECTION.KEY=VALUE',
                    help='extra mistral.conf option, e.g. '
                         'hotload.state_dir=/tmp/hl (repeatable)')
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser(
        'down', help='stop Mistral and drop its database',
        description='Kill the servers by PID (SIGTERM, then SIGKILL), '
                    'check that none is left, drop the database.')
    add_workdir(down)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser('status', help='show what runs',
                            description='Exit 0 when all three servers run '
                                        'and the API answers.')
    add_workdir(status)
    status.add_argument('--json', action='store_true', help='JSON output')
    status.set_defaults(func=_cmd_status)

    env = sub.add_parser(
        'env', help='print shell exports for the mistral CLI',
        description='Print shell code that points the mistral CLI and '
                    'python-mistralclient at this Mistral (auth off): '
                    'eval "$(python3 tools/mistral_harness.py env)"')
    add_workdir(env)
    env.set_defaults(func=_cmd_env)

    keep = sub.add_parser('_keep')
    keep.add_argument('spec')
    keep.set_defaults(func=_cmd_keep)

    prune = sub.add_parser(
        'prune', help='drop databases that killed harnesses left behind',
        description='Drop the databases this harness made that are older '
                    'than --older-than and that nothing is connected to. '
                    'Never touches any other database.')
    prune.add_argument('--venv', default=str(default_venv()),
                       help='virtualenv with psycopg2 (default: '
                            '%(default)s)')
    prune.add_argument('--older-than', type=float, default=3600.0,
                       metavar='SECONDS',
                       help='minimum age (default: %(default)s)')
    prune.add_argument('--dry-run', action='store_true',
                       help='only say what would be dropped')
    prune.set_defaults(func=_cmd_prune)

    venv = sub.add_parser(
        'venv', help='only create or update the virtualenv',
        description='Create or update the virtualenv (e.g. ahead of tests).')
    add_venv(venv)
    venv.set_defaults(func=_cmd_venv)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the command line tool."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
