"""An executor fetches the content its node lacks from a real publisher.

The publisher is a real daemon process (node A) on the real RabbitMQ, on
a ``signal_topic`` and exchange of the test's own; the engine's and the
executor's providers run in this process: the engine's over A's state
directory, the executor's (node C, whose mirror is behind) over an empty
one. The tests fail, never skip, without RabbitMQ.
"""

import os
import socket
import sys
import time
import uuid

import pytest
from oslo_messaging._drivers import amqp
from oslo_messaging._metrics import client as metrics
from oslo_messaging._tracing import client as tracing

from hotload import provider as provider_mod
from hotload import versions
from tests.functional.test_cluster_daemons import BROKER
from tests.functional.test_cluster_daemons import KEY
from tests.functional.test_cluster_daemons import URL
from tests.functional.test_cluster_daemons import Node
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.test_fetch import NAME
from tests.unit.test_fetch import fetch_failure
from tests.unit.test_fetch import node_conf
from tests.unit.test_fetch import received
from tests.unit.test_fetch import result
from tests.unit.test_fetch import sent


@pytest.fixture(autouse=True)
def broker():
    """RabbitMQ must be there: a missing broker fails every test."""
    try:
        socket.create_connection(BROKER, timeout=5).close()
    except OSError as exc:
        pytest.fail(f'RabbitMQ is not reachable at {BROKER[0]}:{BROKER[1]} '
                    f'({exc}); tools/ensure-services starts it')


@pytest.fixture
def publisher(tmp_path):
    """Node A's publisher daemon, not started; signing with ``key``."""
    os.chmod(tmp_path, 0o755)
    topic = f'hotload_test_{uuid.uuid4().hex}'
    made = []

    def make(key: str = KEY) -> Node:
        node = Node(tmp_path, 'node-a', topic, 'publisher', key)
        node.topic = topic
        made.append(node)
        return node

    yield make
    for node in made:
        node.daemon.kill_everything()


def publishing(node: Node) -> Node:
    """``node`` started, serving greet.py."""
    node.daemon.start()
    wait_for(lambda: node.daemon.generation() == 1, 'the first generation')
    node.tree.write('greet.py', GREET)
    wait_for(lambda: NAME in node.daemon.served(), 'the drop')
    return node


@pytest.fixture
def providers(tmp_path):
    """Makes the engine's provider of node A and the executor's of C."""
    made = []

    def make(a: Node):
        engine = provider_mod.HotloadActionProvider('hotload', conf=node_conf(
            a.states.state_dir, a.tree, 'node-a', key=None))
        # The executor is another process: nothing the engine mounted.
        for name in [n for n in sys.modules
                     if n.startswith(versions.MOUNT_PREFIX)]:
            del sys.modules[name]
        conf = node_conf(str(tmp_path / 'node-c-state'), a.tree, 'node-c',
                         key=KEY, url=URL)
        # oslo.messaging registers these on Mistral's cfg.CONF only.
        conf.register_opts(metrics.oslo_messaging_metrics,
                           group='oslo_messaging_metrics')
        conf.register_opts(tracing.oslo_messaging_tracing,
                           group='oslo_messaging_tracing')
        conf.set_override('signal_topic', a.topic, 'hotload')
        conf.set_override('control_exchange', a.topic)
        # What it declares on the broker goes with it.
        conf.register_opts(amqp.amqp_opts, group='oslo_messaging_rabbit')
        conf.set_override('amqp_auto_delete', True, 'oslo_messaging_rabbit')
        executor = provider_mod.HotloadActionProvider('hotload', conf=conf)
        made.append(executor)
        return engine, executor

    yield make
    for executor in made:
        if executor._listener is not None:
            executor._listener.stop()
        if executor.fetcher._transport is not None:
            executor.fetcher._transport.cleanup()


def test_an_executor_runs_content_only_the_publisher_has(
        publisher, providers):
    engine, executor = providers(publishing(publisher()))
    data = sent(engine, who='ann')
    action = received(data)
    assert result(action) == 'hello ann!'
    assert not os.path.exists(executor.states.blobs.root)
    assert executor.cache.loaded() == {data['ref']['content_key']}


def test_a_publisher_with_another_key_is_refused(publisher, providers):
    engine, executor = providers(publishing(publisher(
        key='another-cluster-key-0123456789')))
    error = fetch_failure(received(sent(engine, who='ann')))
    assert 'of the publisher (node-a) has a wrong signature' in error
    assert KEY not in error


def test_a_publisher_that_is_down_fails_the_action_within_the_bound(
        publisher, providers):
    a = publishing(publisher())
    engine, executor = providers(a)
    data = sent(engine, who='ann')
    a.daemon.stop()
    started = time.monotonic()
    error = fetch_failure(received(data))
    assert time.monotonic() - started < executor.fetcher.bound() + 2
    assert 'the publisher is unreachable' in error
    assert 'guest' not in error
