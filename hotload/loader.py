"""Import the actions directory as a package, from hashed sources.

The directory is mounted under ``package_name``: ``cinder/backups.py`` is
the module ``<package_name>.cinder.backups``, and modules import each other
absolutely or relatively, as in any package. Sources are not read from the
directory but from a *snapshot*: module name to the sha256 of the content
that was hashed and checked, read through a callback (the blob store). So
what is imported is exactly what was validated, even if the file changes a
millisecond later, and nothing that failed the trust rules can be imported
by a sibling.
"""

import builtins
import dataclasses
import importlib.abc
import importlib.machinery
import linecache
import os
import sys
from collections.abc import Callable
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class SourceRef:
    """Where a module of the snapshot comes from.

    :param path: File relative to the actions directory; for a directory
        without ``__init__.py`` the directory itself.
    :param sha256: The content's hash, or None for such a directory (a
        namespace package, which has no code).
    :param is_package: True for ``__init__.py`` files and directories.
    """

    path: str
    sha256: str | None
    is_package: bool


class TreeImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader for one snapshot of the actions directory.

    :param package_name: Import name the directory is mounted as.
    :param root: Absolute path of the directory; only used for file names in
        tracebacks and ``__file__``.
    :param sources: Module name inside the package (``''`` is the package
        itself and need not be given) to its :class:`SourceRef`.
    :param read_source: Returns the bytes for a sha256.
    :param mount_name: Import name the snapshot is mounted under, when it
        is not ``package_name``: several versions of one tree can then live
        in one process, each under its own name, and absolute imports of
        ``package_name`` in their code are redirected to their own mount.
    """

    def __init__(self, package_name: str, root: str,
                 sources: Mapping[str, SourceRef],
                 read_source: Callable[[str], bytes],
                 mount_name: str | None = None) -> None:
        self.package_name = package_name
        self.mount_name = mount_name or package_name
        self.root = root
        self.sources = dict(sources)
        self.sources.setdefault('', SourceRef('', None, True))
        self.read_source = read_source
        #: Every in-tree module asked for, found (its sha256) or not (None).
        self.requested: dict[str, str | None] = {}
        self._builtins = None
        if self.mount_name != package_name:
            self._builtins = dict(vars(builtins),
                                  __import__=self._redirecting_import)

    def _redirecting_import(self, name, globals=None, locals=None,
                            fromlist=(), level=0):
        if level == 0 and (name == self.package_name
                           or name.startswith(self.package_name + '.')):
            name = self.mount_name + name[len(self.package_name):]
        return builtins.__import__(name, globals, locals, fromlist, level)

    def relative_name(self, fullname: str) -> str | None:
        if fullname == self.mount_name:
            return ''
        if fullname.startswith(self.mount_name + '.'):
            return fullname[len(self.mount_name) + 1:]
        return None

    def install(self) -> None:
        sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        """Remove the snapshot's finder, modules and traceback lines.

        What a mounted version added to the process goes with it:
        ``linecache`` keeps the lines of a file name that is no file
        (:meth:`code_filename`) for ever, as the source of a loader.
        Another mount of the same module source has the same file name;
        dropping its lines only costs a read at its next traceback.
        """
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for name in [n for n in sys.modules
                     if self.relative_name(n) is not None]:
            del sys.modules[name]
        if self.mount_name != self.package_name:
            for ref in self.sources.values():
                if ref.sha256 is not None:
                    linecache.cache.pop(self.code_filename(
                        os.path.join(self.root, ref.path), ref), None)

    # importlib.abc.MetaPathFinder
    def find_spec(self, fullname, path=None, target=None):
        name = self.relative_name(fullname)
        if name is None:
            return None
        ref = self.sources.get(name)
        if name and (ref is None or ref.sha256):
            # A directory without __init__.py has no content to pin.
            self.requested[name] = ref.sha256 if ref else None
        if ref is None:
            # Answer for the whole package: no other finder may look for
            # an in-tree name on disk, where unchecked files are.
            raise ModuleNotFoundError(
                f'No module named {fullname!r} in the actions directory',
                name=fullname)
        origin = os.path.join(self.root, ref.path) if ref.path else self.root
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=origin, is_package=ref.is_package)
        if ref.is_package:
            # Empty search path: submodules are found by this finder only.
            spec.submodule_search_locations = []
        spec.has_location = ref.sha256 is not None
        return spec

    # importlib.abc.Loader
    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        ref = self.sources[self.relative_name(module.__name__)]
        if ref.sha256 is None:
            return
        code = compile(self.read_source(ref.sha256),
                       self.code_filename(module.__spec__.origin, ref),
                       'exec', dont_inherit=True)
        if self._builtins is not None:
            # Functions take their builtins from the module's globals, so
            # imports at run time are redirected too.
            module.__dict__['__builtins__'] = self._builtins
        # Running module code is this loader's purpose; callers only hand
        # it sources that passed the trust rules.
        exec(code, module.__dict__)  # noqa: S102

    def code_filename(self, origin: str, ref: SourceRef) -> str:
        """The file name a module's code (and its tracebacks) carries.

        ``linecache`` keeps one source per file name, and reads a file
        that exists from disk, whatever version of it the code came
        from. So each version mounted beside others gets a name of its
        own that is no file, ``<path> [sha256:<first 12 hex digits>]``,
        and its lines come from this loader (:meth:`get_source`): a
        traceback shows the version that ran. Modules under
        ``package_name`` itself (the probe child) keep the real path,
        which is how the probe finds the file and line of an error.

        :param origin: The module's file under the actions directory.
        :param ref: The module's source.
        """
        if self.mount_name == self.package_name:
            return origin
        return f'{origin} [sha256:{ref.sha256[:12]}]'

    def get_source(self, fullname: str) -> str | None:
        """Source for tracebacks (linecache asks loaders for it)."""
        ref = self.sources.get(self.relative_name(fullname) or '')
        if ref is None or ref.sha256 is None:
            return None
        try:
            data = self.read_source(ref.sha256)
        # Formatting a traceback must not fail because a blob was pruned
        # since: the traceback just shows no source line.
        except Exception:  # noqa: BLE001
            return None
        return data.decode('utf-8', 'replace')


def version_sources(module: str, sha256: str,
                    imports: Mapping[str, str | None],
                    packages: tuple[str, ...]) -> dict[str, SourceRef]:
    """The snapshot of exactly one validated module version.

    The module itself and the in-tree modules it was validated with, at
    their recorded hashes; directories on the way that are not packages
    become namespace packages. Paths follow from names, as in the tree.
    """
    def ref(name: str, sha: str) -> SourceRef:
        is_package = name in packages
        path = name.replace('.', os.sep)
        path = os.path.join(path, '__init__.py') if is_package else \
            path + '.py'
        return SourceRef(path, sha, is_package)

    sources = {name: ref(name, sha) for name, sha in imports.items() if sha}
    sources[module] = ref(module, sha256)
    for name in list(sources):
        parts = name.split('.')
        for depth in range(1, len(parts)):
            parent = '.'.join(parts[:depth])
            sources.setdefault(parent, SourceRef(
                parent.replace('.', os.sep), None, True))
    return sources
