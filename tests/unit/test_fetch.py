"""An executor runs a version its node lacks by fetching it on demand.

The engine's side is a provider over the scanner's state directory (the
publisher's node); the executor's is a provider of node C over an empty
state directory (a node whose mirror is behind). The executor's publisher
client answers from a real :class:`publication.PublisherEndpoint` over
the publisher's state directory, called in-process; one test goes through
a real :class:`publication.Publication` on oslo.messaging's ``fake://``
driver, and ``tests/functional/test_cluster_fetch.py`` through RabbitMQ.
"""

import gc
import json
import logging
import os
import sys
import threading

import pytest
from mistral_lib import serialization
from mistral_lib.actions import context as ml_context
from oslo_config import cfg
from oslo_messaging._metrics import client as metrics
from oslo_messaging._tracing import client as tracing

from hotload import conf as hotload_conf
from hotload import descriptors
from hotload import exceptions
from hotload import fetch
from hotload import provider as provider_mod
from hotload import publication
from hotload import signals
from hotload import store
from hotload import versions
from tests.polling import wait_for
from tests.unit.conftest import GREET

KEY = 'unit-cluster-key-0123456789abcdef'
SERIAL_KEY = descriptors.HotloadAction.get_serialization_key()
NAME = 'hot.greet.greet'


class LocalPublisher(publication.PublisherClient):
    """The publisher's answers, in-process, through the client's checks.

    :param key: The key the publisher signs with.
    :param tamper: Edits each blob's base64 text before it is sent.
    :param gate: When given, ``blobs`` waits for it.
    """

    def __init__(self, states, key: str = KEY, tamper=None,
                 gate: threading.Event | None = None) -> None:
        self.endpoint = publication.PublisherEndpoint(states, key, 'node-a')
        self.topic = 'in-process'
        self.timeout = 1.0
        self.tamper = tamper
        self.gate = gate
        self.calls: list[str] = []
        self.timeouts: list[float] = []
        self.lock = threading.Lock()

    def factory(self, timeout: float) -> 'LocalPublisher':
        with self.lock:
            self.timeouts.append(timeout)
        return self

    def _call(self, method: str, **kwargs) -> dict:
        with self.lock:
            self.calls.append(method)
        if method == 'blobs' and self.gate is not None:
            assert self.gate.wait(30)
        reply = getattr(self.endpoint, method)({}, **kwargs)
        if reply.get('error'):
            raise exceptions.ClusterError(
                f'the publisher could not answer {method}: {reply["error"]}')
        if method == 'blobs' and self.tamper:
            reply['blobs'] = {sha: self.tamper(text)
                              for sha, text in reply['blobs'].items()}
        return reply


class Unreachable:
    """A publisher that never answers, as PublisherClient reports it."""

    def __init__(self) -> None:
        self.calls = 0

    def current_generation(self):
        self.calls += 1
        raise exceptions.ClusterError(
            'the publisher is unreachable: no answer on topic '
            'hotload_publisher within 1 s')


def node_conf(state_dir: str, tree, host: str, key: str | None = KEY,
              url: str = 'fake://') -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    hotload_conf.register_host_opt(conf)
    signals.register_transport_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('host', host)
    conf.set_override('state_dir', state_dir, 'hotload')
    conf.set_override('actions_dir', tree.root, 'hotload')
    conf.set_override('cluster_timeout', 1.0, 'hotload')
    if key:
        conf.set_override('cluster_key', key, 'hotload')
        # fake:// has no broker to check, and nothing leaves the process.
        conf.set_override('transport_url', url)
    return conf


def executor_provider(tmp_path, tree, key: str | None = KEY,
                      url: str = 'fake://'):
    """A provider of node C, whose state directory has nothing yet."""
    # Another process: the versions the engine's provider imported here
    # are not there.
    for name in [n for n in sys.modules
                 if n.startswith(versions.MOUNT_PREFIX)]:
        del sys.modules[name]
    conf = node_conf(str(tmp_path / 'node-c-state'), tree, 'node-c', key, url)
    return provider_mod.HotloadActionProvider('hotload', conf=conf)


def fed_by(executor, publisher) -> None:
    executor.fetcher._client_factory = publisher.factory


def sent(provider, name: str = NAME, **params) -> dict:
    """What the engine's provider sends for a new action ``name``."""
    action = provider.find(name).instantiate(params, {})
    outer = json.loads(
        serialization.get_polymorphic_serializer().serialize(action))
    return json.loads(outer['__serial_data'])


def received(data: dict):
    """The action an executor makes of what an engine sent."""
    return serialization.get_polymorphic_serializer().deserialize(
        json.dumps({'__serial_key': SERIAL_KEY,
                    '__serial_data': json.dumps(data)}))


def result(action):
    return action.run(ml_context.ActionContext())


def refusal(action) -> str:
    """The error a user sees for ``action``, checked for its frame."""
    error = result(action).error
    assert error.startswith(f'hot action {NAME} cannot run on host node-c: '
                            f'content {action.content_key} is not '
                            f'available (')
    return error


def fetch_failure(action) -> str:
    error = refusal(action)
    assert 'not on this node, and fetching from the publisher failed: ' \
        in error
    return error


@pytest.fixture
def engine(tree, scan, provider):
    tree.write('greet.py', GREET)
    scan()
    return provider


def test_executor_runs_content_fetched_from_the_publisher(
        tmp_path, tree, scan, engine, caplog):
    caplog.set_level(logging.INFO, 'hotload.fetch')
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    publisher = LocalPublisher(scan.states)
    fed_by(executor, publisher)
    action = received(data)
    assert result(action) == 'hello ann!'
    # The module's record, then its source.
    assert publisher.calls == ['current_generation', 'signed_manifest',
                               'blobs', 'blobs']
    assert all(0 < t <= 1.0 for t in publisher.timeouts)
    # Kept in memory: the node's state directory is its mirror's.
    assert not os.path.exists(executor.states.blobs.root)
    key = data['ref']['content_key']
    assert f'Fetched content {key} of hot action {NAME} from the ' \
           f'publisher (node-a): 1 blobs in ' in caplog.text
    assert KEY not in caplog.text
    # Another action of the version runs from memory.
    assert result(received(data)) == 'hello ann!'
    assert publisher.calls.count('blobs') == 2  # one record, one source


def test_fetched_content_lives_as_long_as_its_version_is_loaded(
        tmp_path, tree, scan, engine, monkeypatch):
    tree.write('helper.py', 'WORD = "fetched"\n')
    tree.write('late.py', GREET.replace(
        'def run(self, context):',
        'def run(self, context):\n        from . import helper\n'
        '        return helper.WORD\n\n    def unused(self):'))
    scan()
    engine.refresh()
    data = sent(engine, 'hot.late.greet', who='x')
    executor = executor_provider(tmp_path, tree)
    publisher = LocalPublisher(scan.states)
    fed_by(executor, publisher)
    monkeypatch.setattr(publication, 'MAX_BATCH', 1)  # one blob a call
    action = received(data)
    # The in-tree import happens at run time, from what was fetched.
    assert result(action) == 'fetched'
    # One a call: the module's record and the two sources.
    assert publisher.calls.count('blobs') == 3
    key = data['ref']['content_key']
    del action
    gc.collect()
    monkeypatch.setattr(versions, 'HOLD_GRACE', 0.0)
    executor.cache.sweep()
    assert key not in executor.cache.loaded()
    gc.collect()
    assert key not in executor.fetcher._fetched  # dropped with the mount
    assert result(received(data)) == 'fetched'
    assert publisher.calls.count('blobs') == 6


def test_a_manifest_signed_with_another_key_is_refused(
        tmp_path, tree, scan, engine, caplog):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    fed_by(executor, LocalPublisher(scan.states,
                                    key='another-key-entirely-0123456789'))
    error = fetch_failure(received(data))
    assert f'generation {data["ref"]["generation"]} of the publisher ' \
           f'(node-a) has a wrong signature' in error
    assert KEY not in error and KEY not in caplog.text
    assert 'wrong signature' in executor.describe()['errors'][-1]


def test_a_blob_that_does_not_match_its_hash_is_refused(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    fed_by(executor, LocalPublisher(
        scan.states, tamper=lambda text: 'cHJpbnQoMSkK'))  # print(1)
    error = fetch_failure(received(data))
    # The first blob asked for is the module's record.
    record = engine._table.manifest.record_shas['greet']
    assert f'blob {record} from the publisher (node-a) does not match its ' \
           f'sha256; refused' in error


def test_a_generation_that_does_not_serve_the_key_is_refused(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    tree.write('greet.py', GREET.replace('hello', 'hi'))
    newer = scan()
    # A reference that claims a generation that served another version.
    data['ref']['generation'] = newer.generation
    executor = executor_provider(tmp_path, tree)
    fed_by(executor, LocalPublisher(scan.states))
    error = fetch_failure(received(data))
    assert f'generation {newer.generation} of the publisher (node-a) does ' \
           f'not serve content {data["ref"]["content_key"]} of action ' \
           f'{NAME}' in error


def prune(scan, generation: int) -> None:
    os.unlink(publication.generation_path(scan.states, generation))


def test_a_pruned_generation_falls_back_to_the_current_one(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    tree.write('other.py', GREET.replace('Greet', 'Other'))
    scan()  # greet.py unchanged: the current generation still serves it
    prune(scan, data['ref']['generation'])
    executor = executor_provider(tmp_path, tree)
    publisher = LocalPublisher(scan.states)
    fed_by(executor, publisher)
    assert result(received(data)) == 'hello ann!'
    assert publisher.calls == ['current_generation', 'signed_manifest',
                               'signed_manifest', 'blobs', 'blobs']


def test_a_pruned_generation_whose_version_is_gone_is_refused(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    tree.write('greet.py', GREET.replace('hello', 'hi'))
    newer = scan()
    prune(scan, data['ref']['generation'])
    executor = executor_provider(tmp_path, tree)
    publisher = LocalPublisher(scan.states)
    fed_by(executor, publisher)
    error = fetch_failure(received(data))
    assert f'generation {newer.generation} of the publisher (node-a) does ' \
           f'not serve content {data["ref"]["content_key"]}' in error
    # Only the record the signed index names: no source is asked for.
    assert publisher.calls.count('blobs') == 1


def test_an_unreachable_broker_fails_the_action_at_once(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    # Nothing listens on port 1: refused at once. The URL's password
    # must not show.
    asked = []
    executor.cache._fetch = fetch.ContentFetcher(
        node_conf(str(tmp_path / 'node-c-state'), tree, 'node-c',
                  url='rabbit://guest:s3cret@127.0.0.1:1/'),
        executor.states.blobs, lambda timeout: asked.append(timeout))
    error = fetch_failure(received(data))
    assert 'the publisher is unreachable within 1 s: broker 127.0.0.1:1 ' \
           'unreachable' in error
    assert 's3cret' not in error
    assert asked == []  # oslo.messaging would retry it forever


def test_a_publisher_that_does_not_answer_fails_the_action(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    publisher = Unreachable()
    executor.fetcher._client_factory = lambda timeout: publisher
    error = fetch_failure(received(data))
    assert 'the publisher is unreachable: no answer on topic ' \
           'hotload_publisher within 1 s' in error
    assert executor.fetcher.bound() == 3.0  # broker check and two calls


def test_without_a_cluster_key_missing_content_fails_as_before(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree, key=None)
    assert executor.fetcher is None
    error = refusal(received(data))
    assert f'blob {data["ref"]["sha256"]} is not in ' \
           f'{executor.states.blobs.root}' in error
    assert 'publisher' not in error


def test_concurrent_actions_of_one_version_make_one_fetch(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    gate = threading.Event()
    publisher = LocalPublisher(scan.states, gate=gate)
    fed_by(executor, publisher)
    fetch, asking = executor.cache._fetch, []

    def counted(ref):
        asking.append(ref.content_key)
        return fetch(ref)

    executor.cache._fetch = counted
    results = []
    threads = [threading.Thread(
        target=lambda: results.append(result(received(data))))
        for _ in range(4)]
    for thread in threads:
        thread.start()
    # Every action wants the content before the first fetch gets it.
    wait_for(lambda: len(asking) == 4, 'four actions to ask for it')
    gate.set()
    for thread in threads:
        thread.join()
    assert results == ['hello ann!'] * 4
    assert publisher.calls.count('blobs') == 2  # one record, one source


def test_concurrent_actions_share_one_failure(tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    gate = threading.Event()
    publisher = LocalPublisher(scan.states, gate=gate,
                               tamper=lambda text: 'cHJpbnQoMSkK')
    fed_by(executor, publisher)
    fetcher, waiting = executor.fetcher, []
    wait = fetcher._wait

    def counted(*args):
        waiting.append(args)
        return wait(*args)

    # Counted where a caller joins the fetch under way: a caller merely
    # inside the fetcher could still miss it and start its own.
    fetcher._wait = counted
    errors = []
    threads = [threading.Thread(
        target=lambda: errors.append(fetch_failure(received(data))))
        for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(waiting) == 2, 'two actions to join the fetch')
    gate.set()
    for thread in threads:
        thread.join()
    assert len(errors) == 3 and len(set(errors)) == 1
    assert 'does not match its sha256' in errors[0]
    assert publisher.calls.count('blobs') == 1


def test_a_reference_without_generation_is_fetched_from_the_current_one(
        tmp_path, tree, scan, engine):
    data = sent(engine, who='ann')
    assert data['ref']['generation'] == engine.generation
    del data['ref']['generation']  # an engine of an older build
    assert versions.ActionRef.from_dict(data['ref']).generation == 0
    executor = executor_provider(tmp_path, tree)
    publisher = LocalPublisher(scan.states)
    fed_by(executor, publisher)
    assert result(received(data)) == 'hello ann!'
    # The module's record, then its source.
    assert publisher.calls == ['current_generation', 'signed_manifest',
                               'blobs', 'blobs']


@pytest.mark.parametrize('generation', [-1, True, '3', 1.5, None])
def test_a_reference_with_a_bad_generation_is_refused(
        tmp_path, tree, engine, generation):
    data = sent(engine, who='ann')
    data['ref']['generation'] = generation
    executor_provider(tmp_path, tree)
    error = result(received(data)).error
    assert error.startswith(f'hot action {NAME} cannot run on host node-c: '
                            f'the reference sent is invalid (generation ')
    assert 'is not a generation number' in error


def test_describe_gives_the_digest_of_the_manifest_served(
        tmp_path, tree, scan, engine):
    engine.refresh()  # as the daemon's signal does
    with open(scan.states.current_path, 'rb') as stream:
        assert engine.describe()['digest'] == store.sha256_hex(stream.read())
    assert executor_provider(tmp_path, tree).describe()['digest'] is None


def test_fetch_over_oslo_messaging(tmp_path, tree, scan, engine):
    """A real Publication answers on the fake driver."""
    data = sent(engine, who='ann')
    executor = executor_provider(tmp_path, tree)
    conf = node_conf(scan.states.state_dir, tree, 'node-a')
    for each in (conf, executor.conf):
        # oslo.messaging registers these on Mistral's cfg.CONF only.
        each.register_opts(metrics.oslo_messaging_metrics,
                           group='oslo_messaging_metrics')
        each.register_opts(tracing.oslo_messaging_tracing,
                           group='oslo_messaging_tracing')
    serving = publication.Publication(conf, scan.states)
    serving.start()
    try:
        wait_for(serving.server.started.is_set, 'the publisher to serve')
        # The fake driver connects the transports of one object only.
        executor.fetcher._client_factory = \
            lambda timeout: publication.PublisherClient(
                executor.conf, serving.transport, timeout)
        assert result(received(data)) == 'hello ann!'
    finally:
        serving.close()


def cluster_provider(scan, tree):
    """A provider of the scanner's node, on a cluster."""
    conf = node_conf(scan.states.state_dir, tree, 'node-b')
    conf.set_override('action_prefix', scan.prefix, 'hotload')
    return provider_mod.HotloadActionProvider('hotload', conf=conf)


def test_find_waits_for_the_mirror_when_the_publisher_is_ahead(
        tree, scan, engine):
    tree.write('late.py', GREET)
    newer = scan()
    older = scan.states.manifest(scan.states.index(newer.generation - 1))
    # This node's mirror is still at the older generation ...
    scan.states.publish(older)
    provider = cluster_provider(scan, tree)
    provider.fetcher.publisher_generation = lambda: newer.generation
    assert provider.generation == older.generation
    # ... and publishes the newer one while an engine looks the name up.
    later = threading.Timer(0.2, scan.states.publish, [newer])
    later.start()
    try:
        assert provider.find('hot.late.greet') is not None
    finally:
        later.join()


def test_find_does_not_wait_when_the_publisher_is_not_ahead(
        tree, scan, engine):
    provider = cluster_provider(scan, tree)
    asked = []
    provider.fetcher.publisher_generation = lambda: asked.append(1) or \
        provider.generation
    assert provider.find('hot.nothing.here') is None
    assert provider.find('std.echo_not_hot') is None
    assert asked == [1]  # only the name with the action prefix
