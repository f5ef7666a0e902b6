"""The action provider that Mistral loads in its API, engine and executor.

Registered in the entry point group ``mistral.action.providers`` as
``hotload``. It serves the action table of the newest manifest generation:

* ``find()`` and ``find_all()`` answer from an in-memory table. Before
  answering they compare one ``stat`` of ``manifest.json`` with the one the
  table was built from (no read), so a generation the daemon published is
  seen by the next call on the node even when no signal arrived. A new
  table is swapped in by one reference assignment; readers take no lock.
* Descriptors need no user code: names, descriptions and parameters come
  from the manifest, so the API process never imports an action module.
* ``instantiate()`` (in the engine) loads the class of exactly the version
  the table names, mounted under its content key, and wraps the action in
  :class:`HotloadAction`. Its serializer sends the content key with the
  action, and the executor loads that same content from the blob store
  (checking every hash), whatever generation its own table is at. If the
  content cannot be had, the action fails with an error naming the action,
  the key and the host; another version is never run instead.
* Module versions are cached by content key: an unchanged module is loaded
  once per process; versions the table no longer names are dropped from
  the cache (actions in flight keep their classes alive until they end).
"""

import collections
import dataclasses
import importlib
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
from hotload import loader
from hotload import manifest as manifest_mod
from hotload import signals
from hotload import store
from hotload import trust

LOG = logging.getLogger(__name__)
MOUNT_PREFIX = '_hotload_'
MAX_ERRORS = 10
#: Seconds a version looked up stays loaded before anything holds it.
HOLD_GRACE = 60.0


@dataclasses.dataclass(frozen=True)
class ActionRef:
    """Everything an executor needs to run exactly the chosen version.

    :param name: The action's name.
    :param module: Module name inside the package.
    :param class_name: Class name in the module.
    :param sha256: Hash of the module's source.
    :param imports: In-tree imports and their hashes, as in the manifest.
    :param packages: Which of those are packages.
    :param content_key: Key of module plus imports.
    :param package_name: Import name the tree was validated under.
    """

    name: str
    module: str
    class_name: str
    sha256: str
    imports: dict[str, str | None]
    packages: tuple[str, ...]
    content_key: str
    package_name: str

    @classmethod
    def of(cls, action: manifest_mod.ActionSpec,
           record: manifest_mod.ModuleRecord,
           package_name: str) -> 'ActionRef':
        good = record.good
        return cls(action.name, record.name, action.class_name, good.sha256,
                   dict(good.imports), tuple(good.packages), good.content_key,
                   package_name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data['packages'] = list(self.packages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'ActionRef':
        return cls(**dict(data, packages=tuple(data['packages'])))


class VersionCache:
    """Action classes loaded by content key, each version under its mount.

    :param blobs: The blob store sources are read from (hash-checked).
    :param root: The actions directory, for file names in tracebacks.
    """

    def __init__(self, blobs: store.BlobStore, root: str) -> None:
        self.blobs = blobs
        self.root = root
        self._importers: dict[str, loader.TreeImporter] = {}
        #: Live actions per mount (see hold()), and the mounts the current
        #: table names.
        self._users: collections.Counter[str] = collections.Counter()
        self._wanted: set[str] = set()
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._router = _MountRouter(self._importers)
        sys.meta_path.insert(0, self._router)
        #: Recent failures to load a manifest or an action's version.
        self.errors: collections.deque[str] = collections.deque(
            maxlen=MAX_ERRORS)

    def action_class(self, ref: ActionRef) -> type:
        """The class ``ref`` names, loading its version if needed.

        :raises BlobError: when the content is missing or does not match
            its hashes.
        """
        if manifest_mod.content_key(ref.module, ref.sha256,
                                    ref.imports) != \
                ref.content_key:
            self.errors.append(f'{ref.name}: content key mismatch')
            raise exceptions.BlobError(
                f'content key {ref.content_key} does not match the hashes '
                f'sent with action {ref.name}')
        mount = MOUNT_PREFIX + ref.content_key
        with self._lock:
            self._touched[mount] = time.monotonic()
            if mount not in self._importers:
                self._importers[mount] = loader.TreeImporter(
                    ref.package_name, self.root,
                    loader.version_sources(ref.module, ref.sha256,
                                           ref.imports, ref.packages),
                    self.blobs.get, mount_name=mount)
        try:
            module = importlib.import_module(f'{mount}.{ref.module}')
            return getattr(module, ref.class_name)
        except BaseException as exc:
            self._forget(mount)
            self.errors.append(f'{ref.name} [content_key='
                               f'{ref.content_key}]: {type(exc).__name__}: '
                               f'{exc}')
            raise

    def hold(self, action: 'HotloadAction') -> None:
        """Keep ``action``'s version loaded for as long as it exists.

        An action in flight may import in-tree modules of its own version
        at run time; its version stays mounted until it is garbage.
        """
        mount = MOUNT_PREFIX + action.ref.content_key
        with self._lock:
            self._users[mount] += 1
        weakref.finalize(action, self._release, mount)

    def _release(self, mount: str) -> None:
        with self._lock:
            self._users[mount] -= 1
            idle = self._users[mount] <= 0
            if idle:
                del self._users[mount]
            stale = idle and mount not in self._wanted
        if stale:
            self._forget(mount)

    def retain(self, content_keys: set[str]) -> None:
        """Drop loaded versions not in ``content_keys`` that nothing uses.

        Versions still used by an action are dropped when it is released.
        """
        # A version just looked up may not be held yet (instantiate loads
        # the class, then wraps the action): leave it a moment.
        recent = time.monotonic() - HOLD_GRACE
        with self._lock:
            self._wanted = {MOUNT_PREFIX + key for key in content_keys}
            stale = [m for m in self._importers
                     if m not in self._wanted and not self._users[m]
                     and self._touched.get(m, 0) < recent]
        for mount in stale:
            self._forget(mount)

    def loaded(self) -> set[str]:
        """Content keys with a loaded version."""
        return {m[len(MOUNT_PREFIX):] for m in self._importers}

    def _forget(self, mount: str) -> None:
        with self._lock:
            importer = self._importers.pop(mount, None)
            self._touched.pop(mount, None)
        if importer:
            importer.uninstall()


class _MountRouter:
    """One meta path entry for every mounted version (O(1) per import)."""

    def __init__(self, importers: dict[str, loader.TreeImporter]) -> None:
        self._importers = importers

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(MOUNT_PREFIX):
            return None
        importer = self._importers.get(fullname.partition('.')[0])
        return importer.find_spec(fullname, path, target) if importer \
            else None


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

    :param ref: The version that was asked for.
    :param reason: Why it cannot be loaded.
    """

    def __init__(self, ref: ActionRef, reason: str) -> None:
        super().__init__()
        self.ref = ref
        self.reason = reason

    def run(self, context):
        return ml_actions.Result(error=(
            f'hot action {self.ref.name} cannot run on host '
            f'{socket.gethostname()}: content {self.ref.content_key} is not '
            f'available ({self.reason})'))

    def __repr__(self) -> str:
        return f'unavailable hot action {self.ref.name}'


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

    def deserialize_from_dict(self, entity_dict: dict[str, Any]):
        ref = ActionRef.from_dict(entity_dict['ref'])
        cache = _CACHE
        if cache is None:
            return UnavailableAction(ref, 'the hotload provider is not '
                                          'loaded in this process')
        try:
            cls = cache.action_class(ref)
        except exceptions.BlobError as exc:
            LOG.error('Cannot load hot action %s: %s', ref.name, exc)
            return UnavailableAction(ref, str(exc))
        except BaseException as exc:  # reported to the engine
            LOG.exception('Cannot load hot action %s', ref.name)
            return UnavailableAction(ref, f'{type(exc).__name__}: {exc}')
        # As mistral-lib's own ActionSerializer: the engine ran __init__,
        # the executor restores the state it produced.
        action = cls.__new__(cls)
        for key, value in entity_dict['data'].items():
            setattr(action, key, value)
        wrapped = HotloadAction(action, ref)
        cache.hold(wrapped)
        return wrapped


def _register_serializer() -> None:
    try:
        serialization.register_serializer(HotloadAction,
                                          HotloadActionSerializer())
    except RuntimeError:
        pass  # already registered: this module was imported twice


_register_serializer()
_CACHE: VersionCache | None = None


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
        self.states = store.ManifestStore(options.state_dir)
        self.cache = VersionCache(self.states.blobs, options.actions_dir)
        _CACHE = self.cache
        self._table = _Table(None, None, {})
        self._refused_key: tuple | None = None
        self._reload_lock = threading.Lock()
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
        return self._current().descriptors.get(action_name)

    def find_all(self, namespace=None, limit=None, sort_fields=None,
                 sort_dirs=None, filters=None):
        # Mistral filters, sorts and pages the result itself.
        return list(self._current().descriptors.values())

    def _current(self) -> _Table:
        self._ensure_listener()
        table = self._table
        key = _key(self._stat())
        if key != table.stat_key and key != self._refused_key:
            self.refresh()
            table = self._table
        return table

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.states.current_path)
        except FileNotFoundError:
            return None

    def refresh(self) -> bool:
        """Load the newest generation if it changed; True if swapped.

        A manifest that cannot be used is refused once per version of the
        file (logged, listed in ``status``) and the table being served
        stays; lookups do not read it again until it changes.
        """
        with self._reload_lock:
            st = self._stat()
            key = _key(st)
            if key == self._table.stat_key or key == self._refused_key:
                return False
            try:
                if st is not None:
                    self._check_trusted(st)
                current = self.states.load()
            # A provider must never break Mistral's lookups, whatever is on
            # disk: anything here is reported, and the old table serves.
            except Exception as exc:  # noqa: BLE001
                self._refused_key = key
                LOG.error('Keeping hot action generation %d: %s',
                          self.generation, exc)
                self.cache.errors.append(str(exc))
                return False
            if current is None:
                self._table = _Table(key, None, {})
                return True
            descriptors = {}
            for action, record in current.actions():
                ref = ActionRef.of(action, record, current.package_name)
                descriptors[action.name] = HotloadActionDescriptor(
                    ref, action, self.cache)
            self.cache.retain({d.ref.content_key
                               for d in descriptors.values()})
            self._table = _Table(key, current, descriptors,
                                 time.strftime('%Y-%m-%dT%H:%M:%S%z'))
        LOG.info('Serving hot action generation %d (%d actions)',
                 current.generation, len(descriptors))
        return True

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
            'host': socket.gethostname(),
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
