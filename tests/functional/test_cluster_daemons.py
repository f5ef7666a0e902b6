"""A publisher and a mirror daemon on the real RabbitMQ, without Mistral.

Each test runs real daemon processes, each with its own state directory
and ``[DEFAULT] host``, on a ``signal_topic`` of its own so nothing else
on the broker hears them. They fail, never skip, without RabbitMQ.
"""

import json
import os
import re
import socket
import subprocess
import sys
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


def test_one_changed_module_costs_the_mirror_one_record_and_one_source(
        nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    for index in range(20):
        a.tree.write(f'greet{index}.py', GREET)
    a.daemon.start()
    b.daemon.start()
    wait_for(lambda: b.manifest_bytes() == a.manifest_bytes()
             and b.daemon.generation() > 0, 'the mirror to copy the tree')
    first = b.daemon.generation()
    a.tree.write('greet7.py', GREET.replace('hello', 'hi'))
    wait_for(lambda: a.daemon.generation() > first, 'the edit')
    wait_for(lambda: b.manifest_bytes() == a.manifest_bytes(),
             'the mirror to copy the edit')

    def copies():
        found = re.findall(r'Published generation (\d+) of the publisher '
                           r'\(node-a\): 20 modules, 20 actions, (\d+) '
                           r'records and (\d+) blobs fetched', b.log())
        return len(found) >= 2 and found

    copied = wait_for(copies, 'the mirror to log both copies')
    # The first copy took every record and source; the edit, one of each.
    assert copied[0][1:] == ('20', '1')  # twenty equal sources: one blob
    assert copied[-1] == (str(a.daemon.generation()), '1', '1')
    assert b.states.blobs.get(b.daemon.current().modules['greet7'].good
                              .sha256) == GREET.replace('hello',
                                                        'hi').encode()


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

    def __init__(self, states, flaw, source):
        super().__init__(states, KEY, 'rogue')
        self.flaw = flaw
        self.source = source

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
            # The module's source, not its record: the mirror gets that
            # far only when the signed index and the record check out.
            evil = b'import os\nos.system("echo pwned")\n'
            reply['blobs'] = {
                sha: publication.base64.b64encode(evil).decode()
                if sha == self.source else text
                for sha, text in reply['blobs'].items()}
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
            [RogueEndpoint(states, flaw, sha)], executor='threading')
        server.start()
        servers.append((server, transport))
        return sha, set(states.load().record_shas.values())

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
    sha, records = rogue_server(flaw)
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
    stored = {name for _d, _s, files in os.walk(b.states.blobs.root)
              for name in files}
    # At most the records the signed index names (checked against it).
    assert stored <= (records if flaw == 'blob not matching its hash'
                      else set()), 'nothing unsigned may be stored'
    assert sha not in stored
    b.daemon.stop()
    assert reason in b.log()


def test_mirror_mode_without_cluster_key_refuses_to_start(nodes):
    b = nodes('node-b', 'mirror', key=None)
    output = refusal_to_start(b.daemon.config)
    assert 'mode = mirror needs [hotload] cluster_key' in output
    assert not os.path.exists(b.states.state_dir)


def hotload(node: Node, *args: str) -> subprocess.CompletedProcess:
    """The mistral-hotload CLI with ``node``'s configuration file."""
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         node.daemon.config, *args],
        capture_output=True, text=True, timeout=120)


def cluster_status(node: Node, *args: str) -> tuple[int, dict, str]:
    """``status --cluster`` from ``node``: exit status, data, and the
    whole output (which must never show the key or the credentials)."""
    result = hotload(node, 'status', '--cluster', '-f', 'json', *args)
    assert result.stdout, result.stderr
    return (result.returncode, json.loads(result.stdout),
            result.stdout + result.stderr)


def converged(a: Node, b: Node) -> bool:
    return a.manifest_bytes() is not None and \
        b.manifest_bytes() == a.manifest_bytes()


def test_status_cluster_from_a_mirror_then_nodes_stopped(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    c = nodes('node-c', 'mirror')
    a.tree.write('greet.py', GREET)
    for node in (a, b, c):
        node.daemon.start()
    wait_for(lambda: converged(a, b) and converged(a, c),
             'the mirrors to converge')
    digest = store.sha256_hex(a.manifest_bytes())
    generation = a.daemon.generation()

    def seen_by_the_publisher():
        code, found, output = cluster_status(b)
        daemons = {n['host']: n['daemons'] for n in found['nodes']}
        seen = daemons.get('node-a', [{}])[0].get('mirrors_seen') or []
        return (code, found, output) if code == 0 and \
            {'node-b', 'node-c'} <= set(seen) else None

    # The mirror's configuration: transport_url and cluster_key, no
    # actions directory.
    code, found, output = wait_for(
        seen_by_the_publisher,
        'status --cluster to say converged, with both mirrors seen')
    assert found['publisher'] == 'node-a'
    assert (found['generation'], found['digest']) == (generation, digest)
    assert found['errors'] == []
    by_host = {n['host']: n for n in found['nodes']}
    assert set(by_host) == {'node-a', 'node-b', 'node-c'}
    for host, role in (('node-a', 'publisher'), ('node-b', 'mirror')):
        node = by_host[host]
        assert node['state'] == 'ok'
        (daemon,) = node['daemons']
        assert daemon['role'] == role
        assert (daemon['generation'], daemon['digest']) == (generation,
                                                            digest)
        assert daemon['verify_error'] is None
        assert daemon['error'] is None
    assert by_host['node-a']['daemons'][0]['pid'] == a.daemon.worker_pid()
    assert by_host['node-b']['daemons'][0]['pid'] == b.daemon.worker_pid()
    table = hotload(b, 'status', '--cluster')
    assert table.returncode == 0, table.stdout + table.stderr
    assert f'publisher pid {a.daemon.worker_pid()}: generation ' \
           f'{generation}, digest {digest[:12]}' in table.stdout
    assert KEY not in output + table.stdout + table.stderr
    assert 'guest' not in output + table.stdout + table.stderr

    # A mirror that stops answering is not simply missing: the publisher
    # heard it lately.
    c.daemon.stop()
    code, found, _ = cluster_status(b)
    assert code == 2, found
    by_host = {n['host']: n for n in found['nodes']}
    assert by_host['node-c'] == {'host': 'node-c', 'state': 'error',
                                 'daemons': [], 'processes': []}
    assert any(e.startswith('node-c: no daemon answered')
               for e in found['errors']), found['errors']
    assert by_host['node-b']['state'] == 'ok'

    a.daemon.stop()
    code, found, output = cluster_status(b, '--timeout', '1')
    assert code == 2, found
    assert found['publisher'].startswith('unreachable: ')
    assert 'no answer on topic' in found['publisher']
    assert any(e.startswith('the publisher is unreachable')
               for e in found['errors'])
    # The mirror still answers, and says what it serves.
    (node_b,) = [n for n in found['nodes'] if n['host'] == 'node-b']
    assert node_b['daemons'][0]['generation'] == generation
    assert KEY not in output and 'guest' not in output
    b.daemon.stop()


def test_a_mirror_with_another_key_is_unverified(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror', key='not-the-' + KEY)
    a.daemon.start()
    b.daemon.start()
    wait_for(lambda: a.daemon.generation() == 1, 'the publisher')
    wait_for(lambda: 'wrong signature' in (b.status().get('error') or ''),
             'the mirror to refuse the publisher')
    code, found, _ = cluster_status(a)
    assert code == 2, found
    by_host = {n['host']: n for n in found['nodes']}
    assert by_host['node-b']['state'] == 'unverified'
    assert 'has a wrong signature' in \
        by_host['node-b']['daemons'][0]['verify_error']
    assert by_host['node-a']['state'] == 'ok'
    b.daemon.stop()
    a.daemon.stop()


def test_a_new_publisher_continues_above_the_mirrors(nodes):
    first = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    first.tree.write('greet.py', GREET)
    first.daemon.start()
    b.daemon.start()
    wait_for(lambda: first.daemon.generation() == 1, 'the first publisher')
    first.tree.write('other.py', GREET.replace('Greet(', 'Other('))
    wait_for(lambda: first.daemon.generation() == 2, 'generation 2')
    first.tree.write('third.py', GREET.replace('Greet(', 'Third('))
    wait_for(lambda: first.daemon.generation() == 3, 'generation 3')
    wait_for(lambda: converged(first, b), 'the mirror at generation 3')
    first.daemon.stop()

    # The publisher moves: another node, an empty state directory.
    moved = nodes('node-m', 'publisher')
    moved.tree.write('greet.py', GREET)
    moved.daemon.start()
    wait_for(lambda: converged(moved, b),
             'the mirror to take the moved publisher\'s generation')
    assert moved.daemon.generation() == b.daemon.generation() == 4
    assert 'hot.greet.greet' in b.daemon.served()
    assert 'hot.other.other' not in b.daemon.served()
    assert re.search(r"WARNING hotload\.cluster \[.*\] mirror node-b serves "
                     r"generation 3 above this publisher's [01]; continuing "
                     r"at 4", moved.log())
    code, found, _ = wait_for(
        lambda: (lambda r: r if r[0] == 0 else None)(cluster_status(b)),
        'status --cluster to say converged')
    assert found['publisher'] == 'node-m'
    assert found['generation'] == 4
    moved.daemon.stop()
    b.daemon.stop()


def test_two_publishers_are_reported(nodes):
    a = nodes('node-a', 'publisher')
    other = nodes('node-x', 'publisher')
    a.daemon.start()
    wait_for(lambda: a.daemon.generation() == 1, 'the first publisher')
    other.daemon.start()
    wait_for(lambda: other.daemon.generation() == 1, 'the second publisher')
    wait_for(lambda: 'Two publishers: another publisher, node-x' in a.log(),
             'the first publisher to hear the second')
    code, found, _ = cluster_status(a)
    assert code == 2, found
    assert any(e.startswith('two publishers answer: node-a')
               for e in found['errors']), found['errors']
    by_host = {n['host']: n for n in found['nodes']}
    assert 'another publisher, node-x' in \
        by_host['node-a']['daemons'][0]['error']
    other.daemon.stop()
    a.daemon.stop()


def test_doctor_on_a_mirror_node(nodes):
    a = nodes('node-a', 'publisher')
    b = nodes('node-b', 'mirror')
    a.daemon.start()
    b.daemon.start()
    wait_for(lambda: converged(a, b), 'the mirror to converge')

    def doctor() -> tuple[subprocess.CompletedProcess, dict]:
        result = hotload(b, 'doctor', '--mistral-python', sys.executable,
                         '-f', 'json')
        rows = {r['Check']: r for r in json.loads(result.stdout)}
        assert KEY not in result.stdout + result.stderr
        assert 'guest' not in result.stdout + result.stderr
        return result, rows

    result, rows = doctor()
    assert list(rows) == ['provider', 'allow/deny lists', 'actions_dir',
                          'state_dir', 'broker', 'daemon', 'mode',
                          'cluster_key', 'publisher']
    assert rows['actions_dir']['Result'] == 'ok'
    assert 'mode = mirror' in rows['actions_dir']['Detail']
    for check in ('state_dir', 'broker', 'daemon', 'mode', 'cluster_key',
                  'publisher'):
        assert rows[check]['Result'] == 'ok', rows[check]
    assert rows['mode']['Detail'].startswith('mirror: ')
    assert rows['publisher']['Detail'].startswith('node-a answers on topic ')
    assert 'this node (node-b) serves generation 1' in \
        rows['publisher']['Detail']
    assert result.returncode == (1 if any(
        r['Result'] == 'FAIL' for r in rows.values()) else 0)

    a.daemon.stop()
    result, rows = doctor()
    assert result.returncode == 1
    assert rows['publisher']['Result'] == 'FAIL'
    assert 'no answer on topic' in rows['publisher']['Detail']
    assert 'start the daemon of the publishing node' in \
        rows['publisher']['Detail']
    b.daemon.stop()
