"""The walk of the actions directory: what is on disk, checked and hashed.

One pass over the tree applies the trust rules to every directory and file,
reads each accepted module through the descriptor that was checked, and
puts its content in the blob store. What is not accepted is reported, never
dropped silently; only names that are never modules (hidden files, editor
temporaries) are ignored, and files that vanish while the walk runs are
simply absent: they were removed, and the removal's own event brings the
next scan.

The walk keeps its own stack of directories instead of using ``os.walk``,
which in Python 3.11 recurses once per level: a tree nested deeper than
the interpreter's recursion limit made every scan fail. Directories deeper
than ``max_depth`` are refused, once, at the top-most of them.
"""

import dataclasses
import errno
import os
import threading
from collections.abc import Callable

from hotload import exceptions
from hotload import loader
from hotload import manifest
from hotload import store
from hotload import trust

#: Errors of ``open`` meaning the file, or a directory on its way, is gone.
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR})
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was read, to tell later whether it changed.

    :param device: ``st_dev``.
    :param inode: ``st_ino``.
    :param size: ``st_size``.
    :param mtime_ns: ``st_mtime_ns``.
    :param ctime_ns: ``st_ctime_ns`` (changes on any write, even one that
        restores the modification time).
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> 'FileIdentity':
        """The identity in a stat result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                   st.st_ctime_ns)


@dataclasses.dataclass
class TreeSnapshot:
    """The accepted and refused modules of the directory at one moment.

    :param sources: Module name to the content that was hashed (and put in
        the blob store), including directories without ``__init__.py``.
    :param refused: Module name (or the path, when it has no valid name) to
        the reason the file is not accepted.
    :param identities: Module name to the identity of the file its content
        was read from (the ``fstat`` of the descriptor read), so a change
        after the walk can be told.
    """

    sources: dict[str, loader.SourceRef]
    refused: dict[str, manifest.ModuleError]
    identities: dict[str, FileIdentity] = dataclasses.field(
        default_factory=dict)

    def sha(self, name: str) -> str | None:
        ref = self.sources.get(name)
        return ref.sha256 if ref else None

    def modules(self) -> list[str]:
        """Names of the accepted modules that have code."""
        return sorted(n for n, ref in self.sources.items() if ref.sha256)


def snapshot_tree(root: str, policy: trust.TrustPolicy,
                  blobs: store.BlobStore, *, max_depth: int = 32,
                  on_progress: Callable[[], None] | None = None,
                  cancelled: threading.Event | None = None) -> TreeSnapshot:
    """Walk ``root``, check every module and store the accepted ones.

    :param root: The actions directory.
    :param policy: The trust rules.
    :param blobs: Where accepted contents are stored.
    :param max_depth: Deepest directory level walked (``[hotload]
        max_depth``); the directories of the actions directory are level 1.
    :param on_progress: Called after each directory is listed and each
        file is hashed (for a watchdog that wants progress, not a short
        walk); must be cheap.
    :param cancelled: When set, the walk stops at the next file or
        directory.
    :raises UntrustedRootError: when ``root`` itself fails the rules.
    :raises ScanCancelled: when ``cancelled`` is set.
    """
    root = os.path.realpath(root)
    try:
        root_stat = os.stat(root)
    except OSError as exc:
        raise exceptions.UntrustedRootError(
            f'actions directory {root}: {exc.strerror}') from None
    problem = (policy.check_ancestors(root)
               or policy.check_dir(root, root_stat))
    if problem:
        raise exceptions.UntrustedRootError(
            f'actions directory {root} is not trusted: {problem}')
    return _TreeWalk(root, policy, blobs, max_depth, on_progress,
                     cancelled).run()


def content_changed(root: str, ref: loader.SourceRef,
                    identity: FileIdentity, max_size: int) -> bool:
    """True when the file of ``ref`` no longer holds the content hashed.

    The stat is compared first; the content is read again only when it
    differs, so a file rewritten with the same bytes is not a change. A
    file that is gone is not a change either: its removal is seen by the
    next scan.

    :param root: The actions directory.
    :param ref: The module's file and the sha256 read from it.
    :param identity: The file's identity when it was read.
    :param max_size: Largest content read again (``max_file_size``).
    """
    path = os.path.join(root, ref.path)
    try:
        if FileIdentity.of(os.stat(path)) == identity:
            return False
        with open(path, 'rb') as stream:
            data = stream.read(max_size + 1)
    except OSError:
        return False
    return store.sha256_hex(data) != ref.sha256


class _Vanished(Exception):
    """The file was removed between the directory listing and its open."""


def _module_name(relpath: str) -> str | None:
    parts = relpath[:-len('.py')].split(os.sep)
    if parts[-1] == '__init__':
        parts.pop()
    if not parts or not all(trust.is_identifier(p) for p in parts):
        return None
    return '.'.join(parts)


def _holds_modules(directory: str) -> bool:
    """True when a ``.py`` file that would be loaded lies under it.

    Symlinked directories are not entered (as ``os.walk`` does not).
    """
    stack = [directory]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if _is_dir(entry) and not entry.is_symlink():
                        stack.append(entry.path)
                    elif not trust.is_ignored_name(entry.name):
                        return True
        except OSError:
            continue  # unreadable or gone: nothing could be loaded from it
    return False


def _is_dir(entry: os.DirEntry) -> bool:
    """As ``os.walk`` sorts entries: a symlink to a directory is one."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _refusal(path: str, message: str) -> manifest.ModuleError:
    return manifest.ModuleError(kind='refused', message=message, path=path)


class _TreeWalk:
    """One walk of the tree; see :func:`snapshot_tree`."""

    def __init__(self, root: str, policy: trust.TrustPolicy,
                 blobs: store.BlobStore, max_depth: int,
                 on_progress: Callable[[], None] | None,
                 cancelled: threading.Event | None) -> None:
        self.root = root
        self.policy = policy
        self.blobs = blobs
        self.max_depth = max_depth
        self.on_progress = on_progress or (lambda: None)
        self.cancelled = cancelled
        self.sources: dict[str, loader.SourceRef] = {}
        self.refused: dict[str, manifest.ModuleError] = {}
        self.identities: dict[str, FileIdentity] = {}
        self.init_dirs: set[str] = set()

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise exceptions.ScanCancelled('scan cancelled during the walk')

    def run(self) -> TreeSnapshot:
        # (path relative to root, level, problem of a directory above):
        # a directory's files are handled before any directory below it,
        # which the shadowing of foo.py by foo/__init__.py relies on.
        stack: list[tuple[str, int, str | None]] = [('', 0, None)]
        while stack:
            self._check_cancelled()
            reldir, depth, inherited = stack.pop()
            entries = self._list(reldir)
            self.on_progress()
            if entries is None:
                continue
            subdirs = []
            for entry in sorted(entries, key=lambda e: e.name):
                if _is_dir(entry):
                    subdir = self._subdirectory(entry, reldir, depth,
                                                inherited)
                    if subdir:
                        subdirs.append(subdir)
                elif not trust.is_ignored_name(entry.name):
                    self._check_cancelled()
                    self._file(entry.name, reldir, inherited)
            stack.extend(reversed(subdirs))
        self._add_namespace_packages()
        return TreeSnapshot(self.sources, self.refused, self.identities)

    def _list(self, reldir: str) -> list[os.DirEntry] | None:
        try:
            with os.scandir(os.path.join(self.root, reldir)) as entries:
                return list(entries)
        except OSError as exc:
            if not reldir:
                raise exceptions.UntrustedRootError(
                    f'actions directory {self.root}: cannot list it: '
                    f'{exc.strerror}') from None
            if exc.errno not in _VANISHED:
                self.refused[reldir] = _refusal(
                    reldir, f'cannot list the directory: {exc.strerror}')
            return None

    def _subdirectory(self, entry: os.DirEntry, reldir: str, depth: int,
                      inherited: str | None
                      ) -> tuple[str, int, str | None] | None:
        """The stack entry for a directory to walk, or None (reported)."""
        name = entry.name
        relpath = os.path.join(reldir, name)
        if trust.is_ignored_dir(name):
            return None
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if target == self.root or target.startswith(self.root + os.sep):
                self.refused[relpath] = _refusal(
                    relpath, f'symlinked directory: not followed (it points '
                    f'to {os.path.relpath(target, self.root)}); link the '
                    f'modules one by one, or move the directory here')
            else:
                self.refused[relpath] = _refusal(
                    relpath, f'symlink to {target} leads outside the '
                    f'actions directory')
            return None
        if depth + 1 > self.max_depth:
            # Not walked, so nothing below it is reported a second time.
            self.refused[relpath] = _refusal(
                relpath, f'directory nested {depth + 1} levels deep, deeper '
                f'than max_depth ({self.max_depth}): not walked; flatten the '
                f'tree or raise [hotload] max_depth')
            return None
        if not trust.is_identifier(name):
            if _holds_modules(entry.path):
                self.refused[relpath] = _refusal(
                    relpath, 'not a valid Python package name: the modules '
                    'under it cannot be imported')
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed while we walk; the next scan sees it
        return (relpath, depth + 1,
                inherited or self.policy.check_dir(relpath, st))

    def _file(self, name: str, reldir: str, inherited: str | None) -> None:
        relpath = os.path.join(reldir, name)
        module = _module_name(relpath)
        if module is None:
            self.refused[relpath] = _refusal(relpath, (
                'the actions directory is mounted as a namespace package: '
                'its own __init__.py is not loaded; move the code to a '
                'module') if relpath == '__init__.py'
                else 'not a valid Python module name')
            return
        problem, data, identity = inherited, b'', None
        if not problem:
            try:
                problem, data, identity = self._read_checked(relpath)
            except _Vanished:
                return
        if name == '__init__.py':
            self.init_dirs.add(module)
            shadowed = self.sources.pop(module, None) or \
                self.refused.pop(module, None)
            self.identities.pop(module, None)
            if shadowed:
                # As in Python, the package wins over foo.py.
                self.refused[shadowed.path] = _refusal(
                    shadowed.path, f'shadowed by the package {relpath}: a '
                    f'module and a package cannot share a name')
        if problem:
            self.refused[module] = _refusal(relpath, problem)
            return
        self.sources[module] = loader.SourceRef(
            relpath, self.blobs.put(data), name == '__init__.py')
        self.identities[module] = identity
        self.on_progress()

    def _read_checked(self, relpath: str
                      ) -> tuple[str | None, bytes, FileIdentity | None]:
        """(problem, content, identity) of a file; raises _Vanished."""
        path = os.path.join(self.root, relpath)
        target = None
        try:
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not target.startswith(self.root + os.sep):
                    return (f'symlink to {target} leads outside the actions '
                            f'directory'), b'', None
                target = os.path.relpath(target, self.root)
                fd = self._open_through_checked_dirs(target)
                if isinstance(fd, str):
                    return f'symlink to {target}: {fd}', b'', None
            else:
                fd = os.open(path, _FILE_FLAGS | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno not in _VANISHED:
                return f'cannot open: {exc.strerror}', b'', None
            if target is not None and os.path.lexists(path):
                # The link is still there: its target is what is missing.
                return (f'symlink to {target}: the target does not exist'
                        ), b'', None
            raise _Vanished() from None
        # Checks on the open descriptor, so the file cannot be swapped between
        # the check and the read.
        with os.fdopen(fd, 'rb') as stream:
            st = os.fstat(fd)
            problem = self.policy.check_file(st)
            if problem:
                return problem, b'', None
            data = stream.read(self.policy.max_file_size + 1)
        if len(data) > self.policy.max_file_size:
            return (f'file grew past max_file_size '
                    f'({self.policy.max_file_size} bytes) while being read'
                    ), b'', None
        return None, data, FileIdentity.of(st)

    def _open_through_checked_dirs(self, relpath: str) -> int | str:
        """Open ``root/relpath`` checking every directory on its way.

        A symlink's target must pass the rules a plain file in its place
        would: every directory from the actions directory down to it is
        opened without following links and checked on its descriptor, and
        the file is opened relative to the last one, so what was checked
        is what the file is read through.

        :returns: the file's descriptor, or the problem found.
        :raises OSError: when a step cannot be opened.
        """
        parts = relpath.split(os.sep)
        dir_fd = os.open(self.root, _DIR_FLAGS)
        try:
            for level in range(1, len(parts)):
                next_fd = os.open(parts[level - 1], _DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
                st = os.fstat(dir_fd)
                problem = self.policy.check_dir(
                    os.path.join(*parts[:level]), st)
                if problem:
                    return problem
            return os.open(parts[-1], _FILE_FLAGS | os.O_NOFOLLOW,
                           dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _add_namespace_packages(self) -> None:
        for module in list(self.sources):
            parts = module.split('.')
            for depth in range(1, len(parts)):
                package = '.'.join(parts[:depth])
                if package not in self.sources and \
                        package not in self.init_dirs:
                    self.sources[package] = loader.SourceRef(
                        package.replace('.', os.sep), None, True)

