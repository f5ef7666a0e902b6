"""The action provider that Mistral loads in its API, engine and executor.

Registered in the entry point group ``mistral.action.providers`` as
``hotload``. It serves the action table of the newest manifest generation:

* ``find()`` and ``find_all()`` answer from an in-memory table and never
  wait for a reload: one thread builds the next table while lookups keep
  answering from the current one, and a new table is swapped in by one
  reference assignment (readers never take the reload lock; only a lookup
  that starts a refresh takes a momentary one). Before answering, a
  lookup compares one ``stat`` of ``manifest.json`` with the last one
  examined (no read); when it changed and no signal arrived, the lookup
  starts a refresh in the background (one at a time) rather than paying
  for it. The trade-off: for a moment after a publish, a lookup may get
  the previous version of an action, or one just removed, as it would had
  it come a little earlier. Only ``find()`` of a name the current table
  lacks waits for a pending refresh, at most :data:`FIND_WAIT` seconds,
  so a file just dropped is found by the first workflow that uses it even
  without a signal; a name that stays unknown costs that wait only while
  a refresh is under way.
* The table only moves forward: a ``manifest.json`` that is missing (the
  file or the state directory was removed), untrusted, unreadable or of a
  lower generation than the one served (a stale or foreign state
  directory) is reported once per version of the file, in the log and in
  ``describe()['errors']``, and the current table keeps serving until the
  daemon publishes a usable generation.
* Descriptors need no user code: names, descriptions and parameters come
  from the manifest, so the API process never imports an action module.
* ``instantiate()`` (in the engine) loads the class of exactly the version
  the table names, mounted under its content key, and wraps the action in
  :class:`HotloadAction`. Its serializer sends the content key with the
  action, and the executor loads that same content from the blob store
  (checking every hash), whatever generation its own table is at. If the
  content cannot be had, the action fails with an error naming the action,
  the key and the host; another version is never run instead.
* Module versions are cached by content key (:mod:`hotload.versions`):
  an unchanged module is loaded once per process; versions the table no
  longer names are dropped from the cache once no action holds them and
  they were not used for a while.
* A serialized action is checked field by field before anything is read:
  a reference that is malformed, names a non-hex hash or an unknown key
  fails the action cleanly, like missing content.
"""

import dataclasses
import datetime
import functools
import inspect
import os
import socket
import sys
import threading
import time
import weakref
from typing import Any

from mistral_lib import actions as ml_actions
from mistral_lib import serialization
from mistral_lib.actions.providers import base as providers_base
from oslo_config import cfg
from oslo_log import log as logging

from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import signals
from hotload import store
from hotload import trust
from hotload import versions
from hotload.versions import ActionRef
from hotload.versions import VersionCache

LOG = logging.getLogger(__name__)
#: Seconds find() of a name the table lacks waits for a refresh under way.
FIND_WAIT = 2.0


class HotloadAction(ml_actions.Action):
    """Wraps a hot action so it travels with its exact version.

    :param action: The user's action object.
    :param ref: The version it belongs to.
    """

    def __init__(self, action: Any, ref: ActionRef) -> None:
        super().__init__()
        self.action = action
        self.ref = ref

    @classmethod
    def get_serialization_key(cls) -> str:
        return f'{cls.__module__}.{cls.__name__}'

    def run(self, context):
        run = self.action.run
        # Seed-style classes define run(self) without the context.
        if _takes_argument(run):
            return run(context)
        return run()

    def is_sync(self) -> bool:
        is_sync = getattr(self.action, 'is_sync', None)
        return is_sync() if callable(is_sync) else True

    def __repr__(self) -> str:
        return (f'hot action {self.ref.name} '
                f'[content_key={self.ref.content_key}]')


class UnavailableAction(ml_actions.Action):
    """Stands in, in the executor, for a version that cannot be loaded.

    Running it fails the action with the reason; nothing else is run.

    :param name: The action's name; None when the reference sent is too
        broken to tell.
    :param reason: Why it cannot be loaded.
    :param content_key: The version that was asked for; None when the
        reference sent is invalid.
    """

    def __init__(self, name: str | None, reason: str,
                 content_key: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.reason = reason
        self.content_key = content_key

    def run(self, context):
        what = (f'content {self.content_key} is not available'
                if self.content_key else 'the reference sent is invalid')
        return ml_actions.Result(error=(
            f'hot action {self.name or "(name unknown)"} cannot run on host '
            f'{_HOST or socket.gethostname()}: {what} ({self.reason})'))

    def __repr__(self) -> str:
        return f'unavailable hot action {self.name or "(name unknown)"}'


def _takes_argument(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                          p.VAR_POSITIONAL) for p in parameters)


class HotloadActionSerializer(serialization.DictBasedSerializer):
    """Sends a hot action with its content key; loads exactly that back."""

    def serialize_to_dict(self, entity: HotloadAction) -> dict[str, Any]:
        return {'ref': entity.ref.to_dict(), 'data': vars(entity.action)}

    def deserialize_from_dict(self, entity_dict: Any):
        try:
            ref, data = self._checked(entity_dict)
        except exceptions.InvalidReferenceError as exc:
            name = _sent_name(entity_dict)
            LOG.error('Refusing serialized hot action %s: %s',
                      name or '(name unknown)', exc)
            return UnavailableAction(name, str(exc))
        cache = _CACHE
        if cache is None:
            return UnavailableAction(ref.name, 'the hotload provider is not '
                                     'loaded in this process',
                                     ref.content_key)
        try:
            cls = cache.action_class(ref)
            # As mistral-lib's own ActionSerializer: the engine ran
            # __init__, the executor restores the state it produced.
            action = cls.__new__(cls)
            for key, value in data.items():
                setattr(action, key, value)
        except exceptions.BlobError as exc:
            LOG.error('Cannot load hot action %s: %s', ref.name, exc)
            return UnavailableAction(ref.name, str(exc), ref.content_key)
        except BaseException as exc:  # reported to the engine
            LOG.exception('Cannot load hot action %s', ref.name)
            return UnavailableAction(ref.name, f'{type(exc).__name__}: {exc}',
                                     ref.content_key)
        wrapped = HotloadAction(action, ref)
        cache.hold(wrapped)
        return wrapped

    @staticmethod
    def _checked(entity_dict: Any) -> tuple[ActionRef, dict[str, Any]]:
        """The reference and state :meth:`serialize_to_dict` produced.

        :raises InvalidReferenceError: for anything it cannot produce.
        """
        if not isinstance(entity_dict, dict) or \
                set(entity_dict) != {'ref', 'data'}:
            raise exceptions.InvalidReferenceError(
                'the serialized action is not an object with exactly the '
                'keys "ref" and "data"')
        data = entity_dict['data']
        if not isinstance(data, dict) or \
                not all(isinstance(key, str) for key in data):
            raise exceptions.InvalidReferenceError(
                'the action\'s state is not an object')
        return ActionRef.from_dict(entity_dict['ref']), data


def _sent_name(entity_dict: Any) -> str | None:
    """The action name an invalid serialized action carries, if any."""
    ref = entity_dict.get('ref') if isinstance(entity_dict, dict) else None
    name = ref.get('name') if isinstance(ref, dict) else None
    if isinstance(name, str) and name.isprintable():
        return name[:versions.MAX_NAME]
    return None


def _register_serializer() -> None:
    try:
        serialization.register_serializer(HotloadAction,
                                          HotloadActionSerializer())
    except RuntimeError:
        pass  # already registered: this module was imported twice


_register_serializer()
_CACHE: VersionCache | None = None
_HOST: str | None = None


class HotloadActionDescriptor(providers_base.ActionDescriptorBase):
    """A hot action as Mistral sees it; built from the manifest alone.

    :param ref: The version the action belongs to.
    :param spec: Its entry in the manifest.
    :param cache: Where its class is loaded from when instantiated.
    """

    def __init__(self, ref: ActionRef, spec: manifest_mod.ActionSpec,
                 cache: VersionCache) -> None:
        # Namespace '' as Mistral's own actions: listed by default. find()
        # ignores namespaces, so hot actions serve every namespace.
        super().__init__(spec.name, spec.description, spec.input,
                         namespace='')
        self.ref = ref
        self._cache = cache

    @property
    def action_class_name(self) -> str:
        return f'{self.ref.package_name}.{self.ref.module}.' \
               f'{self.ref.class_name}'

    def instantiate(self, params, wf_ctx):
        cls = self._cache.action_class(self.ref)
        action = HotloadAction(cls(**(params or {})), self.ref)
        self._cache.hold(action)
        return action

    def __repr__(self) -> str:
        return (f'Hot action [name={self.name}, '
                f'class={self.action_class_name}, '
                f'content_key={self.ref.content_key}]')


@dataclasses.dataclass(frozen=True)
class _Table:
    stat_key: tuple | None
    manifest: manifest_mod.Manifest | None
    descriptors: dict[str, HotloadActionDescriptor]
    loaded_at: str = ''


def _key(st: os.stat_result | None) -> tuple | None:
    """What identifies one version of ``manifest.json``, and its trust."""
    if st is None:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_uid, st.st_mode)


#: A stat key no manifest.json has: the first refresh always looks.
_NEVER: tuple = ()


def _after_fork(provider_ref: weakref.ref) -> None:
    """Reset a provider's thread state in a forked child.

    A server may fork after creating its provider: the child has none of
    the parent's threads, so a lock one of them held, or a background
    refresh it ran, would never end there.
    """
    provider = provider_ref()
    if provider is not None:
        provider._reload_lock = threading.Lock()
        provider._background_lock = threading.Lock()
        provider._background = None


def _service_name() -> str:
    """api, engine, executor... from ``mistral-server --server NAME``."""
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == '--server' and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith('--server='):
            return arg.split('=', 1)[1]
    return os.path.basename(argv[0]) if argv and argv[0] else 'python'


class HotloadActionProvider(ml_actions.ActionProvider):
    """Serves the hot actions of the node's current generation.

    :param name: Provider name Mistral registered it under.
    :param conf: Configuration to read ``[hotload]`` and the messaging
        transport from; Mistral's global configuration by default.
    """

    def __init__(self, name: str = 'hotload',
                 conf: cfg.ConfigOpts | None = None) -> None:
        super().__init__(name)
        global _CACHE
        self.conf = conf or cfg.CONF
        if hotload_conf.GROUP not in self.conf:
            hotload_conf.register_opts(self.conf)
        options = self.conf.hotload
        global _HOST
        #: The node this process is on: Mistral's ``[DEFAULT] host`` when
        #: set (several nodes can share a machine), else the host name.
        self.host = _HOST = hotload_conf.node_name(self.conf)
        self.states = store.ManifestStore(options.state_dir)
        self.cache = VersionCache(self.states.blobs, options.actions_dir)
        _CACHE = self.cache
        self._table = _Table(None, None, {})
        #: Stat key of the last manifest.json examined, whether served,
        #: refused or missing: lookups start a refresh when it changes.
        self._seen_key: tuple | None = _NEVER
        # Taken by whoever builds the next table; never by a lookup.
        self._reload_lock = threading.Lock()
        #: Set when the background refresh under way, if any, ends.
        self._background: threading.Event | None = None
        self._background_lock = threading.Lock()
        os.register_at_fork(after_in_child=functools.partial(
            _after_fork, weakref.ref(self)))
        self._policy = trust.TrustPolicy(options.trusted_owners,
                                         options.max_file_size)
        self._listener: signals.Listener | None = None
        self._listener_pid: int | None = None
        # Mistral builds providers in the worker that serves (never in a
        # server's master), the executor at start, the API and engine at
        # their first lookup; listen from there. A provider that raised
        # here would break every lookup of every action, so a bad state
        # directory is logged and an empty table served until it is fixed.
        try:
            self.refresh()
        except Exception:
            LOG.exception('Cannot load hot actions from %s',
                          self.states.state_dir)
        self._ensure_listener()

    @property
    def generation(self) -> int:
        """Generation of the table being served (0: none yet)."""
        manifest = self._table.manifest
        return manifest.generation if manifest else 0

    def find(self, action_name, namespace=None):
        table, pending = self._current()
        descriptor = table.descriptors.get(action_name)
        if descriptor is None and pending is not None:
            # Perhaps a file just dropped, and this the first workflow to
            # use it: worth a short wait (see the module docstring).
            pending.wait(FIND_WAIT)
            descriptor = self._table.descriptors.get(action_name)
        return descriptor

    def find_all(self, namespace=None, limit=None, sort_fields=None,
                 sort_dirs=None, filters=None):
        # Mistral filters, sorts and pages the result itself.
        return list(self._current()[0].descriptors.values())

    def _current(self) -> tuple[_Table, threading.Event | None]:
        """The table to answer from, and the refresh under way, if any."""
        self._ensure_listener()
        if _key(self._stat()) == self._seen_key:
            return self._table, None
        return self._table, self._refresh_in_background()

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.states.current_path)
        except OSError:  # refresh() tells why
            return None

    def _refresh_in_background(self) -> threading.Event:
        """Start a refresh unless one is under way; set when it ends."""
        with self._background_lock:
            if self._background is not None:
                return self._background
            done = self._background = threading.Event()
        try:
            threading.Thread(target=self._refresh_then_set, args=(done,),
                             daemon=True, name='hotload-refresh').start()
        except RuntimeError:  # no thread to be had: the next lookup retries
            LOG.exception('Cannot start a hot action refresh')
            self._refresh_then_set(done, run=False)
        return done

    def _refresh_then_set(self, done: threading.Event,
                          run: bool = True) -> None:
        try:
            if run:
                self.refresh()
        except Exception:  # the next change of the manifest retries
            LOG.exception('Cannot refresh hot actions from %s',
                          self.states.state_dir)
        finally:
            with self._background_lock:
                self._background = None
            done.set()

    def refresh(self) -> bool:
        """Load the newest generation if it changed; True if swapped.

        Called by the signal listener, by a background thread a lookup
        started, or directly. A manifest that cannot be used (missing,
        untrusted, unreadable, or of a lower generation than the one
        served) is refused once per version of the file: logged, listed
        in ``describe()['errors']``, and the table being served stays;
        lookups do not read it again until it changes.
        """
        with self._reload_lock:
            path = self.states.current_path
            try:
                st = os.stat(path)
            except OSError as exc:
                st, missing = None, str(exc)
            key = _key(st)
            if key == self._seen_key:
                return False
            try:
                current = None
                if st is not None:
                    self._check_trusted(st)
                    current = self.states.load()
                if current is None:
                    self._seen_key = key
                    # Someone removed the file or the state directory:
                    # nothing to serve instead, and emptying the table
                    # would fail every hot action until the next publish.
                    if self._table.manifest is not None:
                        self._refuse(
                            f'{missing if st is None else path + " vanished"}'
                            f'; serving on until the daemon publishes a '
                            f'generation')
                    return False
                if current.generation < self.generation and \
                        not self._is_reset(current):
                    raise exceptions.ManifestError(
                        f'{path}: generation '
                        f'{current.generation} is older than the generation '
                        f'{self.generation} being served: a stale or foreign '
                        f'state directory')
            # A provider must never break Mistral's lookups, whatever is on
            # disk: anything here is reported, and the old table serves.
            except Exception as exc:  # noqa: BLE001
                self._seen_key = key
                self._refuse(str(exc))
                return False
            descriptors = {}
            for action, record in current.actions():
                ref = ActionRef.of(action, record, current.package_name)
                descriptors[action.name] = HotloadActionDescriptor(
                    ref, action, self.cache)
            self.cache.retain({d.ref.content_key
                               for d in descriptors.values()})
            # Table first: a lookup that sees the new key must find the
            # table built from it.
            self._table = _Table(key, current, descriptors,
                                 time.strftime('%Y-%m-%dT%H:%M:%S%z'))
            self._seen_key = key
        LOG.info('Serving hot action generation %d (%d actions)',
                 current.generation, len(descriptors))
        return True

    def _is_reset(self, candidate: manifest_mod.Manifest) -> bool:
        """True when a lower generation was built after the served one.

        A running daemon keeps numbers increasing even when its state
        directory is removed; one that starts on an empty state directory
        (an operator reset it while the daemon was stopped) begins at 1
        again. Such a generation is newer than the one served, and
        refusing it would leave this process on the old table until the
        numbers caught up. An old copy put back (a backup restored) is
        older, and stays refused.
        """
        served = self._table.manifest
        try:
            newer = (datetime.datetime.fromisoformat(candidate.created_at)
                     > datetime.datetime.fromisoformat(served.created_at))
        except (AttributeError, TypeError, ValueError):
            return False
        if newer:
            LOG.warning('Hot action generation %d was built after the '
                        'generation %d served: the state directory was '
                        'reset; taking it', candidate.generation,
                        served.generation)
        return newer

    def _refuse(self, problem: str) -> None:
        LOG.error('Keeping hot action generation %d: %s', self.generation,
                  problem)
        self.cache.errors.append(problem)

    def _check_trusted(self, st: os.stat_result) -> None:
        """Refuse a manifest someone untrusted could have written.

        The manifest names the code this process runs (blobs are checked
        against its hashes), so it gets the trust rules of the actions
        directory: a trusted owner, not writable by group or others, in a
        state directory that is the same.
        """
        problem = (self._policy.check_owner_and_mode(st, 'manifest.json')
                   or self._policy.check_dir(
                       self.states.state_dir,
                       os.stat(self.states.state_dir))
                   or self._policy.check_ancestors(self.states.state_dir))
        if problem:
            raise exceptions.UntrustedManifestError(
                f'{self.states.current_path} is not trusted: {problem}')

    def _ensure_listener(self) -> None:
        # Mistral creates providers lazily, and a server may fork after
        # creating one: listen from the process that serves, once. In a
        # thread: connecting to a broker that is down must not hold up a
        # lookup.
        pid = os.getpid()
        if self._listener_pid == pid:
            return
        self._listener_pid = pid
        threading.Thread(target=self._start_listener, daemon=True,
                         name='hotload-listener').start()

    def describe(self) -> dict[str, Any]:
        """What this process serves, for ``mistral-hotload status``."""
        table = self._table
        return {
            'host': self.host,
            'service': _service_name(),
            'pid': os.getpid(),
            'generation': self.generation,
            'loaded_at': table.loaded_at,
            'actions': len(table.descriptors),
            'errors': list(self.cache.errors),
            'loaded': sorted(self.cache.loaded()),
        }

    def _start_listener(self) -> None:
        try:
            self._listener = signals.Listener.start(
                self.conf, self.refresh, self.describe)
        except Exception:  # signals only speed things up
            LOG.exception('Cannot listen for hotload signals; new '
                          'generations are still noticed on each lookup')
