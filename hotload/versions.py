"""Exact module versions inside a Mistral process.

An :class:`ActionRef` names one action of one module version: what the
engine sends with a serialized action, and what the executor loads back.
A :class:`VersionCache` mounts each version it is asked for under its own
import name, ``_hotload_<content key>``, reading the sources from the blob
store (and what this node lacks from the publisher, when it is given a
fetcher: :mod:`hotload.fetch`), and keeps it mounted while it is named by
the current table or held by an action; of the others, the
:data:`IDLE_VERSIONS` used last stay mounted for :data:`HOLD_GRACE`
seconds after their last use. Unmounting removes everything the version
added to the process (its ``sys.modules`` entries and ``linecache``
lines), so a process that reloads one module a thousand times holds no
more than a few of its versions; and a sweep that unmounted something
has the garbage collector free them, and the C allocator return the
freed pages to the system, at most once every :data:`COLLECT_INTERVAL`
seconds (see :meth:`VersionCache._release_memory`).
"""

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import importlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

from hotload import exceptions
from hotload import loader
from hotload import manifest as manifest_mod
from hotload import store
from hotload import trust

MOUNT_PREFIX = '_hotload_'
MAX_ERRORS = 10
#: Seconds a version stays loaded after its last use when nothing holds it
#: and the current table does not name it: an executor that runs several
#: actions of an older version one after another imports it once.
HOLD_GRACE = 60.0
#: Most versions kept mounted that the current table does not name and no
#: action holds (the least recently used go first): without a bound, a
#: module edited many times within :data:`HOLD_GRACE` would keep every
#: version of it loaded.
IDLE_VERSIONS = 8
#: Longest action name a reference may carry (Mistral stores 255).
MAX_NAME = 255
#: Fewest seconds between two collections of unmounted versions (a full
#: garbage collection and a trim of the C heap, see
#: :meth:`VersionCache._release_memory`): at the pace of edits, every
#: unmount is followed by one; a burst of reloads costs one a second.
COLLECT_INTERVAL = 1.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (musl,
    macOS) and trimming is left to the allocator."""
    name = ctypes.util.find_library('c')
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def trim_heap() -> bool:
    """Return the free pages of the C heap to the system, where glibc can.

    :returns: True when glibc released memory.
    """
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False


def _is_dotted_name(value: Any) -> bool:
    return isinstance(value, str) and all(
        trust.is_identifier(part) for part in value.split('.'))


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
    :param generation: The generation of the table that chose it; 0 when
        unknown (a reference from an older build). An executor that lacks
        the content fetches that generation's signed manifest.
    """

    name: str
    module: str
    class_name: str
    sha256: str
    imports: dict[str, str | None]
    packages: tuple[str, ...]
    content_key: str
    package_name: str
    generation: int = 0

    @classmethod
    def of(cls, action: manifest_mod.ActionSpec,
           record: manifest_mod.ModuleRecord,
           package_name: str, generation: int = 0) -> 'ActionRef':
        """The reference of ``action`` in the version ``record`` serves.

        :param action: The action's entry in the manifest.
        :param record: Its module's record (with a good version).
        :param package_name: The manifest's package name.
        :param generation: The manifest's generation.
        """
        good = record.good
        return cls(action.name, record.name, action.class_name, good.sha256,
                   dict(good.imports), tuple(good.packages), good.content_key,
                   package_name, generation)

    def to_dict(self) -> dict[str, Any]:
        """The reference as JSON-ready primitives."""
        data = dataclasses.asdict(self)
        data['packages'] = list(self.packages)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> 'ActionRef':
        """Rebuild a reference another process sent, checking every field.

        Hashes name files in the blob store and names are imported, so
        anything :meth:`to_dict` cannot have produced is refused rather
        than used.

        :param data: What :meth:`to_dict` returned, after a trip through
            JSON.
        :raises InvalidReferenceError: naming the first thing wrong.
        """
        if not isinstance(data, dict):
            raise exceptions.InvalidReferenceError(
                f'the reference is a {type(data).__name__}, not an object')
        known = {field.name for field in dataclasses.fields(cls)}
        extra = sorted(map(str, set(data) - known))
        # An engine of an older build sends no generation.
        missing = sorted(known - set(data) - {'generation'})
        if extra or missing:
            raise exceptions.InvalidReferenceError(
                'the reference has ' + '; '.join(
                    f'{what} keys {", ".join(keys)}'
                    for what, keys in (('unknown', extra),
                                       ('no', missing)) if keys))
        name = data['name']
        if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME
                and name.isprintable()):
            raise exceptions.InvalidReferenceError(
                f'name {name!r:.80} is not an action name')
        for key in ('sha256', 'content_key'):
            if not store.is_sha256(data[key]):
                raise exceptions.InvalidReferenceError(
                    f'{key} {data[key]!r:.80} is not 64 lowercase hex '
                    f'digits')
        for key in ('module', 'package_name'):
            if not _is_dotted_name(data[key]):
                raise exceptions.InvalidReferenceError(
                    f'{key} {data[key]!r:.80} is not a dotted module name')
        if not (isinstance(data['class_name'], str)
                and trust.is_identifier(data['class_name'])):
            raise exceptions.InvalidReferenceError(
                f'class_name {data["class_name"]!r:.80} is not an '
                f'identifier')
        imports = data['imports']
        if not isinstance(imports, dict):
            raise exceptions.InvalidReferenceError(
                'imports is not an object')
        for module, sha in imports.items():
            if not _is_dotted_name(module) or not (
                    sha is None or store.is_sha256(sha)):
                raise exceptions.InvalidReferenceError(
                    f'import {module!r:.80}: {sha!r:.80} is not a dotted '
                    f'module name with 64 lowercase hex digits or null')
        packages = data['packages']
        if not (isinstance(packages, list)
                and all(map(_is_dotted_name, packages))):
            raise exceptions.InvalidReferenceError(
                f'packages {packages!r:.80} is not a list of dotted module '
                f'names')
        generation = data.get('generation', 0)
        if type(generation) is not int or generation < 0:
            raise exceptions.InvalidReferenceError(
                f'generation {generation!r:.40} is not a generation number')
        return cls(name, data['module'], data['class_name'], data['sha256'],
                   dict(imports), tuple(packages), data['content_key'],
                   data['package_name'], generation)


def serialized_action(entity_dict: Any) -> tuple[ActionRef, dict[str, Any]]:
    """The reference and state of a hot action an engine serialized.

    :param entity_dict: What the provider's serializer produced
        (``{'ref': ..., 'data': ...}``), after a trip through JSON.
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


def sent_name(entity_dict: Any) -> str | None:
    """The action name an invalid serialized action carries, if any.

    :param entity_dict: What was received, whatever it is.
    """
    ref = entity_dict.get('ref') if isinstance(entity_dict, dict) else None
    name = ref.get('name') if isinstance(ref, dict) else None
    if isinstance(name, str) and name.isprintable():
        return name[:MAX_NAME]
    return None


def needed_blobs(ref: ActionRef) -> list[str]:
    """Every blob ``ref``'s version is read from.

    :param ref: A validated reference.
    """
    return sorted({ref.sha256, *(s for s in ref.imports.values() if s)})


class VersionCache:
    """Action classes loaded by content key, each version under its mount.

    A version is unmounted by :meth:`sweep` once nothing holds it, the
    current table does not name it, and either it was not used for
    :data:`HOLD_GRACE` seconds or :data:`IDLE_VERSIONS` other such
    versions were used since. Sweeps run when a table is swapped in
    (:meth:`retain`) and when a version is mounted, never when an action
    is released: releases run in garbage collection, at any point of any
    thread.

    :param blobs: The blob store sources are read from (hash-checked).
    :param root: The actions directory, for file names in tracebacks.
    :param fetch: Called with a reference whose version has blobs this
        node lacks; returns them, checked, by sha256, or raises
        :class:`exceptions.BlobError` saying why not
        (:class:`hotload.fetch.ContentFetcher`). The version's mount reads
        them before the blob store, for as long as it is mounted. None: a
        version with a missing blob cannot be loaded.
    """

    def __init__(self, blobs: store.BlobStore, root: str,
                 fetch: Callable[[ActionRef], Mapping[str, bytes]] | None
                 = None) -> None:
        self.blobs = blobs
        self.root = root
        self._fetch = fetch
        self._importers: dict[str, loader.TreeImporter] = {}
        #: Live actions per mount (see hold()), the mounts the current
        #: table names, and when each mount was last looked up or released.
        self._users: collections.Counter[str] = collections.Counter()
        self._wanted: set[str] = set()
        self._touched: dict[str, float] = {}
        # Reentrant: an action's finalizer (_release) may run in garbage
        # collection triggered inside a locked section of the same thread.
        self._lock = threading.RLock()
        self._router = _MountRouter(self._importers)
        sys.meta_path.insert(0, self._router)
        # A process that builds providers again (tests, benchmarks, a
        # reconfigured service) must not collect routers on its meta path.
        weakref.finalize(self, _remove_router, self._router)
        #: Recent failures to load a manifest or an action's version.
        self.errors: collections.deque[str] = collections.deque(
            maxlen=MAX_ERRORS)
        #: When unmounted versions were last collected, and whether some
        #: were unmounted since (see _release_memory()).
        self._collected_at: float | None = None
        self._uncollected = False
        #: How many collections ran (for tests and benchmarks).
        self.collections = 0

    def action_class(self, ref: ActionRef) -> type:
        """The class ``ref`` names, loading its version if needed.

        :param ref: The version and class to load.
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
        self._mount(ref)
        try:
            module = importlib.import_module(f'{mount}.{ref.module}')
            return getattr(module, ref.class_name)
        except BaseException as exc:
            self._forget(mount)
            self.errors.append(f'{ref.name} [content_key='
                               f'{ref.content_key}]: {type(exc).__name__}: '
                               f'{exc}')
            raise

    def _mount(self, ref: ActionRef) -> None:
        """Mount ``ref``'s version unless it is; its modules load lazily."""
        mount = MOUNT_PREFIX + ref.content_key
        with self._lock:
            if mount in self._importers:
                return
        read_source = self._reader(ref)
        with self._lock:
            mounting = mount not in self._importers
            if mounting:
                self._importers[mount] = loader.TreeImporter(
                    ref.package_name, self.root,
                    loader.version_sources(ref.module, ref.sha256,
                                           ref.imports, ref.packages),
                    read_source, mount_name=mount)
                self._touched[mount] = time.monotonic()
        if mounting:
            # Only a new mount adds to what is loaded; a lookup of a loaded
            # version (every instantiate, every action an executor gets)
            # must not walk every mount.
            self._sweep(spare=mount)

    def _reader(self, ref: ActionRef) -> Callable[[str], bytes]:
        """What the mount of ``ref``'s version reads its sources with.

        The blob store, and before it what was fetched of the version
        when this node lacks some of it (outside the lock: a fetch may
        take seconds). The mount's importer keeps what was fetched and
        drops it with the mount: in-tree imports of the version may be
        read at run time.
        """
        if self._fetch is None or all(
                os.path.exists(self.blobs.path(sha))
                for sha in needed_blobs(ref)):
            return self.blobs.get
        try:
            fetched = self._fetch(ref)
        except exceptions.BlobError as exc:
            self.errors.append(f'{ref.name} [content_key='
                               f'{ref.content_key}]: {exc}')
            raise
        if not fetched:
            return self.blobs.get

        def read_source(sha: str) -> bytes:
            data = fetched.get(sha)
            return data if data is not None else self.blobs.get(sha)
        return read_source

    def hold(self, action: Any) -> None:
        """Keep ``action``'s version loaded for as long as it exists.

        An action in flight may import in-tree modules of its own version
        at run time; its version stays mounted until it is garbage, and
        then as long as any version no action holds (see :meth:`sweep`).

        :param action: A wrapped action with a ``ref`` (:class:`ActionRef`).
        """
        mount = MOUNT_PREFIX + action.ref.content_key
        with self._lock:
            self._users[mount] += 1
            mounted = mount in self._importers
        weakref.finalize(action, self._release, mount)
        if not mounted:
            # Other threads mounted IDLE_VERSIONS versions between the
            # lookup of this one and now, and it went first. Mounted
            # again (held now, it stays), so that the action's imports at
            # run time find their version; its class is already loaded.
            try:
                self._mount(action.ref)
            except exceptions.BlobError:
                pass  # in errors; only a run-time in-tree import can fail

    def _release(self, mount: str) -> None:
        with self._lock:
            self._users[mount] -= 1
            if self._users[mount] <= 0:
                del self._users[mount]
            # Not for a version gone already (its load failed): the
            # entry would outlive it.
            if mount in self._importers:
                self._touched[mount] = time.monotonic()

    def retain(self, content_keys: set[str]) -> None:
        """Name the versions the current table serves, and sweep the rest.

        :param content_keys: Content keys of the table being swapped in;
            their versions stay loaded however long they are idle.
        """
        with self._lock:
            self._wanted = {MOUNT_PREFIX + key for key in content_keys}
        self.sweep()

    def sweep(self) -> None:
        """Unmount the versions that nothing uses or will soon use.

        Of the versions no action holds and the current table does not
        name, that is those not looked up or released in the last
        :data:`HOLD_GRACE` seconds, and all but the :data:`IDLE_VERSIONS`
        used last. A version just looked up may not be held yet
        (instantiate loads the class, then wraps the action), so one used
        a moment ago is kept unless many were since; :meth:`hold` mounts
        it again if it went. Then frees what was unmounted
        (:meth:`_release_memory`): here, on the table swap's thread, not
        in the sweep a new mount makes on the lookup path, so no action
        waits for a collection.
        """
        self._sweep()
        self._release_memory()

    def _sweep(self, spare: str | None = None) -> None:
        cutoff = time.monotonic() - HOLD_GRACE
        # Checked and unmounted under one lock: a thread that looks the
        # version up meanwhile either comes first (and keeps it) or finds
        # it gone and mounts it again.
        with self._lock:
            idle = sorted((self._touched.get(m, 0.0), m)
                          for m in self._importers
                          if m != spare and m not in self._wanted
                          and not self._users.get(m))
            # Oldest first: past the grace, or beyond the bound.
            excess = len(idle) - IDLE_VERSIONS
            for index, (touched, mount) in enumerate(idle):
                if index < excess or touched <= cutoff:
                    self._forget(mount)

    def _release_memory(self) -> None:
        """Free unmounted versions now, and give their pages back.

        Every class is in reference cycles (with its ``__mro__``, its
        methods' globals, its module), so an unmounted version is freed
        only by a garbage collection that reaches its generation, and
        after a few reloads its objects are in the oldest one. In a
        process of a few hundred thousand long-lived objects (a Mistral
        engine, executor or API) CPython runs such a full collection only
        once the objects promoted since number a quarter of them: in the
        75,000 objects of benchmarks/scale.py, some 200 dead versions of
        a 10-action module (about 60 kB each), and more in a bigger
        process; the memory they held, freed all at once, stays
        fragmented in the allocators (1,000 reloads: 7.5 MB more RSS,
        the same live objects). So a sweep that unmounted something
        collects, at most once every :data:`COLLECT_INTERVAL` seconds (a
        full collection takes tens of milliseconds there); a sweep after
        that collects what the skipped ones left.

        Then ``malloc_trim``: objects of more than 512 bytes (code,
        dicts of modules and classes, sources) come from glibc's heap,
        which gives back only its top; a collection frees them in the
        middle, where the next version's objects, of other sizes, only
        partly fit. Mistral's engines and executors run for months, and
        without the trim each burst of reloads ratchets their RSS up.
        glibc releases whole free pages only, and at the pace above
        the walk of its free lists is cheap.

        Outside the lock: finalizers that run in the collection release
        actions (:meth:`_release`), and lookups must not wait for it.
        """
        now = time.monotonic()
        with self._lock:
            if not self._uncollected or (
                    self._collected_at is not None
                    and now - self._collected_at < COLLECT_INTERVAL):
                return
            self._uncollected = False
            self._collected_at = now
            self.collections += 1
        gc.collect()
        trim_heap()

    def loaded(self) -> set[str]:
        """Content keys with a loaded version."""
        with self._lock:
            return {m[len(MOUNT_PREFIX):] for m in self._importers}

    def _forget(self, mount: str) -> None:
        with self._lock:
            importer = self._importers.pop(mount, None)
            self._touched.pop(mount, None)
            if importer:
                importer.uninstall()
                self._uncollected = True


def _remove_router(router: '_MountRouter') -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(router)


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
