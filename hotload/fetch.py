"""Content on demand: an executor fetches a version its node lacks.

An engine on one node may choose a version that this node's mirror has
not copied yet. Rather than fail the action (or, worse, run another
version), the provider asks the publisher for exactly that content, under
the cluster's trust rules (:mod:`hotload.publication`,
:mod:`hotload.signing`):

1. a TCP check of the broker (oslo.messaging retries a broker that is
   down forever);
2. the publisher's current generation (it names the publisher's host),
   then the signed manifest of the generation whose table chose the
   version (:attr:`ActionRef.generation`), or of the current one when
   that is unknown (a reference from an older engine) or pruned since;
3. the signature, checked against ``cluster_key``; the manifest must then
   serve the reference exactly: the module, its hashes, its content key,
   its packages and the action's class;
4. the blobs of the version this node lacks, in batches of
   :data:`publication.MAX_BATCH`, each checked against its sha256 before
   use.

What it fetches is kept in memory, never written: the state directory is
the daemon's, and Mistral processes only read it (the node's mirror
stores the same blobs later). The version cache keeps the blobs with the
version's mount and drops them with it; the fetcher only remembers them
while something holds them, so concurrent actions of one version make one
fetch and share its result, or its failure.

The whole fetch ends within :meth:`ContentFetcher.bound` seconds: the
broker check, plus twice ``cluster_timeout`` shared by every call (each
call gets ``cluster_timeout`` or what is left, whichever is less). That is
far below Mistral's heartbeat timeout, so an action whose content cannot
be had fails at once, with the reason.
"""

import concurrent.futures
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from typing import Protocol

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import publication
from hotload import signals
from hotload import signing
from hotload import store
from hotload import versions

LOG = logging.getLogger(__name__)
#: How many ``cluster_timeout`` all the calls of one fetch share (each
#: call gets one at most): a publisher that answers takes milliseconds,
#: one that does not fails the fetch at its first call.
CALL_BUDGET = 2
#: Seconds a lookup waits for the publisher's generation
#: (:meth:`ContentFetcher.publisher_generation`), and how long after a
#: failure it does not ask again: a publisher that is down must not slow
#: every lookup of an unknown name.
LOOKUP_TIMEOUT = 1.0
LOOKUP_BACKOFF = 30.0
#: Errors of the exchange with the publisher a fetch reports as refused.
REFUSALS = (exceptions.ClusterError, exceptions.SignatureError,
            exceptions.ManifestError, oslo_messaging.MessagingException)


def enabled(conf: cfg.ConfigOpts) -> bool:
    """True when this process can fetch: a ``cluster_key`` and a transport.

    :param conf: Configuration with ``[hotload]``.
    """
    return bool(conf.hotload.cluster_key) and \
        signals.transport_configured(conf)


class Client(Protocol):
    """The publisher's calls a fetch makes, as
    :class:`publication.PublisherClient` makes them: each raises
    :class:`exceptions.ClusterError` when it gets no usable answer."""

    def current_generation(self) -> tuple[int, str | None, str]:
        """The publisher's generation, its digest and its host."""

    def signed_manifest(self, generation: int) -> tuple[bytes, object]:
        """Generation ``generation``'s bytes and signature, unchecked.

        :param generation: The generation to fetch.
        """

    def blobs(self, sha256s: list[str]) -> dict[str, bytes]:
        """Some of the blobs ``sha256s`` names, unchecked.

        :param sha256s: The blobs wanted (at most
            :data:`publication.MAX_BATCH`).
        """


class Overlay(dict):
    """Blobs fetched for one version, by sha256; each checked.

    A dict that can be referenced weakly: the fetcher remembers it only
    while the version's mount holds it.
    """


def _printable(text: str) -> str:
    """``text`` fit for a log line; the publisher's host is its own
    claim."""
    return text if text.isprintable() else repr(text)


class ContentFetcher:
    """Fetches, and checks, the blobs of one version this node lacks.

    Called as ``fetcher(ref)`` by :class:`versions.VersionCache`.

    :param conf: Configuration with the transport and ``[hotload]``
        (``cluster_key``, ``cluster_timeout``).
    :param blobs: This node's blob store, read only: what it has is not
        fetched.
    :param client_factory: Called with the seconds a call may take,
        returns a client of the publisher's calls (:class:`Client`); by
        default a :class:`publication.PublisherClient` on a transport
        made once per process.
    """

    def __init__(self, conf: cfg.ConfigOpts, blobs: store.BlobStore,
                 client_factory: Callable[[float], Client] | None = None
                 ) -> None:
        self.conf = conf
        self.blobs = blobs
        self._client_factory = client_factory or self._publisher_client
        self._transport = None
        self._transport_pid: int | None = None
        self._lookup_failed_at = float('-inf')
        self._lock = threading.Lock()
        #: The fetch under way per content key, and the blobs fetched for
        #: a key while its version's mount holds them.
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._fetched: weakref.WeakValueDictionary[str, Overlay] = \
            weakref.WeakValueDictionary()
        os.register_at_fork(after_in_child=functools.partial(
            _after_fork, weakref.ref(self)))

    def bound(self) -> float:
        """Seconds one fetch takes at most: the broker check and the
        calls (see the module's docstring)."""
        timeout = self.conf.hotload.cluster_timeout
        return self._broker_timeout() + CALL_BUDGET * timeout

    def _broker_timeout(self) -> float:
        return min(self.conf.hotload.cluster_timeout, signals.BROKER_TIMEOUT)

    def missing(self, ref: versions.ActionRef) -> list[str]:
        """The blobs of ``ref``'s version that are not on this node.

        :param ref: A validated reference.
        """
        return [sha for sha in versions.needed_blobs(ref)
                if not os.path.exists(self.blobs.path(sha))]

    def __call__(self, ref: versions.ActionRef) -> Overlay:
        """The blobs of ``ref``'s version this node lacks, each checked.

        One fetch per content key at a time: a caller that comes while
        one is under way waits for it and gets its result, or its error.

        :param ref: The reference an engine sent.
        :returns: sha256 to bytes; empty when nothing is missing.
        :raises FetchError: naming what the fetch found.
        """
        missing = self.missing(ref)
        if not missing:
            return Overlay()
        with self._lock:
            done = self._fetched.get(ref.content_key)
            if done is not None and set(missing) <= done.keys():
                return done
            pending = self._pending.get(ref.content_key)
            fetching = pending is None
            if fetching:
                pending = self._pending[ref.content_key] = \
                    concurrent.futures.Future()
        if not fetching:
            return self._wait(pending, ref, missing)
        try:
            overlay = self._fetch(ref, missing)
        except BaseException as exc:
            with self._lock:
                del self._pending[ref.content_key]
            pending.set_exception(exc)
            raise
        with self._lock:
            # Remembered before the fetch stops being the one under way:
            # a caller in between finds one or the other.
            self._fetched[ref.content_key] = overlay
            del self._pending[ref.content_key]
        pending.set_result(overlay)
        return overlay

    def _wait(self, pending: concurrent.futures.Future,
              ref: versions.ActionRef, missing: list[str]) -> Overlay:
        try:
            # The fetch under way ends within its bound; the margin covers
            # scheduling only.
            return pending.result(self.bound() + 1.0)
        except concurrent.futures.TimeoutError:
            raise self._error(ref, missing, 'the fetch under way did not '
                              f'end within {self.bound():g} s') from None
        except exceptions.FetchError as exc:
            # A new exception per waiter: one raised object in several
            # threads would collect all their tracebacks.
            raise exceptions.FetchError(str(exc)) from None

    def _fetch(self, ref: versions.ActionRef, missing: list[str]) -> Overlay:
        started = time.monotonic()
        deadline = started + self.bound()
        try:
            unreachable = signals.unreachable_brokers(
                self.conf, self._broker_timeout())
        except oslo_messaging.InvalidTransportURL:
            raise self._error(ref, missing, 'transport_url cannot be '
                              'parsed') from None
        if unreachable:
            raise self._error(ref, missing, f'the publisher is unreachable '
                              f'within {self._broker_timeout():g} s: broker '
                              f'{", ".join(unreachable)}')
        try:
            overlay, host = self._fetch_served(ref, missing, deadline)
        except (*REFUSALS, exceptions.FetchError) as exc:
            raise self._error(ref, missing, str(exc)) from None
        except Exception as exc:
            # Still a refusal the user sees with the action; the traceback
            # is for whoever reads the log.
            LOG.exception('Fetching content %s of hot action %s failed',
                          ref.content_key, ref.name)
            raise self._error(ref, missing,
                              f'{type(exc).__name__}: {exc}') from None
        LOG.info('Fetched content %s of hot action %s from the publisher '
                 '(%s): %d blobs in %.0f ms', ref.content_key, ref.name,
                 host, len(overlay), (time.monotonic() - started) * 1000)
        return overlay

    @staticmethod
    def _error(ref: versions.ActionRef, missing: list[str],
               reason: str) -> exceptions.FetchError:
        what = f'blob {missing[0]} is' if len(missing) == 1 else \
            f'blobs {missing[0]} and {len(missing) - 1} more are'
        return exceptions.FetchError(
            f'{what} not on this node, and fetching from the publisher '
            f'failed: {reason}')

    def _call(self, deadline: float, call: Callable[[Client], Any]) -> Any:
        """``call`` on a client whose timeout ends by ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise exceptions.FetchError(
                f'the publisher did not answer within {self.bound():g} s')
        return call(self._client_factory(
            min(self.conf.hotload.cluster_timeout, remaining)))

    def _fetch_served(self, ref: versions.ActionRef, missing: list[str],
                      deadline: float) -> tuple[Overlay, str]:
        """The blobs ``missing`` names, once the publisher's signed index
        and the record it names for the module (from this node's store,
        else fetched and checked against its sha256) serve ``ref``
        exactly.

        :returns: the blobs, and the publisher's host as it says.
        """
        current, _digest, host = self._call(
            deadline, lambda client: client.current_generation())
        host = _printable(host)
        generation = ref.generation or current
        try:
            data, signature = self._call(
                deadline, lambda client: client.signed_manifest(generation))
        except exceptions.ClusterError:
            if generation == current:
                raise
            # Pruned since the engine chose it, most likely (the publisher
            # keeps keep_generations): its current generation serves the
            # same content when the module did not change. Anything else
            # fails this call as well, within the same deadline.
            generation = current
            data, signature = self._call(
                deadline, lambda client: client.signed_manifest(generation))
        source = f'generation {generation} of the publisher ({host})'
        signing.verify(data, signature, self.conf.hotload.cluster_key, source)
        index = manifest_mod.Index.from_json(data, source)
        record_sha = index.records.get(ref.module)
        if index.generation != generation or record_sha is None or \
                index.package_name != ref.package_name:
            raise self._not_served(source, ref)
        try:
            record_data = self.blobs.get(record_sha)
        except exceptions.BlobError:
            record_data = self._fetch_blobs(
                [record_sha], deadline, host)[record_sha]
        record = manifest_mod.record_from_json(
            record_data, ref.module, record_sha, source)
        if not _serves(record, ref):
            raise self._not_served(source, ref)
        # Only now: nothing the signed index does not name is asked for.
        return self._fetch_blobs(missing, deadline, host), host

    @staticmethod
    def _not_served(source: str,
                    ref: versions.ActionRef) -> exceptions.FetchError:
        return exceptions.FetchError(
            f'{source} does not serve content {ref.content_key} of action '
            f'{ref.name}')

    def _fetch_blobs(self, missing: list[str], deadline: float,
                     host: str) -> Overlay:
        overlay = Overlay()
        remaining = list(missing)
        while remaining:
            batch = remaining[:publication.MAX_BATCH]
            received = self._call(
                deadline, lambda client, batch=batch: client.blobs(batch))
            for sha, data in received.items():
                # Checked before use: a rogue server on the broker cannot
                # make this process run anything the signed manifest does
                # not name.
                if sha not in batch or store.sha256_hex(data) != sha:
                    raise exceptions.FetchError(
                        f'blob {sha:.80} from the publisher ({host}) does '
                        f'not match its sha256; refused')
                overlay[sha] = data
            if not received:
                raise exceptions.FetchError(
                    f'the publisher ({host}) sent none of the blobs asked '
                    f'for')
            remaining = [sha for sha in remaining if sha not in overlay]
        return overlay

    def publisher_generation(self) -> int | None:
        """The publisher's generation, within :data:`LOOKUP_TIMEOUT`.

        :returns: None when it cannot be had; then it is not asked again
            for :data:`LOOKUP_BACKOFF` seconds.
        """
        if time.monotonic() - self._lookup_failed_at < LOOKUP_BACKOFF:
            return None
        try:
            if signals.unreachable_brokers(self.conf, LOOKUP_TIMEOUT):
                raise exceptions.ClusterError('broker unreachable')
            generation, _digest, _host = self._client_factory(
                LOOKUP_TIMEOUT).current_generation()
        except (*REFUSALS, oslo_messaging.InvalidTransportURL) as exc:
            LOG.debug('No generation from the publisher: %s', exc)
            self._lookup_failed_at = time.monotonic()
            return None
        return generation

    def _publisher_client(self, timeout: float
                          ) -> publication.PublisherClient:
        with self._lock:
            # A transport must not cross a fork: Mistral's API forks its
            # workers, and the parent's connections are not the child's.
            if self._transport is None or \
                    self._transport_pid != os.getpid():
                self._transport = oslo_messaging.get_rpc_transport(self.conf)
                self._transport_pid = os.getpid()
            transport = self._transport
        return publication.PublisherClient(self.conf, transport,
                                           timeout=timeout)


def _serves(record: manifest_mod.ModuleRecord,
            ref: versions.ActionRef) -> bool:
    """True when ``record`` serves exactly the version ``ref`` names."""
    good = record.good
    return (good is not None
            and good.content_key == ref.content_key
            and good.sha256 == ref.sha256
            and dict(good.imports) == ref.imports
            and tuple(good.packages) == ref.packages
            and any(action.name == ref.name
                    and action.class_name == ref.class_name
                    for action in good.actions))


def _after_fork(fetcher_ref: weakref.ref) -> None:
    """Reset a fetcher's thread state in a forked child: the threads that
    held its lock or ran its fetches are not there."""
    fetcher = fetcher_ref()
    if fetcher is not None:
        fetcher._lock = threading.Lock()
        fetcher._pending = {}
