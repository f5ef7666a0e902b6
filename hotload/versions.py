"""Exact module versions inside a Mistral process.

An :class:`ActionRef` names one action of one module version: what the
engine sends with a serialized action, and what the executor loads back.
A :class:`VersionCache` mounts each version it is asked for under its own
import name, ``_hotload_<content key>``, reading the sources from the blob
store, and keeps it mounted while it is named by the current table, held
by an action, or was used in the last :data:`HOLD_GRACE` seconds.
"""

import collections
import dataclasses
import importlib
import sys
import threading
import time
import weakref
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
#: Longest action name a reference may carry (Mistral stores 255).
MAX_NAME = 255


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
        """The reference of ``action`` in the version ``record`` serves.

        :param action: The action's entry in the manifest.
        :param record: Its module's record (with a good version).
        :param package_name: The manifest's package name.
        """
        good = record.good
        return cls(action.name, record.name, action.class_name, good.sha256,
                   dict(good.imports), tuple(good.packages), good.content_key,
                   package_name)

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
        missing = sorted(known - set(data))
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
        return cls(name, data['module'], data['class_name'], data['sha256'],
                   dict(imports), tuple(packages), data['content_key'],
                   data['package_name'])


class VersionCache:
    """Action classes loaded by content key, each version under its mount.

    A version is unmounted by :meth:`sweep` once nothing holds it, the
    current table does not name it, and it was not used for
    :data:`HOLD_GRACE` seconds. Sweeps run when a table is swapped in
    (:meth:`retain`) and before a version is loaded, never when an action
    is released: releases run in garbage collection, at any point of any
    thread.

    :param blobs: The blob store sources are read from (hash-checked).
    :param root: The actions directory, for file names in tracebacks.
    """

    def __init__(self, blobs: store.BlobStore, root: str) -> None:
        self.blobs = blobs
        self.root = root
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
        #: Recent failures to load a manifest or an action's version.
        self.errors: collections.deque[str] = collections.deque(
            maxlen=MAX_ERRORS)

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
            mounting = mount not in self._importers
            if mounting:
                self._importers[mount] = loader.TreeImporter(
                    ref.package_name, self.root,
                    loader.version_sources(ref.module, ref.sha256,
                                           ref.imports, ref.packages),
                    self.blobs.get, mount_name=mount)
        if mounting:
            # Only a new mount adds to what is loaded; a lookup of a loaded
            # version (every instantiate, every action an executor gets)
            # must not walk every mount.
            self._sweep(spare=mount)
        try:
            module = importlib.import_module(f'{mount}.{ref.module}')
            return getattr(module, ref.class_name)
        except BaseException as exc:
            self._forget(mount)
            self.errors.append(f'{ref.name} [content_key='
                               f'{ref.content_key}]: {type(exc).__name__}: '
                               f'{exc}')
            raise

    def hold(self, action: Any) -> None:
        """Keep ``action``'s version loaded for as long as it exists.

        An action in flight may import in-tree modules of its own version
        at run time; its version stays mounted until it is garbage, and
        for :data:`HOLD_GRACE` seconds after.

        :param action: A wrapped action with a ``ref`` (:class:`ActionRef`).
        """
        mount = MOUNT_PREFIX + action.ref.content_key
        with self._lock:
            self._users[mount] += 1
        weakref.finalize(action, self._release, mount)

    def _release(self, mount: str) -> None:
        with self._lock:
            self._users[mount] -= 1
            if self._users[mount] <= 0:
                del self._users[mount]
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

        That is: no action holds them, the current table does not name
        them, and they were not looked up or released in the last
        :data:`HOLD_GRACE` seconds (a version just looked up may not be
        held yet: instantiate loads the class, then wraps the action).
        """
        self._sweep()

    def _sweep(self, spare: str | None = None) -> None:
        cutoff = time.monotonic() - HOLD_GRACE
        # Checked and unmounted under one lock: a thread that looks the
        # version up meanwhile either comes first (and keeps it) or finds
        # it gone and mounts it again.
        with self._lock:
            stale = [m for m in self._importers
                     if m != spare and m not in self._wanted
                     and not self._users.get(m)
                     and self._touched.get(m, 0) <= cutoff]
            for mount in stale:
                self._forget(mount)

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
