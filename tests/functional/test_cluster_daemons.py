"""A publisher and a mirror daemon on the real RabbitMQ, without Mistral.

Each test runs real daemon processes, each with its own state directory
and ``[DEFAULT] host``, on a ``signal_topic`` of its own so nothing else
on the broker hears them. They fail, never skip, without RabbitMQ.
"""

import os
import socket
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from hotload import manifest
from hotload import publication
from hotload import signing
from hotload import store
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.conftest import Tree
from tests.unit.test_daemon import DaemonProcess
from tests.unit.test_daemon import refusal_to_start

BROKER = ('127.0.0.1', 5672)
URL = 'rabbit://guest:guest@127.0.0.1:5672/'
KEY = 'cluster-key-' + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def broker():
    """RabbitMQ must be there: a missing broker fails every test."""
    try:
        socket.create_connection(BROKER, timeout=5).close()
    except OSError as exc:
        pytest.fail(f'RabbitMQ is not reachable at {BROKER[0]}:{BROKER[1]} '
                    f'({exc}); tools/ensure-services starts it')


@pytest.fixture
def topic():
    return f'hotload_test_{uuid.uuid4().hex}'


class Node:
    """A daemon of one simulated node: its directory, config and state."""

    def __init__(self, base, name: str, topic: str, mode: str,
                 key: str | None = KEY) -> None:
        self.base = base / name
        self.base.mkdir(mode=0o755)
        os.chmod(self.base, 0o755)
        # A mirror has no actions directory at all.
        self.tree = Tree(str(self.base / 'actions')) if mode == 'publisher' \
            else Tree.__new__(Tree)
        if mode != 'publisher':
            self.tree.root = str(self.base / 'no-actions-dir')
        options = {'mode': mode, 'signal_topic': topic,
                   'mirror_check_interval': 1, 'cluster_timeout': 1}
        if key:
            options['cluster_key'] = key
        self.daemon = DaemonProcess(self.tree, str(self.base / 'state'),
                                    str(self.base / 'daemon.log'), **options)
        with open(self.daemon.config, 'a') as stream:
            # debug: the options are logged, so the log must show the key
            # is not. An exchange of the test's own, and auto_delete: what
            # it declares on the broker goes with it.
            stream.write(f'[DEFAULT]\ntransport_url = {URL}\n'
                         f'host = {name}\ndebug = true\n'
                         f'control_exchange = {topic}\n'
                         f'[oslo_messaging_rabbit]\n'
                         f'amqp_auto_delete = true\n')
        self.states = self.daemon.states

    def manifest_bytes(self) -> bytes | None:
        try:
            with open(self.states.current_path, 'rb') as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def status(self) -> dict:
        return self.states.load_status()

    def log(self) -> str:
        with open(self.daemon.log_path, errors='replace') as stream:
            return stream.read()


@pytest.fixture
def nodes(tmp_path, topic):
    os.chmod(tmp_path, 0o755)
    started = []

    def make(name, mode, key=KEY):
        node = Node(tmp_path, name, topic, mode, key)
        started.append(node)
        return node

    yield make
    for node in started:
        node.daemon.kill_everything()


def test_a_drop_on_the_publisher_is_mirrored_byte_for_byte(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    a.daemon.start()
    b.daemon.start()
    wait_for(lambda: a.daemon.generation() == 1, 'the first generation')
    a.tree.write('greet.py', GREET)
    wait_for(lambda: 'hot.greet.greet' in a.daemon.served(), 'the drop')
    wait_for(lambda: b.manifest_bytes() == a.manifest_bytes(),
             'the mirror to serve the identical generation')
    current = b.daemon.current()
    assert current.generation == a.daemon.generation() == 2
    assert 'hot.greet.greet' in b.daemon.served()
    module = current.modules['greet'].good
    assert b.states.blobs.get(module.sha256) == \
        a.states.blobs.get(module.sha256)
    assert os.path.exists(publication.generation_path(b.states, 2))
    status = wait_for(lambda: b.status().get('generation') == 2
                      and b.status(), 'the mirror\'s status')
    assert status['host'] == 'node-b' and status['mode'] == 'mirror'
    assert status['error'] is None
    assert status['publisher']['host'] == 'node-a'
    assert a.status()['host'] == 'node-a'
    b.daemon.stop()
    a.daemon.stop()
    for node in (a, b):
        assert KEY not in node.log()
        with open(node.states.status_path) as stream:
            assert KEY not in stream.read()


def test_a_mirror_started_before_the_publisher_catches_up(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    a.tree.write('greet.py', GREET)
    b.daemon.start()
    status = wait_for(lambda: (b.status().get('error') or '').startswith(
        'the publisher is unreachable') and b.status(),
        'the mirror to report the publisher unreachable')
    assert 'within 1 s' in status['error']
    assert b.manifest_bytes() is None
    assert b.daemon.process.poll() is None

    a.daemon.start()
    wait_for(lambda: a.daemon.generation() == 1, 'the publisher')
    wait_for(lambda: b.manifest_bytes() == a.manifest_bytes(),
             'the mirror to catch up')
    assert 'hot.greet.greet' in b.daemon.served()
    wait_for(lambda: b.status().get('error') is None and
             b.status().get('generation') == 1, 'the error to clear')
    b.daemon.stop()
    a.daemon.stop()


def test_a_mirror_with_another_key_refuses_the_generation(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror', key='not-the-' + KEY)
    a.tree.write('greet.py', GREET)
    a.daemon.start()
    wait_for(lambda: a.daemon.generation() == 1, 'the publisher')
    b.daemon.start()
    status = wait_for(lambda: 'wrong signature' in (
        b.status().get('error') or '') and b.status(), 'the refusal')
    assert 'generation 1 from the publisher (node-a)' in status['error']
    assert b.manifest_bytes() is None
    assert b.states.generation_numbers() == []
    b.daemon.stop()
    a.daemon.stop()
    assert 'wrong signature' in b.log()
    assert KEY not in b.log() + a.log()


def rogue_state(base) -> tuple[store.ManifestStore, str]:
    """A state directory with one generation serving greet.py."""
    states = store.ManifestStore(str(base / 'rogue'))
    sha = states.blobs.put(GREET.encode())
    record = manifest.ModuleRecord(
        name='greet', path='greet.py', good=manifest.ModuleVersion(
            sha256=sha, imports={},
            content_key=manifest.content_key('greet', sha, {}),
            actions=(manifest.ActionSpec(
                name='hot.greet.greet', class_name='Greet',
                declared_name=None, input='name', description='',
                line=1),)))
    states.publish(manifest.Manifest.build(
        {'greet': record}, 'hotload_actions', 'hot', 1))
    return states, sha


class RogueEndpoint(publication.PublisherEndpoint):
    """Answers like the publisher, with one thing wrong."""

    def __init__(self, states, flaw):
        super().__init__(states, KEY, 'rogue')
        self.flaw = flaw

    def signed_manifest(self, ctxt, generation):
        reply = super().signed_manifest(ctxt, generation)
        if self.flaw == 'signed with another key':
            reply['signature'] = signing.sign(
                reply['manifest'].encode(), 'rogue-key')
        elif self.flaw == 'unsigned':
            reply['signature'] = None
        return reply

    def blobs(self, ctxt, sha256s):
        reply = super().blobs(ctxt, sha256s)
        if self.flaw == 'blob not matching its hash':
            evil = b'import os\nos.system("echo pwned")\n'
            reply['blobs'] = {sha: publication.base64.b64encode(
                evil).decode() for sha in reply['blobs']}
        return reply


@pytest.fixture
def rogue_server(topic, tmp_path):
    """Start an RPC server on the publisher's topic in this process."""
    servers = []
    conf = cfg.CONF

    def start(flaw):
        states, sha = rogue_state(tmp_path)
        transport = oslo_messaging.get_rpc_transport(conf, url=URL)
        # As the daemons declare the test's exchange (read when the server
        # connects, below).
        conf.set_override('amqp_auto_delete', True,
                          group='oslo_messaging_rabbit')
        server = oslo_messaging.get_rpc_server(
            transport, publication.target(f'{topic}_publisher',
                                          server='rogue', exchange=topic),
            [RogueEndpoint(states, flaw)], executor='threading')
        server.start()
        servers.append((server, transport))
        return sha

    yield start
    for server, transport in servers:
        server.stop()
        server.wait()
        transport.cleanup()
    if servers:
        conf.clear_override('amqp_auto_delete',
                            group='oslo_messaging_rabbit')


@pytest.mark.parametrize('flaw', ['blob not matching its hash',
                                  'signed with another key', 'unsigned'])
def test_a_rogue_publisher_cannot_make_a_mirror_serve(nodes, rogue_server,
                                                      flaw):
    sha = rogue_server(flaw)
    b = nodes('node-b', 'mirror')
    b.daemon.start()
    reason = {'blob not matching its hash': f'blob {sha} of generation 1 '
                                            f'from the publisher (rogue) '
                                            f'does not match its sha256',
              'signed with another key': 'has a wrong signature',
              'unsigned': 'is not signed'}[flaw]
    wait_for(lambda: reason in (b.status().get('error') or ''),
             f'the mirror to refuse ({reason})')
    assert b.manifest_bytes() is None
    assert b.states.generation_numbers() == []
    blobs = os.listdir(b.states.blobs.root)
    assert blobs == [], 'nothing unsigned may be stored'
    b.daemon.stop()
    assert reason in b.log()


def test_mirror_mode_without_cluster_key_refuses_to_start(nodes):
    b = nodes('node-b', 'mirror', key=None)
    output = refusal_to_start(b.daemon.config)
    assert 'mode = mirror needs [hotload] cluster_key' in output
    assert not os.path.exists(b.states.state_dir)
