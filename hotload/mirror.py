"""``mode = mirror``: copy the publisher's signed generations to this node.

A mirror is the daemon of every node but the publisher's. It has no
actions directory: it takes the state directory's writer lock, as the
publisher's daemon does, and fills it with the publisher's generations,
so the providers of its node read from local disk exactly as on a single
node. It asks the publisher for its generation (see
:mod:`hotload.publication`) at start, on each announcement and every
``mirror_check_interval``; when the publisher is ahead it fetches that
generation's manifest, checks its signature (:mod:`hotload.signing`),
fetches the blobs it names that are missing here, checks each against the
sha256 the signed manifest names, and only then publishes the identical
generation (same number, same bytes) with the store's own code.

Anything refused (a publisher that does not answer, a wrong signature, a
blob that does not match its hash) is logged, recorded in the status file,
and changes nothing: the node keeps serving what it has.

It answers status requests on the cluster topic with a signed status
(:mod:`hotload.cluster`): what it serves, its last refusal, and the
publisher's generation it last saw.
"""

import contextlib
import os
import threading
import time
from collections.abc import Callable

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from hotload import cluster
from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import notify
from hotload import publication
from hotload import signals
from hotload import signing
from hotload import store

LOG = logging.getLogger(__name__)
LOCK_TIMEOUT = 30.0
#: Longest sleep of the loop: it checks its lock and says it is alive.
LOOP_INTERVAL = 5.0
#: Slack on top of the longest expected silence before the mirror is
#: called stuck (a slow disk, a slow broker).
PROGRESS_MARGIN = 5.0
#: Errors that mean "not taken this time"; the mirror goes on serving.
REFUSALS = (exceptions.ClusterError, exceptions.SignatureError,
            exceptions.ManifestError, exceptions.BlobError)


def required_blobs(current: manifest_mod.Manifest) -> list[str]:
    """Every source blob ``current`` serves: each module's and its imports'.

    :param current: A manifest whose signature was checked.
    :raises ManifestError: when it names a blob by something that is not
        a sha256 (it would name a path outside the blob store).
    """
    needed: set[str] = set()
    for module in current.modules.values():
        if not module.good:
            continue
        shas = [module.good.sha256,
                *(s for s in module.good.imports.values() if s)]
        for sha in shas:
            if not store.is_sha256(sha):
                raise exceptions.ManifestError(
                    f'generation {current.generation}: module '
                    f'{module.name!r:.100} names blob {sha!r:.100}, which '
                    f'is not a sha256')
            needed.add(sha)
    return sorted(needed)


class _AnnouncementEndpoint:
    target = oslo_messaging.Target(namespace=publication.NAMESPACE,
                                   version=publication.VERSION)

    def __init__(self, on_announcement: Callable[[object], None]) -> None:
        self._on_announcement = on_announcement

    def generation_announced(self, ctxt, generation, digest=None,
                             signature=None, host=None):
        # Nothing of it is trusted: it only makes the mirror ask the
        # publisher now rather than at its next check.
        LOG.debug('Announcement: generation %r from %r', generation, host)
        self._on_announcement(generation)


class Mirror:
    """A mirror's work, with the same start/stop contract as
    :class:`hotload.daemon.Daemon`.

    :param conf: Configuration with ``[hotload]`` (``mode = mirror``, a
        ``cluster_key``) and the messaging transport.
    :param restart: Called with a reason when the worker process must be
        replaced (its state directory was taken from under it); under
        oslo.service, :func:`hotload.service.restart_worker`.
    """

    def __init__(self, conf: cfg.ConfigOpts,
                 restart: Callable[[str], None]) -> None:
        self.conf = conf
        options = conf.hotload
        self.states = store.ManifestStore(options.state_dir)
        self.host = hotload_conf.node_name(conf)
        self._restart_hook = restart
        self._resources = contextlib.ExitStack()
        self._lock: store.WriterLock | None = None
        self._client: publication.PublisherClient | None = None
        self._signals: signals.Publisher | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sync_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._current = manifest_mod.Manifest.empty(
            options.package_name, options.action_prefix)
        self._digest: str | None = None
        self._served = (self._current, self._digest)
        self._error: str | None = None
        self._publisher: dict = {}
        self._status: dict = {}
        self._next_check = 0.0
        self._alive_at = time.monotonic()
        # The longest silence of a healthy mirror: a loop turn, then one
        # broker check and one call, each bounded.
        self._alive_limit = (LOOP_INTERVAL + signals.BROKER_TIMEOUT
                             + 2 * options.cluster_timeout + PROGRESS_MARGIN)
        self._notifier = notify.Notifier(
            healthy=self.healthy, progress=lambda: 'asking the publisher',
            start_extension=2 * self._alive_limit)

    def start(self) -> None:
        """Take the state directory, then follow the publisher."""
        options = self.conf.hotload
        self._notifier.starting()
        self._lock = self._resources.enter_context(
            self.states.writer_lock(timeout=LOCK_TIMEOUT))
        self._current = self._stored_generation()
        self._served = (self._current, self._digest)
        transport = oslo_messaging.get_rpc_transport(self.conf)
        self._resources.callback(transport.cleanup)
        self._client = publication.PublisherClient(self.conf, transport)
        # The providers of this node load a generation sooner when told.
        self._signals = signals.Publisher(self.conf)
        self._resources.callback(self._signals.close)
        topic = publication.mirrors_topic(self.conf)
        listener = publication.BackgroundServer(
            oslo_messaging.get_rpc_server(
                transport, publication.target(
                    topic, server=f'{self.host}.{os.getpid()}'),
                [_AnnouncementEndpoint(self._announced),
                 cluster.StatusEndpoint(transport, options.cluster_key,
                                        self.describe)],
                executor='threading'),
            f'announcements and status requests on topic {topic}')
        listener.start()
        self._resources.callback(listener.stop)
        self._status = {'pid': os.getpid(), 'host': self.host,
                        'mode': 'mirror', 'started_at': store.timestamp(),
                        'publisher_topic': self._client.topic}
        LOG.info('Mirroring the publisher on topic %s into %s, from '
                 'generation %d', self._client.topic, self.states.state_dir,
                 self._current.generation)
        self._worker = threading.Thread(target=self._work,
                                        name='hotload-mirror', daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop within seconds; a generation being written is finished."""
        self._notifier.stopping()
        self._stopping.set()
        self._wake.set()
        if self._worker:
            # A call in flight ends within cluster_timeout; a worker stuck
            # on a broker that never answers is abandoned (daemon thread)
            # and can no longer publish (it checks _stopping first).
            self._worker.join(self.conf.hotload.cluster_timeout
                              + signals.BROKER_TIMEOUT + 1)
        self._resources.close()

    def rescan(self) -> None:
        """Compare with the publisher now (what SIGHUP asks of a daemon)."""
        self._wake.set()

    def describe(self) -> dict:
        """This mirror's status for the cluster, unsigned (see
        :mod:`hotload.cluster`)."""
        current, digest = self._served
        return {'host': self.host, 'role': cluster.MIRROR,
                'pid': os.getpid(), 'generation': current.generation,
                'digest': digest,
                'published_at': current.created_at or None,
                'error': self._error,
                'publisher_generation': self._publisher.get('generation'),
                'highest': max([current.generation,
                                *self.states.generation_numbers()])}

    def healthy(self) -> bool:
        """True while the mirror makes progress (for the watchdog)."""
        return time.monotonic() - self._alive_at < self._alive_limit

    def _progress(self) -> None:
        self._alive_at = time.monotonic()

    def _announced(self, generation: object) -> None:
        if isinstance(generation, int) and \
                generation > self._current.generation:
            self._wake.set()

    def _work(self) -> None:
        first = True
        while not self._stopping.is_set():
            self._progress()
            problem = self._lock.problem()
            if problem:
                # A new worker takes the lock again and copies everything
                # into the new directory.
                self._restart(f'the state directory lost its writer lock '
                              f'({problem})')
                return
            if first or self._wake.is_set() or \
                    time.monotonic() >= self._next_check:
                self._wake.clear()
                self.sync()
                self._next_check = (time.monotonic()
                                    + self.conf.hotload.mirror_check_interval)
            if first:
                # Up once caught up or the publisher found unreachable: a
                # node must come up (and serve what it has) without it.
                self._notifier.ready(self._summary())
                first = False
            else:
                self._notifier.status(self._summary())
            self._wake.wait(max(0.0, min(
                LOOP_INTERVAL, self._next_check - time.monotonic())))

    def sync(self) -> manifest_mod.Manifest:
        """Take the publisher's generation if it is newer than ours.

        Never raises for what the broker or the publisher did: the reason
        is logged and recorded in the status file, and the generation
        being served stays.

        :returns: the generation served after it.
        """
        with self._sync_lock:
            previous_error = self._error
            try:
                self._sync()
            except REFUSALS as exc:
                self._error = str(exc)
            except OSError as exc:
                self._error = (f'cannot write to {self.states.state_dir}: '
                               f'{exc}')
            else:
                self._error = None
            if self._error and self._error != previous_error:
                LOG.error('%s; still serving generation %d', self._error,
                          self._current.generation)
            elif previous_error and not self._error:
                LOG.info('The publisher answers again')
            self._write_status()
            return self._current

    def _sync(self) -> None:
        options = self.conf.hotload
        unreachable = signals.unreachable_brokers(
            self.conf, min(options.cluster_timeout, signals.BROKER_TIMEOUT))
        if unreachable:
            # oslo.messaging would retry it forever inside the call.
            raise exceptions.ClusterError(
                f'the publisher is unreachable: broker '
                f'{", ".join(unreachable)}')
        generation, digest, host = self._client.current_generation()
        self._progress()
        self._publisher = {'host': host, 'generation': generation,
                           'digest': digest, 'checked_at': store.timestamp()}
        own = self._current.generation
        if generation < own:
            raise exceptions.ClusterError(
                f'the publisher ({host}) serves generation {generation}, '
                f'older than this node\'s {own}; waiting for a newer one')
        if generation == own:
            if digest != self._digest:
                raise exceptions.ClusterError(
                    f'the publisher ({host}) serves another generation '
                    f'{generation} than this node (digest {digest} here '
                    f'{self._digest}); waiting for a newer one')
            return
        top = max([own, *self.states.generation_numbers()])
        if generation <= top:
            raise exceptions.ClusterError(
                f'the publisher\'s generation {generation} is not above '
                f'generation {top} of {self.states.state_dir}; waiting for '
                f'a newer one')
        self._take(generation, host)

    def _take(self, generation: int, host: str) -> None:
        """Fetch, check and publish the publisher's ``generation``.

        Only what this node lacks crosses the broker: the index, then the
        records it names that are not here, then the sources those name
        that are not here; so one changed module costs one record and its
        source, whatever the size of the table.
        """
        options = self.conf.hotload
        source = f'generation {generation} from the publisher ({host})'
        data, signature = self._client.signed_manifest(generation)
        self._progress()
        signing.verify(data, signature, options.cluster_key, source)
        index = manifest_mod.Index.from_json(data, source)
        if index.generation != generation:
            raise exceptions.ClusterError(
                f'{source} is signed but numbered {index.generation}')
        if index.to_json() != data:
            # The store writes Index.to_json(): it could not publish the
            # same bytes. Another manifest layout, another version.
            raise exceptions.ClusterError(
                f'{source} cannot be republished byte for byte by this '
                f'node; run the same mistral-hotload version on every '
                f'node')
        held = set(self._current.record_shas.values())
        missing_records = sorted(
            {sha for sha in index.records.values() if sha not in held
             and not os.path.exists(self.states.blobs.path(sha))})
        self._fetch_blobs(missing_records, source)
        current = self.states.manifest(index)
        known = {sha for record in self._current.modules.values()
                 if record.good
                 for sha in (record.good.sha256,
                             *record.good.imports.values())}
        missing = [sha for sha in required_blobs(current)
                   if sha not in known
                   and not os.path.exists(self.states.blobs.path(sha))]
        self._fetch_blobs(missing, source)
        if self._stopping.is_set():
            raise exceptions.ClusterError('stopping; not published')
        self.states.publish(current, verify=False)
        self.states.prune(options.keep_generations, full=False)
        self._current = current
        self._digest = store.sha256_hex(data)
        # One assignment: a status never pairs a generation with the
        # digest of another.
        self._served = (current, self._digest)
        LOG.info('Published generation %d of the publisher (%s): %d '
                 'modules, %d actions, %d records and %d blobs fetched',
                 generation, host, len(current.modules),
                 current.action_count(),
                 len(missing_records), len(missing))
        self._signals.generation_published(generation)

    def _fetch_blobs(self, missing: list[str], source: str) -> None:
        """Fetch ``missing`` in batches; store each only once it hashes
        to its name."""
        remaining = list(missing)
        while remaining:
            batch = remaining[:publication.MAX_BATCH]
            received = self._client.blobs(batch)
            self._progress()
            for sha, data in received.items():
                # Checked before it touches the disk: nothing unsigned is
                # ever stored.
                if store.sha256_hex(data) != sha:
                    raise exceptions.BlobError(
                        f'blob {sha} of {source} does not match its sha256; '
                        f'refused')
                if self.states.blobs.put(data) != sha:
                    raise exceptions.BlobError(f'blob {sha} stored wrongly')
            remaining = [sha for sha in remaining if sha not in received]

    def _restart(self, reason: str) -> None:
        LOG.error('%s; restarting the worker', reason)
        self._error = f'restarting: {reason}'
        self._write_status()
        self._restart_hook(reason)

    def _stored_generation(self) -> manifest_mod.Manifest:
        options = self.conf.hotload
        try:
            with open(self.states.current_path, 'rb') as stream:
                data = stream.read()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            LOG.error('Cannot read %s: %s', self.states.current_path, exc)
            data = None
        if data is not None:
            try:
                stored = self.states.manifest(manifest_mod.Index.from_json(
                    data, self.states.current_path))
            except exceptions.ManifestError as exc:
                LOG.error('Current manifest unreadable; taking the '
                          'publisher\'s next generation: %s', exc)
            else:
                self._digest = store.sha256_hex(data)
                return stored
        return manifest_mod.Manifest.empty(options.package_name,
                                           options.action_prefix)

    def _summary(self) -> str:
        text = f'mirror at generation {self._current.generation}'
        return f'{text}; {self._error}' if self._error else text

    def _write_status(self) -> None:
        self._status.update({
            'generation': self._current.generation,
            'digest': self._digest,
            'publisher': self._publisher,
            'last_sync_at': store.timestamp(),
            'error': self._error,
            'warnings': [],
        })
        self.states.record_status(self._status)
