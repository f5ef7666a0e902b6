"""A real node: Mistral 23 (API, engine, executor) and the daemon.

Mistral comes up once per test session through ``tools/mistral_harness.py``
(its own virtualenv with this project installed, PostgreSQL, RabbitMQ,
authentication off), with ``[hotload]`` in its ``mistral.conf`` pointing
at a test actions directory. The daemon runs from this environment with
the same ``mistral.conf``, so it signals the providers over RabbitMQ.
Every process is stopped by PID at the end.

A test that asks for ``cluster`` also gets nodes B and C of the same
Mistral (see ``Cluster``), started once per session; such tests run after
all others, so the single-node tests never see an engine or executor of
another node.
"""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mistralclient.api import client as mistral_client

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / 'tools'))

import mistral_harness  # noqa: E402

from hotload import store  # noqa: E402
from tests.polling import DEADLINE  # noqa: E402
from tests.polling import wait_for  # noqa: E402

PREFIX = 'hot'
#: ``[hotload] cluster_key`` of every node: the publisher on node A signs
#: with it, the mirrors on B and C check with it.
CLUSTER_KEY = 'functional-cluster-key-' + os.urandom(16).hex()
#: Node A's ``[DEFAULT] host``.
NODE_A = 'node-a'


def children(pid: int) -> set[int]:
    """PIDs of the direct children of ``pid`` (Mistral's workers)."""
    found = set()
    for task in Path(f'/proc/{pid}/task').iterdir():
        text = (task / 'children').read_text().split()
        found.update(int(p) for p in text)
    return found


class Daemon:
    """mistral-hotload-daemon for the node, started and stopped by PID."""

    def __init__(self, config_file: Path, log_path: Path, state_dir: Path):
        self.config_file = config_file
        self.log_path = log_path
        self.states = store.ManifestStore(str(state_dir))
        self.process = None
        #: More command line arguments, e.g. another --config-file.
        self.extra_args: list[str] = []

    def start(self) -> 'Daemon':
        # Its temporary files (the probe's) beside its log, not in the
        # machine's /tmp: a daemon a test kills leaves them behind.
        temporary = self.log_path.parent / 'tmp'
        temporary.mkdir(mode=0o700, exist_ok=True)
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                [sys.executable, '-c',
                 'from hotload.cmd.daemon import main; main()',
                 '--config-file', str(self.config_file), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, 'TMPDIR': str(temporary)})
        wait_for(self._published, 'the daemon to publish its first scan')
        return self

    def _published(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f'the daemon exited with {self.process.returncode}; end of '
                f'{self.log_path}:\n{self.log_path.read_text()[-3000:]}')
        return (self.states.writer_running()
                and self.states.load_status().get('pid')
                in children(self.process.pid))

    def kill(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the daemon's process group and wait until it is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=DEADLINE)
        wait_for(lambda: not self.states.writer_running(),
                 'the daemon to release the state directory')

    def generation(self) -> int:
        current = self.states.load()
        return current.generation if current else 0

    def digest(self) -> str | None:
        """sha256 of the manifest its state directory serves."""
        try:
            return store.sha256_hex(
                Path(self.states.current_path).read_bytes())
        except FileNotFoundError:
            return None


class Node:
    """Mistral, the daemon and the directory they share."""

    def __init__(self, harness, actions_dir: Path, daemon: Daemon):
        self.harness = harness
        self.actions_dir = actions_dir
        self.daemon = daemon
        self.client = mistral_client.client(
            mistral_url=harness.mistral_url)
        self.mistral_pids = self.server_pids()

    def server_pids(self) -> dict[str, tuple[int, frozenset]]:
        """Each server's master PID and its workers' PIDs."""
        return {name: (pid, frozenset(children(pid)))
                for name, pid in self.harness.pids.items()}

    def write(self, relpath: str, text: str) -> Path:
        """Write a module the way an operator drops one in: temp + rename."""
        path = self.actions_dir / relpath
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        temporary = path.with_name(f'.{path.name}.tmp')
        temporary.write_text(text)
        os.chmod(temporary, 0o644)
        os.rename(temporary, path)
        return path

    def listed(self) -> set[str]:
        """Action names as GET /v2/actions returns them, but Mistral's."""
        return {a.name for a in self.client.actions.list(limit=-1)
                if not a.name.startswith('std.')}

    def wait_listed(self, name: str) -> None:
        wait_for(lambda: name in self.listed(), f'{name} in GET /v2/actions')

    def wait_unlisted(self, name: str) -> None:
        wait_for(lambda: name not in self.listed(),
                 f'{name} gone from GET /v2/actions')

    def hotload(self, *args: str) -> subprocess.CompletedProcess:
        """The mistral-hotload CLI, configured like the node."""
        return subprocess.run(
            [sys.executable, '-m', 'hotload.cli.main', '--config-file',
             str(self.harness.config_file), *args],
            capture_output=True, text=True, timeout=120)

    def run(self, workflow: str, timeout: float = 60.0, **inputs):
        """Start ``workflow`` and wait for it to end; the execution."""
        execution = self.client.executions.create(workflow,
                                                  workflow_input=inputs)
        return self.wait_execution(execution.id, timeout)

    def wait_execution(self, execution_id: str, timeout: float = 60.0):
        return wait_for(
            lambda: self._ended(execution_id),
            f'execution {execution_id} to end', deadline=timeout)

    def _ended(self, execution_id: str):
        execution = self.client.executions.get(execution_id)
        return execution if execution.state in ('SUCCESS', 'ERROR') \
            else None


@pytest.fixture(scope='session')
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp('node')
    os.chmod(base, 0o755)
    actions_dir = base / 'actions'
    actions_dir.mkdir(mode=0o755)
    state_dir = base / 'state'
    harness = mistral_harness.MistralHarness(
        mistral_harness.default_venv(), base / 'mistral',
        extra_config={
            'DEFAULT': {'host': NODE_A},
            'engine': {'host': NODE_A},
            'executor': {'host': NODE_A},
            'hotload': {
                'actions_dir': str(actions_dir),
                'state_dir': str(state_dir),
                'action_prefix': PREFIX,
                'probe_timeout': 10,
                # The publisher serves mirrors only with a key; a single
                # node works the same with or without one.
                'cluster_key': CLUSTER_KEY,
            }})
    with harness:
        daemon = Daemon(harness.config_file, base / 'daemon.log', state_dir)
        daemon.start()
        try:
            yield Node(harness, actions_dir, daemon)
        finally:
            daemon.kill()


#: ``[hotload]`` of nodes B and C: each runs a mirror daemon.
MIRROR_HOTLOAD: dict[str, object] = {
    'mode': 'mirror',
    'cluster_key': CLUSTER_KEY,
    'action_prefix': PREFIX,
    # Announcements make mirrors converge; the periodic comparison only
    # catches what was missed, which no test here waits for.
    'mirror_check_interval': 30,
    'cluster_timeout': 5,
}


class Cluster:
    """Three simulated Mistral nodes on this machine, one database, one broker.

    ``a`` is the session's ``node`` (its harness runs API, engine and
    executor; ``node`` also has the daemon, the client and the actions
    directory); ``b`` runs an engine and an executor; ``c`` only an
    executor, and its ``mistral.conf`` points ``[database] connection``
    at a closed port. ``b`` and ``c`` are ``MistralNode`` objects; all
    three have ``host``, ``servers``, ``pids``, ``config_file``,
    ``state_dir`` and ``server_log(server)``. ``daemons`` holds each
    node's daemon by letter: the publisher (``node.daemon``) on ``a``,
    mirrors on ``b`` and ``c``.
    """

    def __init__(self, node: Node, b, c, mirrors: dict[str, Daemon]) -> None:
        self.node = node
        self.a = node.harness
        self.b = b
        self.c = c
        #: Every node by its letter.
        self.nodes = {'a': self.a, 'b': b, 'c': c}
        self.daemons = {'a': node.daemon, **mirrors}
        self.started_pids = self.server_pids()

    def generations(self) -> dict[str, int]:
        """``{letter: generation its state directory serves}``."""
        return {letter: daemon.generation()
                for letter, daemon in self.daemons.items()}

    def converged(self) -> bool:
        """Every node's state directory holds the publisher's manifest."""
        digests = {letter: daemon.digest()
                   for letter, daemon in self.daemons.items()}
        return len(set(digests.values())) == 1 and None not in \
            digests.values()

    def wait_converged(self, what: str = 'every node on the publisher\'s '
                       'generation') -> int:
        """Wait until every node serves the publisher's generation."""
        wait_for(self.converged, what)
        return self.node.daemon.generation()

    def server_pids(self) -> dict[str, dict[str, tuple[int, frozenset]]]:
        """``{host: {server: (master PID, its workers' PIDs)}}``."""
        return {member.host: {server: (pid, frozenset(children(pid)))
                              for server, pid in member.pids.items()}
                for member in self.nodes.values()}

    def server_logs(self, server: str) -> dict[str, Path]:
        """``{host: log file}`` of ``server`` on every node that runs it."""
        return {member.host: member.server_log(server)
                for member in self.nodes.values()
                if server in member.servers}


@pytest.fixture(scope='session')
def cluster(node, tmp_path_factory):
    """Nodes B and C join the session's node, which is node A.

    Started when the first test asks for it, stopped by PID at the end
    of the session.
    """
    base = tmp_path_factory.mktemp('cluster')
    os.chmod(base, 0o755)
    harness = node.harness
    with contextlib.ExitStack() as stack:
        b = harness.add_node('node-b', ('engine', 'executor'),
                             workdir=base / 'node-b', hotload=MIRROR_HOTLOAD)
        stack.callback(b.stop)
        c = harness.add_node('node-c', ('executor',), database=False,
                             workdir=base / 'node-c', hotload=MIRROR_HOTLOAD)
        stack.callback(c.stop)
        mirrors = {}
        for letter, member in (('b', b), ('c', c)):
            mirrors[letter] = Daemon(member.config_file,
                                     member.workdir / 'daemon.log',
                                     member.state_dir)
            stack.callback(mirrors[letter].kill)
            mirrors[letter].start()
        cluster = Cluster(node, b, c, mirrors)
        cluster.wait_converged('the mirrors to copy the publisher')
        yield cluster


def pytest_collection_modifyitems(items):
    """Tests that use the cluster last (a stable sort keeps the rest).

    Once nodes B and C run, their engine and executor take part in every
    workflow, and their state directories are not node A's.
    """
    items.sort(key=lambda item: 'cluster' in getattr(
        item, 'fixturenames', ()))


@pytest.fixture(autouse=True)
def mistral_never_restarts(request):
    """After every test: the same Mistral processes serve (no restart)."""
    yield
    if 'node' in request.fixturenames:
        node = request.getfixturevalue('node')
        assert node.server_pids() == node.mistral_pids
    if 'cluster' in request.fixturenames:
        cluster = request.getfixturevalue('cluster')
        if isinstance(cluster, Cluster):  # not a module's own ``cluster``
            assert cluster.server_pids() == cluster.started_pids
