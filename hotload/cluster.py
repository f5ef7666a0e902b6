"""The daemons of a cluster say what they serve, signed; a publisher that
finds a node ahead of it continues above that node.

**Status.** Every daemon with a transport and a ``cluster_key`` (the
publisher with its :class:`hotload.publication.Publication`, every
mirror) answers the fanout ``report_status`` of :mod:`hotload.signals`
on the *cluster topic*, ``<signal_topic>_mirrors``, where mirrors also
hear announcements. A status is plain data:

``host``, ``role`` (``publisher`` or ``mirror``), ``pid``
    Who answers: ``[DEFAULT] host`` (else the host name) and its process.
``generation``, ``digest``, ``published_at``
    What its state directory serves: the generation of ``manifest.json``,
    the sha256 of its bytes, and its ``created_at`` (the publisher's time
    of publishing; a mirror serves the same bytes).
``error``
    A mirror's last refusal (the publisher unreachable, a wrong
    signature...); a publisher's failed scan, or another publisher heard.
``file_errors``, ``mirrors_seen`` (publisher)
    How many modules have an error; the hosts of the mirrors its periodic
    check heard lately (so that one that stops answering is missed).
``publisher_generation``, ``highest`` (mirror)
    The publisher's generation at its last check, and the highest
    generation it has on disk (it refuses any publisher generation not
    above it).
``signature``
    HMAC-SHA256 under ``cluster_key`` (:mod:`hotload.signing`) of the
    canonical JSON of the rest *and the request's id*
    (:func:`canonical`): a reader with the key tells a daemon of the
    cluster from anything else on the broker, and an answer recorded
    earlier and replayed does not verify.

**Moving the publisher.** Mirrors refuse a publisher generation that is
not above theirs, so a publisher started on a new node (or on an older
state directory) would never be followed. The publisher therefore asks
the daemons for their status at start and every
``mirror_check_interval`` (:class:`PublisherPresence`, in the background:
it never delays the daemon); a *verified* mirror status with a higher
generation, or with the same number and another digest, makes the
publisher publish its current table again above it (:func:`ahead_of`).
Only mirrors count: two publishers would outbid each other forever. A
publisher that hears another one (an announcement from another host, or
a verified publisher status) logs an ERROR, says so in its status, and
does not continue above mirrors while it hears it (they may serve the
other's generations: the two would outbid each other through them).
"""

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import publication
from hotload import signals
from hotload import signing
from hotload import store

LOG = logging.getLogger(__name__)
PUBLISHER = 'publisher'
MIRROR = 'mirror'
#: How long another publisher, once heard, is reported, in
#: ``mirror_check_interval``s: announcements come only with a change, and
#: the periodic check hears a rival that answers status requests again.
RIVAL_MEMORY = 3
#: How long the publisher lists a mirror it heard (``mirrors_seen``), in
#: ``mirror_check_interval``s: long enough that ``status --cluster``
#: reports a mirror that stopped answering, short enough that a node
#: taken out of the cluster is forgotten.
SEEN_MEMORY = 10


def cluster_topic(conf: cfg.ConfigOpts) -> str:
    """The topic daemons answer status requests (and mirrors hear
    announcements) on.

    :param conf: Configuration with ``[hotload]``.
    """
    return publication.mirrors_topic(conf)


def canonical(status: dict, request_id: str) -> bytes:
    """The bytes a status's signature covers.

    Sorted keys and no spaces: the same whatever order the dictionary
    crossed the broker in. The request's id is part of them, so an
    answer recorded earlier does not verify for another request.

    :param status: The status, with or without its ``signature``.
    :param request_id: The id of the request it answers.
    """
    body = {k: v for k, v in status.items() if k != 'signature'}
    body['request_id'] = request_id
    return json.dumps(body, sort_keys=True, separators=(',', ':'),
                      ensure_ascii=True).encode('ascii')


def sign_status(status: dict, key: str, request_id: str) -> dict:
    """``status`` with its ``signature``.

    :param status: What the daemon serves (see the module's docstring).
    :param key: ``cluster_key``.
    :param request_id: The id of the request it answers.
    :raises SignatureError: when ``key`` is empty.
    """
    return dict(status, signature=signing.sign(
        canonical(status, request_id), key))


def unverified_reason(status: object, key: str | None,
                      request_id: str) -> str | None:
    """Why ``status`` is not a verified daemon status, or None if it is.

    :param status: An answer as received; anything.
    :param key: ``cluster_key`` of the reader; without one nothing
        verifies.
    :param request_id: The id of the request it answers.
    """
    if not isinstance(status, dict):
        return 'not a status'
    source = f'the status of {str(status.get("host"))[:100]}'
    try:
        signing.verify(canonical(status, request_id),
                       status.get('signature'), key, source)
    except exceptions.SignatureError as exc:
        return str(exc)
    except (TypeError, ValueError):
        return f'{source} cannot be encoded to check its signature'
    return None


def served_facts(states: store.ManifestStore) -> dict:
    """What ``states`` serves: ``generation``, ``digest``,
    ``published_at``, ``file_errors``; and ``error`` when unreadable.

    :param states: A state directory.
    """
    try:
        with open(states.current_path, 'rb') as stream:
            data = stream.read(publication.MAX_MANIFEST_SIZE)
    except FileNotFoundError:
        return {'generation': 0, 'digest': None, 'published_at': None,
                'file_errors': 0}
    except OSError as exc:
        return {'generation': 0, 'digest': None, 'published_at': None,
                'file_errors': 0, 'error': f'cannot read '
                f'{states.current_path}: {exc.strerror}'}
    facts = {'digest': store.sha256_hex(data)}
    try:
        current = states.manifest(manifest_mod.Index.from_json(
            data, states.current_path))
    except exceptions.ManifestError as exc:
        return dict(facts, generation=0, published_at=None, file_errors=0,
                    error=str(exc))
    return dict(facts, generation=current.generation,
                published_at=current.created_at or None,
                file_errors=len(current.errors()))


class StatusEndpoint(signals.StatusEndpoint):
    """A daemon's answer to status requests on the cluster topic, signed.

    :param transport: The server's transport, to reply on.
    :param key: ``cluster_key``.
    :param describe: Returns the daemon's status, unsigned.
    """

    def __init__(self, transport, key: str,
                 describe: Callable[[], dict]) -> None:
        super().__init__(transport, self._signed)
        self._key = key
        self._describe = describe

    def _signed(self, request_id: str) -> dict:
        return sign_status(self._describe(), self._key, str(request_id))


@dataclasses.dataclass(frozen=True)
class Ahead:
    """A mirror that serves what the publisher must publish above."""

    host: str
    generation: int
    #: The generation the publisher's next one must be above.
    floor: int
    #: Same number as the publisher's, other bytes.
    same_number: bool


def ahead_of(generation: int, digest: str | None,
             statuses: list[dict]) -> Ahead | None:
    """The mirror furthest ahead of a publisher at ``generation``, if any.

    A mirror is ahead when it serves (or holds on disk) a higher
    generation, or the same number with another digest (a former
    publisher's generation). A mirror at the same generation and digest
    is the normal, converged case.

    :param generation: The generation the publisher serves.
    :param digest: Its digest.
    :param statuses: Daemon statuses, already verified.
    """
    found: Ahead | None = None
    for status in statuses:
        if status.get('role') != MIRROR:
            continue
        theirs = status.get('generation')
        highest = status.get('highest')
        if not isinstance(theirs, int):
            continue
        top = max(theirs, highest if isinstance(highest, int) else 0)
        host = str(status.get('host'))
        if top > generation:
            candidate = Ahead(host, top, top, False)
        elif theirs == generation and generation and \
                status.get('digest') and status.get('digest') != digest:
            candidate = Ahead(host, theirs, generation, True)
        else:
            continue
        if found is None or candidate.floor > found.floor:
            found = candidate
    return found


class PublisherPresence:
    """The publisher's side of the cluster topic.

    It answers status requests, hears other publishers' announcements,
    and checks in the background (at start, then every
    ``mirror_check_interval``) whether a mirror is ahead of it.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param transport: The publication's transport.
    :param states: The publisher's state directory.
    :param scan_error: Returns the daemon's last scan error, or None.
    :param continue_above: Called with a generation the next one must
        be above (see :meth:`hotload.daemon.Daemon.continue_above`).
    :param on_rival: Called when another publisher is first heard.
    """

    def __init__(self, conf: cfg.ConfigOpts, transport,
                 states: store.ManifestStore,
                 scan_error: Callable[[], str | None],
                 continue_above: Callable[[int], None],
                 on_rival: Callable[[], None] = lambda: None) -> None:
        self.conf = conf
        self.host = hotload_conf.node_name(conf)
        self.topic = cluster_topic(conf)
        self._key = conf.hotload.cluster_key
        self._states = states
        self._scan_error = scan_error
        self._continue_above = continue_above
        self._on_rival = on_rival
        self._rivals: dict[str, tuple[float, str]] = {}
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.server = publication.BackgroundServer(
            oslo_messaging.get_rpc_server(
                transport, publication.target(
                    self.topic, server=f'{self.host}.{os.getpid()}'),
                [StatusEndpoint(transport, self._key, self.describe),
                 _RivalEndpoint(self.host, self.heard)],
                executor='threading'),
            f'status requests on topic {self.topic}')

    def start(self) -> None:
        """Start serving and checking; returns at once."""
        self.server.start()
        self._thread = threading.Thread(target=self._watch,
                                        name='hotload-cluster-check',
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking and serving, at once.

        A check in flight (it waits ``cluster_timeout`` for answers) is
        not waited for: it is a daemon thread that only reads and asks,
        and it checks that it is not stopping before it asks the daemon
        for anything.
        """
        self._stopping.set()
        self.server.stop()

    def describe(self) -> dict:
        """This publisher's status, unsigned (see the module's docstring).
        """
        facts = served_facts(self._states)
        errors = [e for e in (self._scan_error(), facts.pop('error', None))
                  if e] + self.rivals()
        return {'host': self.host, 'role': PUBLISHER, 'pid': os.getpid(),
                **facts, 'error': '; '.join(errors) or None,
                'mirrors_seen': self.mirrors_seen()}

    def mirrors_seen(self) -> list[str]:
        """Hosts of the mirrors whose verified status a check got lately.
        """
        memory = SEEN_MEMORY * self.conf.hotload.mirror_check_interval
        now = time.monotonic()
        with self._lock:
            return sorted(host for host, seen_at in self._seen.items()
                          if now - seen_at < memory)

    def rivals(self) -> list[str]:
        """What was heard of other publishers lately, one text each."""
        memory = RIVAL_MEMORY * self.conf.hotload.mirror_check_interval
        now = time.monotonic()
        with self._lock:
            return [text for heard_at, text in self._rivals.values()
                    if now - heard_at < memory]

    def heard(self, host: str, how: str) -> None:
        """Another publisher, ``host``, was heard.

        :param host: Its host, as it says.
        :param how: What it did, for the log and the status.
        """
        text = (f'another publisher, {host}, {how} on topic {self.topic} '
                f'(heard at {store.timestamp()}): a cluster has one '
                f'publisher; set [hotload] mode = mirror on every other '
                f'node')
        new = host not in self.rivals_hosts()
        with self._lock:
            self._rivals[host] = (time.monotonic(), text)
        if new:
            LOG.error('Two publishers: %s', text)
            self._on_rival()

    def rivals_hosts(self) -> set[str]:
        """Hosts of the other publishers heard lately."""
        memory = RIVAL_MEMORY * self.conf.hotload.mirror_check_interval
        now = time.monotonic()
        with self._lock:
            return {host for host, (heard_at, _) in self._rivals.items()
                    if now - heard_at < memory}

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check()
            except Exception:
                # The check only speeds convergence up; the daemon's work
                # goes on whatever happens here.
                LOG.exception('Checking the mirrors\' generations failed')
            self._stopping.wait(self.conf.hotload.mirror_check_interval)

    def check(self) -> Ahead | None:
        """Ask the daemons once; continue above a mirror that is ahead.

        :returns: the mirror found ahead, if any.
        """
        options = self.conf.hotload
        if signals.unreachable_brokers(
                self.conf, min(options.cluster_timeout,
                               signals.BROKER_TIMEOUT)):
            return None  # nobody to ask; the next check will
        request_id = uuid.uuid4().hex
        try:
            answers = signals.collect_statuses(
                self.conf, options.cluster_timeout, topics=[self.topic],
                request_id=request_id)
        except signals.NotAsked as exc:
            LOG.debug('Cannot ask the mirrors: %s', exc)
            return None
        trusted = []
        for status in answers:
            reason = unverified_reason(status, self._key, request_id)
            if reason:
                LOG.debug('Ignoring a status: %s', reason)
                continue
            trusted.append(status)
            if status.get('role') == MIRROR:
                with self._lock:
                    self._seen[str(status.get('host'))[:200]] = \
                        time.monotonic()
            if status.get('role') == PUBLISHER and (
                    status.get('host'), status.get('pid')) != (
                    self.host, os.getpid()):
                self.heard(str(status.get('host'))[:200],
                           'answers status requests as a publisher')
        if self._stopping.is_set():
            return None
        # Read after the answers: a generation published meanwhile is
        # then ours, not a mirror's lead.
        own = served_facts(self._states)
        found = ahead_of(own['generation'], own['digest'], trusted)
        if found is None:
            return None
        rivals = self.rivals_hosts()
        if rivals:
            # The mirror may serve the other publisher's generation: going
            # above it would make the two outbid each other through the
            # mirrors forever.
            LOG.warning('mirror %s serves generation %d, but another '
                        'publisher (%s) is active: not continuing above it',
                        found.host, found.generation,
                        ', '.join(sorted(rivals)))
            return None
        next_generation = max(found.floor, own['generation']) + 1
        if found.same_number:
            LOG.warning('mirror %s serves another generation %d than this '
                        'publisher\'s (another publisher\'s); continuing '
                        'at %d', found.host, found.generation,
                        next_generation)
        else:
            LOG.warning('mirror %s serves generation %d above this '
                        'publisher\'s %d; continuing at %d', found.host,
                        found.generation, own['generation'],
                        next_generation)
        self._continue_above(found.floor)
        return found


class _RivalEndpoint:
    """Hears announcements on the cluster topic: a publisher's own are
    ignored, another host's mean two publishers."""

    target = oslo_messaging.Target(namespace=publication.NAMESPACE,
                                   version=publication.VERSION)

    def __init__(self, host: str,
                 heard: Callable[[str, str], None]) -> None:
        self._host = host
        self._heard = heard

    def generation_announced(self, ctxt, generation, digest=None,
                             signature=None, host=None):
        if host != self._host:
            self._heard(str(host)[:200],
                        f'announces generation {str(generation)[:20]}')


def start_presence(conf: cfg.ConfigOpts,
                   publication_: publication.Publication | None,
                   states: store.ManifestStore,
                   scan_error: Callable[[], str | None],
                   continue_above: Callable[[int], None],
                   on_rival: Callable[[], None] = lambda: None
                   ) -> PublisherPresence | None:
    """The publisher's :class:`PublisherPresence`, started; None without
    a publication (no cluster_key or no transport).

    :param conf: Configuration with the transport and ``[hotload]``.
    :param publication_: The publisher's publication, whose transport it
        shares.
    :param states: The publisher's state directory.
    :param scan_error: Returns the daemon's last scan error, or None.
    :param continue_above: See :class:`PublisherPresence`.
    :param on_rival: See :class:`PublisherPresence`.
    """
    if publication_ is None:
        return None
    presence = PublisherPresence(conf, publication_.transport, states,
                                 scan_error, continue_above, on_rival)
    presence.start()
    return presence
