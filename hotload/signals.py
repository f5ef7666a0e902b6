"""Signals over oslo.messaging: "generation N is published".

The daemon casts to every provider at once (a fanout cast on
``signal_topic``); each Mistral process runs a small RPC server on that
topic. A signal only makes a provider load the new table sooner: providers
also notice a new generation on their own, so a lost signal or a broker
outage delays nothing that a lookup needs.

The same request-and-reply exchange (:func:`collect_statuses`, answered
by :class:`StatusEndpoint`) asks the providers what they serve on
``signal_topic`` and the daemons of a cluster on theirs
(:mod:`hotload.cluster`), with one reply server for both.

Nothing here may hang a command: oslo.messaging retries a broker that is
down forever, so :func:`unreachable_brokers` checks it first, with a plain
TCP connection, and :func:`collect_statuses` stops waiting at its deadline
whatever oslo.messaging does.
"""

import concurrent.futures
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
# Seconds a broker has to accept a TCP connection, unless told otherwise.
BROKER_TIMEOUT = 3.0
#: Least time a broker gets to accept a TCP connection when a command
#: gives it part of its --timeout: less would call a working broker
#: unreachable.
MIN_BROKER_TIMEOUT = 0.5
# Ports the oslo.messaging drivers use when the URL names none.
DEFAULT_PORTS = {'rabbit': 5672, 'amqp': 5672, 'kafka': 9092}
# Seconds collect_statuses gives a working transport to close after its
# deadline (stopping the reply server takes about a second: its listener
# finishes the poll it is in); one that hangs is abandoned.
CLOSE_TIMEOUT = 3.0


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


def broker_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


def broker_addresses(conf: cfg.ConfigOpts) -> tuple[str, list[tuple]]:
    """The driver and ``(host, port)`` of each broker of ``transport_url``.

    Hosts without a port get the driver's default one; a driver without a
    default port and hosts (``fake://``) has nothing to connect to.

    :param conf: Configuration with ``transport_url``.
    :raises InvalidTransportURL: when it cannot be parsed. Its message
        never contains the URL, which carries credentials.
    """
    if 'transport_url' not in conf:
        register_transport_opts(conf)
    try:
        url = oslo_messaging.TransportURL.parse(conf)
    except ValueError:
        # netutils' message for a bad port quotes the host part, which may
        # hold the password.
        raise oslo_messaging.InvalidTransportURL(
            None, 'bad host or port') from None
    default_port = DEFAULT_PORTS.get(url.transport)
    hosts = [(h.hostname or 'localhost', h.port or default_port)
             for h in url.hosts]
    if not hosts and default_port:
        hosts = [('localhost', default_port)]
    return url.transport, [h for h in hosts if h[1]]


def _refusal(address: tuple, timeout: float) -> str | None:
    host, port = address
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f'no answer in {timeout:g} s'
        return f'{broker_address(host, port)} unreachable ({reason})'
    return None


def unreachable_brokers(conf: cfg.ConfigOpts,
                        timeout: float = BROKER_TIMEOUT) -> list[str]:
    """The brokers of ``transport_url`` that do not accept a TCP connection.

    Only TCP is tried (credentials and AMQP are not), every host at once,
    so this takes at most about ``timeout``: what oslo.messaging would
    retry forever is known here in a bounded time.

    :param conf: Configuration with ``transport_url``.
    :param timeout: Seconds each broker has to accept the connection.
    :returns: ``host:port unreachable (reason)`` for each of them, in the
        URL's order; never credentials.
    :raises InvalidTransportURL: when ``transport_url`` cannot be parsed.
    """
    _driver, hosts = broker_addresses(conf)
    if not hosts:
        return []
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        refusals = list(pool.map(lambda h: _refusal(h, timeout), hosts))
    return [r for r in refusals if r]


def _target(conf: cfg.ConfigOpts, **kwargs) -> oslo_messaging.Target:
    return status_target(conf.hotload.signal_topic, **kwargs)


def status_target(topic: str, **kwargs) -> oslo_messaging.Target:
    """The target of signals and status requests on ``topic``.

    :param topic: ``signal_topic`` (the providers), or the cluster topic
        the daemons answer on (:func:`hotload.cluster.cluster_topic`).
    :param kwargs: More of :class:`oslo_messaging.Target` (``server``).
    """
    return oslo_messaging.Target(topic=topic, namespace=NAMESPACE,
                                 version=VERSION, **kwargs)


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


class StatusEndpoint:
    """Answers ``report_status`` (see :func:`collect_statuses`) on the
    topic of the server it is given to.

    :param transport: The server's transport, to reply on.
    :param describe: Returns the status to send, as plain data; it gets
        the request's id (a daemon signs its status together with it).
    """

    target = oslo_messaging.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, transport, describe: Callable[[str], dict]) -> None:
        self._transport = transport
        self._describe_for = describe

    def report_status(self, ctxt, request_id, reply_topic, reply_server):
        target = oslo_messaging.Target(
            topic=reply_topic, server=reply_server, namespace=NAMESPACE,
            version=VERSION)
        client = oslo_messaging.get_rpc_client(self._transport, target)
        client.prepare(retry=1).cast({}, 'status_reported',
                                     request_id=request_id,
                                     status=self._describe_for(request_id))


class _Endpoint(StatusEndpoint):
    def __init__(self, transport, on_generation: Callable[[], object],
                 describe: Callable[[], dict]) -> None:
        super().__init__(transport, lambda _request_id: describe())
        self._on_generation = on_generation

    def generation_published(self, ctxt, generation):
        LOG.debug('Signal: generation %s published', generation)
        self._on_generation()


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

    def snapshot(self) -> list[dict]:
        """The statuses received so far (more may still arrive)."""
        with self._lock:
            return list(self.statuses)


class NotAsked(Exception):
    """The status request could not be sent before the deadline.

    Its message says why, without the transport URL.
    """


class _StatusRequest:
    """One ``report_status`` exchange, run in a thread of its own.

    Everything that talks to the broker happens in :meth:`run`, because
    any of it may hang; and because a server's ``stop()`` waits for its
    ``start()`` to return, so stopping it from another thread would hang
    that thread too.
    """

    def __init__(self, conf: cfg.ConfigOpts, endpoint: _ReplyEndpoint,
                 topics: list[str]) -> None:
        self.conf = conf
        self.endpoint = endpoint
        self.topics = topics
        self.asked = threading.Event()
        self.finished = threading.Event()
        self.failure = ''

    def run(self) -> None:
        """Send the request, keep the reply server up until ``finished``."""
        try:
            self._exchange()
        except Exception as exc:
            # Any failure means "not asked"; its message may quote the
            # transport URL, so only its type is passed on.
            self.failure = (f'the messaging transport failed '
                            f'({type(exc).__name__})')
            LOG.debug('Status request failed', exc_info=True)
        finally:
            # Nothing more will arrive: the caller need not wait on.
            if not self.asked.is_set():
                self.endpoint.complete.set()

    def _exchange(self) -> None:
        conf, endpoint = self.conf, self.endpoint
        transport = oslo_messaging.get_rpc_transport(conf)
        reply_topic = f'{conf.hotload.signal_topic}_status'
        reply_server = (f'{socket.gethostname()}.{os.getpid()}.'
                        f'{endpoint.request_id[:8]}')
        try:
            server = oslo_messaging.get_rpc_server(
                transport, oslo_messaging.Target(topic=reply_topic,
                                                 server=reply_server),
                [endpoint], executor='threading')
            server.start()
            try:
                # One reply server for every topic: the answers of
                # providers and daemons arrive together.
                for topic in self.topics:
                    client = oslo_messaging.get_rpc_client(
                        transport, status_target(topic))
                    client.prepare(fanout=True, retry=1).cast(
                        {}, 'report_status', request_id=endpoint.request_id,
                        reply_topic=reply_topic, reply_server=reply_server)
                self.asked.set()
                self.finished.wait()
            finally:
                server.stop()
                server.wait()
        finally:
            transport.cleanup()


#: Exchanges abandoned at their deadline whose thread still waits on the
#: broker; see :func:`collect_statuses`.
_abandoned: list[threading.Thread] = []
_abandoned_lock = threading.Lock()


def _stuck() -> bool:
    """True while an abandoned exchange still waits on the broker."""
    with _abandoned_lock:
        _abandoned[:] = [t for t in _abandoned if t.is_alive()]
        return bool(_abandoned)


def _abandon(worker: threading.Thread) -> None:
    if worker.is_alive():
        with _abandoned_lock:
            _abandoned.append(worker)


def collect_statuses(conf: cfg.ConfigOpts, timeout: float,
                     expected: int | None = None,
                     topics: list[str] | None = None,
                     request_id: str | None = None) -> list[dict]:
    """Ask every provider (or whoever listens on ``topics``) for its
    status; what answered within ``timeout``.

    Returns by the deadline even when oslo.messaging does not (it retries
    forever, inside the reply server's ``start()``, a broker that accepts
    TCP but never completes the AMQP handshake): the exchange runs in a
    daemon thread, which is abandoned if it is stuck, so it cannot keep
    the process from exiting either. While an abandoned one is still
    stuck, another request fails at once rather than leave one more
    thread behind (a daemon asks every ``mirror_check_interval``).

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds to wait for answers, from this call.
    :param expected: Stop waiting once this many have answered.
    :param topics: Topics the request is cast to (fanout), all answered
        through one reply server; default: ``signal_topic``, the
        providers'.
    :param request_id: Sent with the request and expected back with each
        answer; a new random one by default. A daemon signs its status
        together with it, so a replayed answer does not verify.
    :raises NotAsked: when the request was not sent before the deadline.
    """
    if _stuck():
        raise NotAsked('an earlier status request is still waiting for the '
                       'broker (it accepts connections but does not answer)')
    endpoint = _ReplyEndpoint(request_id or uuid.uuid4().hex, expected)
    request = _StatusRequest(conf, endpoint,
                             topics or [conf.hotload.signal_topic])
    worker = threading.Thread(target=request.run, name='hotload-status',
                              daemon=True)
    worker.start()
    endpoint.complete.wait(timeout)
    request.finished.set()
    if not request.asked.is_set():
        _abandon(worker)
        raise NotAsked(request.failure or
                       f'the messaging transport did not connect to the '
                       f'broker within '
                       f'{timeout:.1f} s')
    # A working transport closes within about a second: wait for that, so
    # the broker sees a clean close. One that hangs is abandoned with its
    # thread.
    worker.join(CLOSE_TIMEOUT)
    _abandon(worker)
    return endpoint.snapshot()
