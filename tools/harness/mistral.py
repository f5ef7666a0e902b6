"""One Mistral session: a database, RabbitMQ topics, and its first node.

``MistralHarness`` is what ``up`` starts and what the tests' ``node``
fixture uses: a fresh database, a ``mistral.conf`` with topics of its own,
the API, engine and executor, and REST helpers. More nodes of the same
session (same database and topics, their own ``host``, configuration and
servers) come from ``add_node`` (see ``harness.nodes``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shlex
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from . import config
from .common import HarnessError
from .common import Log
from .common import Step
from .common import default_log
from .common import rotate
from .common import run_logged
from .common import tail
from .common import write_json_atomic
from .database import Postgres
from .processes import family
from .processes import free_port
from .processes import is_alive
from .processes import signal_all
from .rest import RestApi
from .servers import AUTH_ENV_VARS
from .servers import MISTRAL_ENV_VARS
from .servers import SERVERS
from .servers import ServerProcesses
from .servers import server_env
from .venv import ensure_venv

if TYPE_CHECKING:
    from .nodes import MistralNode

STATE_FILE = 'harness-state.json'

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

_COUNTER = itertools.count(1)


def default_workdir() -> Path:
    """Work directory of the command line tool unless told otherwise.

    ``$MISTRAL_HARNESS_WORKDIR``, else ``mistral-harness-<uid>`` in the
    temporary directory: a fixed place, so that ``down``, ``status`` and
    ``env`` find what ``up`` started.
    """
    if os.environ.get('MISTRAL_HARNESS_WORKDIR'):
        return Path(os.environ['MISTRAL_HARNESS_WORKDIR'])
    return Path(tempfile.gettempdir()) / f'mistral-harness-{os.getuid()}'


class MistralHarness(RestApi):
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
                 log: Log = default_log) -> None:
        self.venv = Path(venv).absolute()
        self.workdir = Path(workdir).absolute()
        self.install_project = install_project
        self.extra_config = {s: dict(o) for s, o in
                             (extra_config or {}).items()}
        self.api_port = api_port
        self.transport_url = transport_url
        self.timeout = timeout
        self.debug = debug
        self.smoke_test = smoke_test
        self.die_with_parent = die_with_parent
        self.extra_requirements = tuple(extra_requirements)
        self.log = log
        self.postgres = Postgres(self.python, pg_host, pg_port, pg_user,
                                 log=self._log)
        self.config_file = self.workdir / 'mistral.conf'
        self.log_dir = self.workdir / 'logs'
        self.state_file = self.workdir / STATE_FILE
        self.tag = ''
        self.db_name = ''
        #: The API, engine and executor processes of this first node.
        self.processes = ServerProcesses(
            self.venv, self.config_file, self.log_dir, self.workdir,
            api_ready=self._api_answers, timeout=timeout,
            die_with_parent=die_with_parent, log=self._log)
        # The same dicts as the servers' (older callers read these).
        self.pids: dict[str, int] = self.processes.pids
        self._starttimes: dict[str, int] = self.processes.starttimes
        self._popens = self.processes.popens
        #: More nodes of this session, by name (see ``add_node``).
        self.nodes: dict[str, MistralNode] = {}
        #: (pid, starttime) of the keeper process that ``up`` leaves as the
        #: parent of the servers (command line only; see ``cli``).
        self.keeper: tuple[int, int] | None = None

    def _log(self, message: str) -> None:
        # Late-bound: the keeper replaces ``log`` once ``up`` returned.
        self.log(message)

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
    def pg(self) -> dict[str, Any]:
        """``{'host', 'port', 'user'}`` of the PostgreSQL server."""
        return self.postgres.params

    @property
    def host(self) -> str:
        """What this node calls itself: ``[DEFAULT] host`` or the host name.

        The harness sets no ``host`` of its own, so Mistral (and
        mistral-hotload) use the machine's name unless ``extra_config``
        says otherwise.
        """
        return (self.extra_config.get('DEFAULT', {}).get('host')
                or socket.gethostname())

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers this first node runs: all of them."""
        return SERVERS

    @property
    def state_dir(self) -> Path | None:
        """Its ``[hotload] state_dir``, when ``extra_config`` sets one."""
        state_dir = self.extra_config.get('hotload', {}).get('state_dir')
        return Path(state_dir) if state_dir else None

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of this session's database."""
        return self.postgres.url(self.db_name)

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
               if k not in AUTH_ENV_VARS and k not in MISTRAL_ENV_VARS}
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
        return self.processes.server_log(server)

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
        return config.topics(self.tag)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> MistralHarness:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Bring Mistral up (see the package docstring); stop() on failure."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        if self.state_file.exists() and not self.pids:
            previous = MistralHarness.from_state(self.workdir, log=self.log)
            if any(is_alive(pid, previous._starttimes[s])
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
            self.api_port = free_port()
        try:
            self.postgres.create(self.db_name, self.tag)
            self._save_state()
            self._write_config()
            self._db_manage()
            self.processes.start(SERVERS)
            self._save_state()
            self.processes.wait_ready(SERVERS)
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

        Further nodes go first. Idempotent; works on a harness loaded with
        ``from_state``.
        """
        t0 = time.monotonic()
        errors = []
        for node in list(self.nodes.values()):
            try:
                node.stop()
            except HarnessError as exc:
                errors.append(exc)
        self.processes.terminate()
        if self.db_name:
            self.postgres.drop(self.db_name, self.tag)
        self._wait_keeper()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.processes.forget()
        self.nodes.clear()
        self.db_name = ''
        self.log(f'Mistral is down ({time.monotonic() - t0:.2f}s)')
        if errors:
            raise errors[0]

    def add_node(self, name: str, servers: tuple[str, ...] = (
            'engine', 'executor'), **options: Any) -> MistralNode:
        """Start one more node of this session and wait until it is ready.

        See ``harness.nodes.MistralNode`` for ``options``; its work
        directory defaults to ``<workdir>/nodes/<name>``. ``stop`` stops
        it too; ``node.stop()`` stops it alone.
        """
        from .nodes import MistralNode

        if name in self.nodes:
            raise HarnessError(f'there is a node {name} already')
        options.setdefault('workdir', self.workdir / 'nodes' / name)
        node = MistralNode(self, name, servers, **options)
        self.nodes[name] = node
        try:
            node.start()
        except BaseException:
            self.nodes.pop(name, None)
            raise
        self._save_state()
        return node

    def _wait_keeper(self, timeout: float = 10.0) -> None:
        """Let the keeper reap the servers and exit; SIGKILL it if not."""
        if self.keeper is None or self.keeper[0] == os.getpid():
            return
        pid, starttime = self.keeper
        deadline = time.monotonic() + timeout
        while is_alive(pid, starttime):
            if time.monotonic() >= deadline:
                self.log(f'keeper {pid} did not exit; sending SIGKILL')
                signal_all({pid}, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)
        self.keeper = None

    @classmethod
    def from_state(cls, workdir: str | os.PathLike[str],
                   log: Log = default_log) -> MistralHarness:
        """A harness for what an earlier ``start()`` left in ``workdir``.

        :raises HarnessError: if there is no state file there.
        """
        from .nodes import MistralNode

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
        harness.processes.load(state['servers'])
        for name, info in state.get('nodes', {}).items():
            node = MistralNode(harness, name, tuple(info['servers']),
                               workdir=Path(info['workdir']))
            node.processes.load(info['servers'])
            harness.nodes[name] = node
        if state.get('keeper'):
            harness.keeper = (state['keeper']['pid'],
                              state['keeper']['starttime'])
        return harness

    def status(self) -> dict[str, Any]:
        """What runs: each master (alive?) and its workers, the API."""
        servers = {}
        for server, pid in self.pids.items():
            members = family({pid: self._starttimes[server]})
            servers[server] = {
                'pid': pid,
                'alive': is_alive(pid, self._starttimes[server]),
                'workers': sorted(members - {pid}),
            }
        try:
            code = self._http('GET', '/v2/actions?limit=1', timeout=5)[0]
            api = f'HTTP {code}'
        except OSError as exc:
            api = f'not answering ({exc})'
        keeper = None
        if self.keeper:
            keeper = {'pid': self.keeper[0],
                      'alive': is_alive(*self.keeper)}
        return {'mistral_url': self.mistral_url, 'api': api,
                'servers': servers, 'keeper': keeper,
                'database': self.db_name,
                'config_file': str(self.config_file),
                'log_dir': str(self.log_dir), 'venv': str(self.venv)}

    def restart(self, servers: tuple[str, ...]) -> None:
        """Stop the given servers by PID, start them again, wait ready.

        The way users load new actions without mistral-hotload; the
        benchmark times it.
        """
        with Step(self.log, f'restarting {", ".join(servers)}'):
            self.processes.terminate(servers)
            self.processes.start(servers)
            self._save_state()
            self.processes.wait_ready(servers)

    def _pg(self, *statements: tuple[str, list[Any]]) -> list[Any]:
        """SQL in the ``postgres`` database (see ``Postgres.run``)."""
        return self.postgres.run(*statements)

    def _config(self) -> config.Config:
        return config.merge(
            config.session_config(
                self.tag, transport_url=self.transport_url,
                database_url=self.database_url, api_port=self.api_port,
                debug=self.debug),
            self.extra_config)

    def _write_config(self) -> None:
        config.write_config(self.config_file, self._config(),
                            f'Written by mistral_harness.py for {self.tag}')
        self.log(f'wrote {self.config_file}')

    def _db_manage(self) -> None:
        log_file = self.log_dir / 'db-manage.log'
        rotate(log_file)
        for command in (['upgrade', 'head'], ['populate']):
            argv = [str(self.bin_dir / 'mistral-db-manage'),
                    '--config-file', str(self.config_file), *command]
            with Step(self.log, 'mistral-db-manage ' + ' '.join(command)):
                code = run_logged(argv, log_file, env=server_env(self.venv),
                                  timeout=self.timeout)
                if code != 0:
                    raise HarnessError(
                        f'{shlex.join(argv)} failed (exit {code}); end of '
                        f'{log_file}:\n{tail(log_file)}')

    def _smoke(self) -> None:
        with Step(self.log, 'smoke workflow (std.echo + std.noop)'):
            message = f'hello from {self.tag}'
            execution = self.run_workflow(
                SMOKE_WORKFLOW, SMOKE_WORKFLOW_NAME, {'message': message},
                timeout=self.timeout, cleanup=True)
            if (execution['state'] != 'SUCCESS'
                    or execution['output'] != {'echoed': message}):
                raise HarnessError(
                    f'smoke workflow ended {execution["state"]} with '
                    f'output {execution["output"]!r} '
                    f'({execution.get("state_info")})\n'
                    f'{self.processes.diagnostics()}')

    def _save_state(self) -> None:
        write_json_atomic(self.state_file, {
            'tag': self.tag,
            'db_name': self.db_name,
            'api_port': self.api_port,
            'mistral_url': self.mistral_url,
            'config_file': str(self.config_file),
            'venv': str(self.venv),
            'workdir': str(self.workdir),
            'pg': self.pg,
            'servers': self.processes.dump(),
            'nodes': {name: {'workdir': str(node.workdir),
                             'servers': node.processes.dump()}
                      for name, node in self.nodes.items()},
            'keeper': ({'pid': self.keeper[0], 'starttime': self.keeper[1]}
                       if self.keeper else None),
        })
