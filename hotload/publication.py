"""The cluster protocol: the publisher serves its generations to mirrors.

The publisher daemon (``mode = publisher`` with a ``cluster_key`` and a
transport) runs an RPC server on ``<signal_topic>_publisher`` that answers
three calls, all read from its state directory:

``current_generation``
    ``{'host', 'generation', 'digest', 'published_at'}``: the generation
    ``manifest.json`` holds, the sha256 of its bytes and its
    ``created_at``.
``signed_manifest(generation)``
    ``{'generation', 'manifest', 'signature'}``: the exact bytes of a
    generation still on disk, as text, with their HMAC
    (:mod:`hotload.signing`); ``{'error'}`` when it is gone.
``blobs(sha256s)``
    ``{'blobs': {sha256: base64}, 'missing': [...]}``: as many of the
    asked blobs as fit in :data:`MAX_BATCH` blobs and
    :data:`MAX_BATCH_BYTES`; the caller asks again for the rest.

and announces each new generation with a fanout cast on
``<signal_topic>_mirrors`` (``generation_announced``). The providers'
own signal on ``signal_topic`` is unchanged, so providers of any version
keep working.

Nothing a mirror receives is trusted for what it says: an announcement
only wakes it, a manifest counts only with the right signature, a blob
only when it hashes to a sha256 that signed manifest names
(:class:`PublisherClient` and :mod:`hotload.mirror` check this). A rogue
server on these topics can delay a mirror, never make it serve code the
publisher did not sign.
"""

import base64
import binascii
import os
import threading

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import signals
from hotload import signing
from hotload import store

LOG = logging.getLogger(__name__)
NAMESPACE = 'hotload_cluster'
VERSION = '1.0'
#: Most blobs one ``blobs`` answer carries.
MAX_BATCH = 64
#: Most blob bytes (before base64) one ``blobs`` answer carries, unless a
#: single blob is larger: one blob per answer always fits.
MAX_BATCH_BYTES = 4 * 1024 * 1024
#: Largest blob served or accepted, as :meth:`store.BlobStore.get` reads.
MAX_BLOB_SIZE = 64 * 1024 * 1024
#: Largest manifest accepted from the publisher, in characters.
MAX_MANIFEST_SIZE = 256 * 1024 * 1024
#: Seconds stop() gives a server that never connected before abandoning
#: it (oslo.messaging retries a broker that is down forever, inside
#: ``start()``, and ``stop()`` waits for ``start()``).
CLOSE_TIMEOUT = 3.0


def publisher_topic(conf: cfg.ConfigOpts) -> str:
    """The topic the publisher answers mirrors on.

    :param conf: Configuration with ``[hotload]``.
    """
    return f'{conf.hotload.signal_topic}_publisher'


def mirrors_topic(conf: cfg.ConfigOpts) -> str:
    """The topic mirrors hear announcements on.

    :param conf: Configuration with ``[hotload]``.
    """
    return f'{conf.hotload.signal_topic}_mirrors'


def target(topic: str, **kwargs) -> oslo_messaging.Target:
    """A target of the cluster protocol on ``topic``.

    :param topic: :func:`publisher_topic` or :func:`mirrors_topic`.
    :param kwargs: More of :class:`oslo_messaging.Target` (``server``).
    """
    return oslo_messaging.Target(topic=topic, namespace=NAMESPACE,
                                 version=VERSION, **kwargs)


def generation_path(states: store.ManifestStore, number: int) -> str:
    """Where generation ``number`` lives (the layout :mod:`store` names).

    :param states: The state directory.
    :param number: The generation.
    """
    return os.path.join(states.generations_dir, f'{number:010d}.json')


def _text_or_none(value: object) -> str | None:
    """A short text from an answer, or None; what it says is not trusted.
    """
    return str(value)[:200] if value is not None else None


def _read_bounded(path: str, limit: int) -> bytes:
    with open(path, 'rb') as stream:
        return stream.read(limit)


class PublisherEndpoint:
    """The calls the publisher answers; see the module's docstring.

    Endpoints run on oslo.messaging's threads, beside the daemon's scans;
    they only read files the store replaces atomically.

    :param states: The publisher's state directory.
    :param key: ``cluster_key``.
    :param host: This node's name, in answers.
    """

    target = oslo_messaging.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, states: store.ManifestStore, key: str,
                 host: str) -> None:
        self._states = states
        self._key = key
        self._host = host

    def current_generation(self, ctxt) -> dict:
        try:
            data = _read_bounded(self._states.current_path,
                                 MAX_MANIFEST_SIZE)
        except FileNotFoundError:
            return {'host': self._host, 'generation': 0, 'digest': None}
        except OSError as exc:
            return {'host': self._host, 'error': f'cannot read the '
                    f'current manifest: {exc.strerror}'}
        try:
            current = manifest_mod.Index.from_json(data)
        except exceptions.ManifestError as exc:
            return {'host': self._host, 'error': str(exc)}
        return {'host': self._host, 'generation': current.generation,
                'digest': store.sha256_hex(data),
                'published_at': current.created_at}

    def signed_manifest(self, ctxt, generation) -> dict:
        if not isinstance(generation, int) or generation < 1:
            return {'error': f'{generation!r:.40} is not a generation'}
        try:
            data = _read_bounded(generation_path(self._states, generation),
                                 MAX_MANIFEST_SIZE)
        except FileNotFoundError:
            return {'error': f'generation {generation} is no longer on '
                             f'{self._host}'}
        except OSError as exc:
            return {'error': f'cannot read generation {generation}: '
                             f'{exc.strerror}'}
        return {'generation': generation, 'manifest': data.decode('ascii'),
                'signature': signing.sign(data, self._key)}

    def blobs(self, ctxt, sha256s) -> dict:
        found: dict[str, str] = {}
        missing: list[str] = []
        size = 0
        for sha in list(sha256s or ())[:MAX_BATCH]:
            try:
                data = self._states.blobs.get(sha, MAX_BLOB_SIZE)
            except exceptions.BlobError as exc:
                LOG.warning('A mirror asked for %s: %s', f'{sha!r:.80}', exc)
                missing.append(str(sha)[:80])
                continue
            if found and size + len(data) > MAX_BATCH_BYTES:
                break
            size += len(data)
            found[sha] = base64.b64encode(data).decode('ascii')
        return {'blobs': found, 'missing': missing}


class BackgroundServer:
    """An oslo.messaging RPC server started in a thread of its own.

    ``start()`` of a server retries a broker that is down forever (and
    connects once it is up), and ``stop()`` waits for ``start()``: a
    daemon must neither wait for the broker to come up nor hang when it
    stops while the broker is still down.

    :param server: The server, not started.
    :param what: What it serves, for the log.
    """

    def __init__(self, server, what: str) -> None:
        self.server = server
        self.what = what
        self.started = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start connecting; returns at once."""
        self._thread = threading.Thread(target=self._run,
                                        name='hotload-rpc-server',
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.server.start()
        except Exception:
            LOG.exception('Cannot serve %s', self.what)
            return
        self.started.set()
        LOG.info('Serving %s', self.what)

    def stop(self) -> None:
        """Stop serving; a server still connecting is abandoned (its
        thread is a daemon thread)."""
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)
        if self.started.is_set():
            self.server.stop()
            self.server.wait()
        elif self._thread is not None and self._thread.is_alive():
            LOG.warning('%s never connected to the broker; abandoning it',
                        self.what)


class Publication:
    """The publisher's side: the RPC server and the announcements.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param states: The daemon's state directory.
    """

    def __init__(self, conf: cfg.ConfigOpts,
                 states: store.ManifestStore) -> None:
        self._key = conf.hotload.cluster_key
        self.host = hotload_conf.node_name(conf)
        self.transport = oslo_messaging.get_rpc_transport(conf)
        topic = publisher_topic(conf)
        self.server = BackgroundServer(oslo_messaging.get_rpc_server(
            self.transport, target(topic, server=self.host),
            [PublisherEndpoint(states, self._key, self.host)],
            executor='threading'), f'mirrors on topic {topic} as {self.host}')
        # One attempt: a broker that is down must not stall publishing;
        # mirrors catch up by their periodic check.
        self.announcer = oslo_messaging.get_rpc_client(
            self.transport, target(mirrors_topic(conf))).prepare(
                fanout=True, retry=1)

    def start(self) -> None:
        """Start serving (connecting in the background)."""
        self.server.start()

    def announce(self, current: manifest_mod.Manifest) -> None:
        """Tell every mirror that ``current`` is published.

        :param current: The generation just published.
        """
        data = current.to_json()
        try:
            self.announcer.cast(
                {}, 'generation_announced', generation=current.generation,
                digest=store.sha256_hex(data),
                signature=signing.sign(data, self._key), host=self.host)
        except oslo_messaging.MessagingException as exc:
            LOG.warning('Could not announce generation %d to mirrors (%s); '
                        'they will find it at their next check',
                        current.generation, exc)

    def close(self) -> None:
        """Stop serving and let go of the transport."""
        self.server.stop()
        if self.server.started.is_set():
            self.transport.cleanup()


def start_publication(conf: cfg.ConfigOpts,
                      states: store.ManifestStore) -> Publication | None:
    """The publisher's server for mirrors, started; None when it has none.

    It runs only with ``mode = publisher``, a ``cluster_key`` (nothing can
    be signed without one) and a transport.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param states: The daemon's state directory.
    """
    options = conf.hotload
    if options.mode != 'publisher':
        return None
    if not options.cluster_key:
        LOG.info('No [hotload] cluster_key: serving no mirror (a single '
                 'node needs none)')
        return None
    if not signals.transport_configured(conf):
        LOG.warning('[hotload] cluster_key is set but no transport_url: '
                    'mirrors cannot reach this publisher')
        return None
    publication = Publication(conf, states)
    publication.start()
    return publication


class PublisherClient:
    """A mirror's calls to the publisher, each bounded in time.

    Answers are checked for shape here; what they mean (signature,
    hashes) is checked by the caller.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param transport: The mirror's RPC transport.
    :param timeout: Seconds each call may take; default:
        ``cluster_timeout``.
    """

    def __init__(self, conf: cfg.ConfigOpts, transport,
                 timeout: float | None = None) -> None:
        self.topic = publisher_topic(conf)
        self.timeout = timeout or conf.hotload.cluster_timeout
        self.client = oslo_messaging.get_rpc_client(
            transport, target(self.topic)).prepare(
                timeout=self.timeout, retry=1)

    def _call(self, method: str, **kwargs) -> dict:
        try:
            reply = self.client.call({}, method, **kwargs)
        except oslo_messaging.MessagingTimeout:
            raise exceptions.ClusterError(
                f'the publisher is unreachable: no answer on topic '
                f'{self.topic} within {self.timeout:g} s') from None
        except oslo_messaging.RemoteError as exc:
            raise exceptions.ClusterError(
                f'the publisher failed to answer {method}: '
                f'{exc.exc_type}: {exc.value}'[:1000]) from None
        except oslo_messaging.MessagingException as exc:
            raise exceptions.ClusterError(
                f'the publisher is unreachable: {type(exc).__name__} on '
                f'topic {self.topic}') from None
        if not isinstance(reply, dict):
            raise exceptions.ClusterError(
                f'the publisher answered {method} with a '
                f'{type(reply).__name__}, not a mapping')
        if reply.get('error'):
            raise exceptions.ClusterError(
                f'the publisher could not answer {method}: '
                f'{str(reply["error"])[:500]}')
        return reply

    def current_generation(self) -> tuple[int, str | None, str]:
        """The publisher's generation, its digest and the publisher's host.

        :raises ClusterError: when it cannot be had.
        """
        current = self.describe_current()
        return current['generation'], current['digest'], current['host']

    def describe_current(self) -> dict:
        """The publisher's answer to ``current_generation``, checked.

        :returns: ``host``, ``generation`` (an int), ``digest`` and
            ``published_at`` (each a string or None).
        :raises ClusterError: when it cannot be had.
        """
        reply = self._call('current_generation')
        generation = reply.get('generation')
        if not isinstance(generation, int) or generation < 0:
            raise exceptions.ClusterError(
                f'the publisher answered generation {generation!r:.40}')
        return {'host': str(reply.get('host'))[:200],
                'generation': generation,
                'digest': _text_or_none(reply.get('digest')),
                'published_at': _text_or_none(reply.get('published_at'))}

    def signed_manifest(self, generation: int) -> tuple[bytes, object]:
        """Generation ``generation``'s bytes and signature, unchecked.

        :param generation: The generation to fetch.
        :raises ClusterError: when they cannot be had.
        """
        reply = self._call('signed_manifest', generation=generation)
        text = reply.get('manifest')
        if not isinstance(text, str) or len(text) > MAX_MANIFEST_SIZE \
                or not text.isascii():
            raise exceptions.ClusterError(
                f'the publisher answered no usable manifest for generation '
                f'{generation}')
        return text.encode('ascii'), reply.get('signature')

    def blobs(self, sha256s: list[str]) -> dict[str, bytes]:
        """Some of the blobs ``sha256s`` names, decoded, unchecked.

        Only blobs that were asked for are returned.

        :param sha256s: The blobs wanted (at most :data:`MAX_BATCH`).
        :raises ClusterError: when the publisher lacks one of them, sends
            none, or sends something that is not base64.
        """
        reply = self._call('blobs', sha256s=sha256s)
        missing = reply.get('missing') or []
        if missing:
            raise exceptions.ClusterError(
                f'the publisher lacks blob {str(missing[0])[:80]}')
        found = reply.get('blobs')
        if not isinstance(found, dict):
            raise exceptions.ClusterError(
                'the publisher answered blobs without a mapping')
        wanted = set(sha256s)
        decoded = {}
        for sha, text in found.items():
            if sha not in wanted:
                continue  # never asked: nothing to do with it
            if not isinstance(text, str) or \
                    len(text) > MAX_BLOB_SIZE * 4 // 3 + 4:
                raise exceptions.ClusterError(
                    f'the publisher sent blob {sha} in an unusable form')
            try:
                decoded[sha] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise exceptions.ClusterError(
                    f'the publisher sent blob {sha} not in base64') from None
        if not decoded:
            raise exceptions.ClusterError(
                'the publisher sent none of the blobs asked for')
        return decoded
