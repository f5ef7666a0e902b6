"""Signals over oslo.messaging: "generation N is published".

The daemon casts to every provider at once (a fanout cast on
``signal_topic``); each Mistral process runs a small RPC server on that
topic. A signal only makes a provider load the new table sooner: providers
also notice a new generation on their own, so a lost signal or a broker
outage delays nothing that a lookup needs.
"""

import os
import socket
import threading
import uuid
from collections.abc import Callable

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging
from oslo_messaging import opts as oslo_messaging_opts

LOG = logging.getLogger(__name__)
NAMESPACE = 'hotload'
VERSION = '1.0'


def register_transport_opts(conf: cfg.ConfigOpts) -> None:
    """Register oslo.messaging's [DEFAULT] options (``transport_url``).

    oslo.messaging registers them itself when a transport is created; the
    daemon needs them earlier, to know whether there is one.
    """
    for group, opts in oslo_messaging_opts.list_opts():
        if group is None:
            conf.register_opts(opts)


def transport_configured(conf: cfg.ConfigOpts) -> bool:
    """True when ``conf`` names a messaging transport.

    Without one the daemon runs embedded: providers on the node find new
    generations themselves.
    """
    if 'transport_url' not in conf:
        register_transport_opts(conf)
    # Its default, "rabbit://", is a guess (a broker on localhost), not a
    # configuration.
    location = conf.get_location('transport_url')
    return bool(conf.transport_url) and (
        location is None or location.location != cfg.Locations.opt_default)


def _target(conf: cfg.ConfigOpts, **kwargs) -> oslo_messaging.Target:
    return oslo_messaging.Target(topic=conf.hotload.signal_topic,
                                 namespace=NAMESPACE, version=VERSION,
                                 **kwargs)


class Publisher:
    """The daemon's side: announces each new generation.

    :param conf: Configuration with the transport and ``[hotload]``.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.transport = oslo_messaging.get_rpc_transport(conf)
        # A broker that is down must not stall publishing: one attempt,
        # providers catch up by themselves.
        self.client = oslo_messaging.get_rpc_client(
            self.transport, _target(conf)).prepare(fanout=True, retry=1)

    def generation_published(self, generation: int) -> None:
        try:
            self.client.cast({}, 'generation_published',
                             generation=generation)
        except oslo_messaging.MessagingException as exc:
            LOG.warning('Could not signal generation %d (%s); providers '
                        'will notice it on their next lookup',
                        generation, exc)

    def close(self) -> None:
        self.transport.cleanup()


class _Endpoint:
    target = oslo_messaging.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, transport, on_generation: Callable[[], object],
                 describe: Callable[[], dict]) -> None:
        self._transport = transport
        self._on_generation = on_generation
        self._describe = describe

    def generation_published(self, ctxt, generation):
        LOG.debug('Signal: generation %s published', generation)
        self._on_generation()

    def report_status(self, ctxt, request_id, reply_topic, reply_server):
        target = oslo_messaging.Target(
            topic=reply_topic, server=reply_server, namespace=NAMESPACE,
            version=VERSION)
        client = oslo_messaging.get_rpc_client(self._transport, target)
        client.prepare(retry=1).cast({}, 'status_reported',
                                     request_id=request_id,
                                     status=self._describe())


class Listener:
    """A provider's side: an RPC server that reacts to signals.

    It also answers ``mistral-hotload status`` with what the process
    serves.

    :param server: The started oslo.messaging server.
    """

    def __init__(self, server) -> None:
        self.server = server

    @classmethod
    def start(cls, conf: cfg.ConfigOpts, on_generation: Callable[[], object],
              describe: Callable[[], dict]) -> 'Listener | None':
        """Listen on ``signal_topic``; None when there is no transport.

        :param conf: Configuration with the transport and ``[hotload]``.
        :param on_generation: Called when a generation is announced.
        :param describe: Returns this process's status, as plain data.
        """
        if not transport_configured(conf):
            return None
        transport = oslo_messaging.get_rpc_transport(conf)
        target = _target(conf, server=f'{socket.gethostname()}.{os.getpid()}')
        server = oslo_messaging.get_rpc_server(
            transport, target, [_Endpoint(transport, on_generation,
                                          describe)],
            executor='threading')
        server.start()
        LOG.info('Listening for hotload signals on topic %s',
                 conf.hotload.signal_topic)
        return cls(server)

    def stop(self) -> None:
        self.server.stop()
        self.server.wait()


class _ReplyEndpoint:
    target = oslo_messaging.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, request_id: str, expected: int | None) -> None:
        self.request_id = request_id
        self.expected = expected
        self.statuses: list[dict] = []
        self.complete = threading.Event()
        self._lock = threading.Lock()

    def status_reported(self, ctxt, request_id, status):
        if request_id != self.request_id:
            return
        with self._lock:
            self.statuses.append(status)
            if self.expected and len(self.statuses) >= self.expected:
                self.complete.set()


def collect_statuses(conf: cfg.ConfigOpts, timeout: float,
                     expected: int | None = None) -> list[dict]:
    """Ask every provider for its status; what answered within ``timeout``.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds to wait for answers.
    :param expected: Stop waiting once this many have answered.
    """
    transport = oslo_messaging.get_rpc_transport(conf)
    request_id = uuid.uuid4().hex
    reply_topic = f'{conf.hotload.signal_topic}_status'
    reply_server = f'{socket.gethostname()}.{os.getpid()}.{request_id[:8]}'
    endpoint = _ReplyEndpoint(request_id, expected)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=reply_topic,
                                         server=reply_server),
        [endpoint], executor='threading')
    server.start()
    try:
        client = oslo_messaging.get_rpc_client(transport, _target(conf))
        client.prepare(fanout=True, retry=1).cast(
            {}, 'report_status', request_id=request_id,
            reply_topic=reply_topic, reply_server=reply_server)
        endpoint.complete.wait(timeout)
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
    return list(endpoint.statuses)
