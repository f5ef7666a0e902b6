"""The ``mistral-server`` processes of one configuration file.

Each server (``api``, ``engine``, ``executor``) is its own process, the
leader of its own session, with its log in ``<log_dir>/<server>.log`` and
its stdout/stderr in ``<log_dir>/<server>.out``. They are known by PID and
start time, and stopped by PID with everything they forked.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path

from .common import HarnessError
from .common import Log
from .common import Step
from .common import default_log
from .common import rotate
from .common import tail
from .processes import die_with_parent
from .processes import family
from .processes import is_alive
from .processes import libc
from .processes import proc_stat
from .processes import terminate_processes

SERVERS: tuple[str, ...] = ('api', 'engine', 'executor')

#: Log line each RPC server writes once its queues are declared. A message
#: published to a topic before its queue exists is dropped by RabbitMQ, so
#: no workflow may be submitted before both appear.
STARTED_LINES: dict[str, str] = {
    'engine': 'Engine server started.',
    'executor': 'Executor server started.',
}

#: Variables that would make python-mistralclient try Keystone.
AUTH_ENV_VARS: tuple[str, ...] = (
    'OS_AUTH_URL', 'OS_AUTH_TOKEN', 'OS_TOKEN', 'OS_AUTH_TYPE',
    'OS_USERNAME', 'OS_PASSWORD', 'OS_CLOUD', 'OS_PROJECT_NAME',
    'OS_PROJECT_ID', 'OS_TENANT_NAME', 'OS_TENANT_ID',
    'MISTRAL_AUTH_TYPE',
)

#: Read by Mistral itself as default config file/dir: never inherited.
MISTRAL_ENV_VARS: tuple[str, ...] = (
    'MISTRAL_CONFIG_FILE', 'MISTRAL_CONFIG_DIR')


#: A plug-in action installed for every server (``harness_plugin.echo``
#: of ``mistral.actions``; see its module). It is a directory on the
#: servers' ``PYTHONPATH`` holding the module and the ``.dist-info`` that
#: ``pip install`` would write, which is all Python's entry point lookup
#: reads: the servers see it as installed, while the shared, cached venv
#: stays as ``ensure_venv`` made it (nothing to build or download, nothing
#: left behind). It must be there before a server starts, because
#: Mistral loads installed actions once, at start: the functional tests
#: name a hot action like it (tests/functional/test_name_clashes.py).
PLUGIN_DIR = Path(__file__).resolve().parent / 'plugin'


def server_env(venv: Path) -> dict[str, str]:
    """Environment of a server: ours, minus Keystone and Mistral's own,
    with the plug-in of :data:`PLUGIN_DIR` installed."""
    env = {k: v for k, v in os.environ.items()
           if k not in MISTRAL_ENV_VARS and k not in AUTH_ENV_VARS}
    env['PATH'] = f'{venv / "bin"}{os.pathsep}{env.get("PATH", "")}'
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(PLUGIN_DIR), env.get('PYTHONPATH')) if p)
    env['VIRTUAL_ENV'] = str(venv)
    env['PYTHONUNBUFFERED'] = '1'
    return env


class ServerProcesses:
    """Start, watch and stop the servers that share one ``mistral.conf``.

    :param venv: the virtualenv with ``mistral-server``.
    :param config_file: their ``--config-file``.
    :param log_dir: where their logs go.
    :param cwd: their working directory.
    :param api_ready: says whether the API answers (only called when
        the API is one of the servers).
    :param timeout: seconds allowed for the servers to become ready.
    :param die_with_parent: the servers get SIGKILL when the thread that
        started them ends (prctl PR_SET_PDEATHSIG).
    :param label: how log lines name this group (e.g. a node's host).
    :param log: where progress lines go.

    ``pids`` and ``starttimes`` map each started server to its master's PID
    and start time (what ``stop`` needs, also after a reload from a state
    file); ``popens`` holds the ones this process started itself.
    """

    def __init__(self, venv: Path, config_file: Path, log_dir: Path,
                 cwd: Path, *, api_ready: Callable[[], bool] | None = None,
                 timeout: float = 120.0, die_with_parent: bool = True,
                 label: str = '', log: Log = default_log) -> None:
        self.venv = venv
        self.config_file = config_file
        self.log_dir = log_dir
        self.cwd = cwd
        self.api_ready = api_ready
        self.timeout = timeout
        self.die_with_parent = die_with_parent
        self.label = label
        self.log = log
        self.pids: dict[str, int] = {}
        self.starttimes: dict[str, int] = {}
        self.popens: dict[str, subprocess.Popen[bytes]] = {}

    def server_log(self, server: str) -> Path:
        """Log file of one server (``api``, ``engine`` or ``executor``)."""
        return self.log_dir / f'{server}.log'

    def roots(self, servers: tuple[str, ...] | None = None
              ) -> dict[int, int]:
        """``{pid: starttime}`` of the given (default: all) masters."""
        chosen = self.pids if servers is None else servers
        return {self.pids[s]: self.starttimes[s] for s in chosen}

    def family(self) -> set[int]:
        """Every live process of these servers (masters and workers)."""
        return family(self.roots())

    def _what(self, servers: tuple[str, ...]) -> str:
        names = ', '.join(servers)
        return f'{names} of {self.label}' if self.label else names

    def start(self, servers: tuple[str, ...]) -> None:
        """Start ``mistral-server --server S`` for each S, not waiting."""
        libc()  # before fork, for die_with_parent
        env = server_env(self.venv)
        with Step(self.log, f'starting mistral-server {self._what(servers)}'):
            for server in servers:
                # Readiness is read from these logs: none from a past run.
                rotate(self.server_log(server))
                rotate(self.log_dir / f'{server}.out')
                argv = [str(self.venv / 'bin' / 'mistral-server'),
                        '--server', server,
                        '--config-file', str(self.config_file),
                        '--log-file', str(self.server_log(server))]
                out_path = self.log_dir / f'{server}.out'
                with open(out_path, 'ab') as out:
                    popen = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                        start_new_session=True,
                        preexec_fn=(die_with_parent if self.die_with_parent
                                    else None))
                self.popens[server] = popen
                self.pids[server] = popen.pid
                stat = proc_stat(popen.pid)
                self.starttimes[server] = stat[3] if stat else 0
            self.log(f'pids: {self.pids}')

    def reap(self) -> None:
        """Collect the exit status of our own servers that ended."""
        for popen in self.popens.values():
            popen.poll()

    def check_alive(self) -> None:
        """:raises HarnessError: with its logs, if a server has exited."""
        for server, pid in self.pids.items():
            popen = self.popens.get(server)
            dead = (popen.poll() is not None if popen
                    else not is_alive(pid, self.starttimes[server]))
            if dead:
                out = self.log_dir / f'{server}.out'
                raise HarnessError(
                    f'mistral-server --server {server} (pid {pid}) exited; '
                    f'{out}:\n{tail(out)}\n{self.server_log(server)}:\n'
                    f'{tail(self.server_log(server))}')

    def diagnostics(self) -> str:
        """The end of every server's log, for an error message."""
        return '\n'.join(f'{self.server_log(s)}:\n{tail(self.server_log(s))}'
                         for s in self.pids or SERVERS)

    def is_ready(self, server: str) -> bool:
        """The API answers; an engine or executor has declared its queue."""
        if server == 'api':
            return bool(self.api_ready and self.api_ready())
        try:
            text = self.server_log(server).read_text(errors='replace')
        except FileNotFoundError:
            return False
        return STARTED_LINES[server] in text

    def wait_ready(self, servers: tuple[str, ...]) -> None:
        """Poll until every one of ``servers`` is ready, or raise."""
        pending = set(servers)
        with Step(self.log, f'waiting for {self._what(tuple(sorted(pending)))}'
                  ' to be ready'):
            deadline = time.monotonic() + self.timeout
            while pending:
                self.check_alive()
                for server in sorted(pending):
                    if self.is_ready(server):
                        pending.discard(server)
                        self.log(f'{server} is ready')
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    raise HarnessError(
                        f'not ready after {self.timeout}s: '
                        f'{sorted(pending)}\n{self.diagnostics()}')
                time.sleep(0.05)

    def terminate(self, servers: tuple[str, ...] | None = None) -> None:
        """End the given (default: all) servers and their families by PID.

        They stay in ``pids``: a restart overwrites them, ``forget``
        drops them.
        """
        roots = self.roots(servers)
        if not roots:
            return
        with Step(self.log, f'stopping mistral-server '
                  f'{self._what(tuple(servers or self.pids))} '
                  f'{sorted(roots)}'):
            terminate_processes(roots, reap=self.reap, log=self.log)
        self.reap()
        left = family(roots)
        if left:
            raise HarnessError(f'processes left behind: {sorted(left)}')

    def forget(self) -> None:
        """Drop what is known of the servers (after ``terminate``)."""
        self.pids.clear()
        self.starttimes.clear()
        self.popens.clear()

    def load(self, servers: Mapping[str, Mapping[str, int]]) -> None:
        """Know servers from a state file: ``{server: {pid, starttime}}``."""
        for server, info in servers.items():
            self.pids[server] = info['pid']
            self.starttimes[server] = info['starttime']

    def dump(self) -> dict[str, dict[str, int]]:
        """What ``load`` reads back."""
        return {s: {'pid': self.pids[s], 'starttime': self.starttimes[s]}
                for s in self.pids}
