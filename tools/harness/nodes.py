"""More simulated nodes of one Mistral session, on this machine.

Production Mistral runs API, engine and executor processes on several
nodes that share one RabbitMQ and one database. A ``MistralNode`` is such
a node, simulated: a name (its ``[DEFAULT] host``, which is also the RPC
server name of its engine and executor), the servers it runs, its own
``mistral.conf``, log directory and ``[hotload] state_dir``, and extra
``[hotload]`` options (a mirror daemon's ``mode`` and ``cluster_key``,
say). It shares the session's database and RabbitMQ topics, so engines
and executors of every node serve the same workflows.

A node started with ``database=False`` has ``[database] connection``
pointing at a port of 127.0.0.1 where nothing listens, as an executor
node that cannot reach the database would: any use fails at once and
shows up in its logs.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from . import config
from .common import HarnessError
from .processes import free_port
from .processes import is_alive
from .processes import refuses_connections
from .servers import SERVERS
from .servers import ServerProcesses

if TYPE_CHECKING:
    from .mistral import MistralHarness

_HOST_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')


class MistralNode:
    """One more node of a running ``MistralHarness`` session.

    :param session: the harness whose database and topics it shares.
    :param name: its ``[DEFAULT] host`` (and ``[engine]``/``[executor]``
        ``host``, the RPC server names).
    :param servers: which of ``api``, ``engine``, ``executor`` it runs.
    :param workdir: its directory: ``mistral.conf``, ``logs/``, ``state/``.
    :param database: False for a node that cannot reach the database.
    :param state_dir: its ``[hotload] state_dir`` (``<workdir>/state``).
    :param actions_dir: its ``[hotload] actions_dir`` (a publisher's);
        not set when None.
    :param hotload: more ``[hotload]`` options (``mode``, ``cluster_key``).
    :param extra_config: more options, ``{section: {key: value}}``; they
        win over everything else.
    :param api_port: when it runs the API: its port (a free one if None).

    Readable after ``start()``: ``pids`` (``{server: master PID}``),
    ``config_file``, ``log_dir``, ``server_log(server)``.
    """

    def __init__(self, session: MistralHarness, name: str,
                 servers: tuple[str, ...] = ('engine', 'executor'), *,
                 workdir: Path, database: bool = True,
                 state_dir: Path | None = None,
                 actions_dir: Path | None = None,
                 hotload: Mapping[str, Any] | None = None,
                 extra_config: Mapping[str, Mapping[str, Any]] | None = None,
                 api_port: int | None = None) -> None:
        if not _HOST_RE.match(name):
            raise HarnessError(f'bad node name {name!r}')
        unknown = set(servers) - set(SERVERS)
        if unknown or not servers:
            raise HarnessError(f'node {name}: servers must be some of '
                               f'{SERVERS}, not {servers}')
        self.session = session
        self.name = name
        self.servers = tuple(s for s in SERVERS if s in servers)
        self.workdir = Path(workdir).absolute()
        self.database = database
        self.state_dir = Path(state_dir or self.workdir / 'state').absolute()
        self.actions_dir = actions_dir
        self.hotload = dict(hotload or {})
        self.extra_config = extra_config
        self.api_port = api_port
        self.config_file = self.workdir / 'mistral.conf'
        self.log_dir = self.workdir / 'logs'
        self.processes = ServerProcesses(
            session.venv, self.config_file, self.log_dir, self.workdir,
            api_ready=self._api_answers, timeout=session.timeout,
            die_with_parent=session.die_with_parent, label=name,
            log=lambda message: session.log(f'[{name}] {message}'))

    @property
    def host(self) -> str:
        """Its ``[DEFAULT] host``: the name."""
        return self.name

    @property
    def pids(self) -> dict[str, int]:
        """``{server: PID}`` of its master processes."""
        return self.processes.pids

    def server_log(self, server: str) -> Path:
        """Log file of one of its servers."""
        return self.processes.server_log(server)

    def family(self) -> set[int]:
        """Every live process of its servers (masters and workers)."""
        return self.processes.family()

    def alive(self) -> dict[str, bool]:
        """``{server: True while its master runs}``."""
        return {s: is_alive(pid, self.processes.starttimes[s])
                for s, pid in self.pids.items()}

    def config(self) -> config.Config:
        """What its ``mistral.conf`` says."""
        session = self.session
        if self.database:
            database_url = session.database_url
        else:
            database_url = (
                f'postgresql+psycopg2://{session.postgres.user}@127.0.0.1:'
                f'{config.UNREACHABLE_DB_PORT}/{session.db_name}')
        hotload: dict[str, Any] = {'state_dir': str(self.state_dir)}
        if self.actions_dir is not None:
            hotload['actions_dir'] = str(self.actions_dir)
        hotload.update(self.hotload)
        return config.merge(
            config.session_config(
                session.tag, transport_url=session.transport_url,
                database_url=database_url,
                api_port=self.api_port if 'api' in self.servers else None,
                debug=session.debug),
            {'DEFAULT': {'host': self.name},
             'engine': {'host': self.name},
             'executor': {'host': self.name},
             'hotload': hotload},
            self.extra_config)

    def start(self) -> None:
        """Write its configuration, start its servers, wait until ready.

        Stops what it started if any of it fails.
        """
        if not self.session.db_name:
            raise HarnessError(f'node {self.name}: the session is not up')
        if not self.database and not refuses_connections(
                config.UNREACHABLE_DB_PORT):
            raise HarnessError(
                f'node {self.name} must not reach a database, but something '
                f'listens on 127.0.0.1:{config.UNREACHABLE_DB_PORT}')
        if 'api' in self.servers and self.api_port is None:
            self.api_port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        config.write_config(
            self.config_file, self.config(),
            f'Written by mistral_harness.py: node {self.name} of '
            f'{self.session.tag}')
        try:
            self.processes.start(self.servers)
            self.processes.wait_ready(self.servers)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End its servers by PID (idempotent); the session goes on."""
        try:
            self.processes.terminate()
        finally:
            self.processes.forget()
            if self.session.nodes.pop(self.name, None) is not None \
                    and self.session.state_file.exists():
                self.session._save_state()

    def _api_answers(self) -> bool:
        url = f'http://127.0.0.1:{self.api_port}/v2/actions'
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status == 200
        except OSError:
            return False
