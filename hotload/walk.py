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

A walk produces one :class:`Entry` per path it judged (a file, or a
directory it refused), and :func:`compose` makes the snapshot from the
entries in one pass over all of them. So the rules that span several paths
(``foo/__init__.py`` shadows ``foo.py``, namespace packages) do not depend
on the order the paths were seen in, and :mod:`hotload.tree` can replace
the entries of a few paths and compose again without walking the rest.
"""

import contextlib
import dataclasses
import errno
import os
import threading
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping

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
        # A scan asks several times; a snapshot is not changed once made.
        cached = self.__dict__.get('_modules')
        if cached is None or cached[0] != len(self.sources):
            cached = (len(self.sources), sorted(
                n for n, ref in self.sources.items() if ref.sha256))
            self.__dict__['_modules'] = cached
        return list(cached[1])


@dataclasses.dataclass(frozen=True)
class Entry:
    """What a walk learned about one path of the tree.

    A file gets one whether it is accepted or not; a directory only when
    it is refused (its files are entries of their own).

    :param relpath: Path relative to the actions directory.
    :param module: The file's module name; None for a directory, and for
        a file whose name is not a valid module name.
    :param ref: The accepted content, or None.
    :param refusal: Why the path is not accepted, or None.
    :param identity: The identity of the file the content was read from.
    :param link_target: For a symlink, its target inside the actions
        directory (relative path): a change there changes this entry.
    """

    relpath: str
    module: str | None
    ref: loader.SourceRef | None = None
    refusal: manifest.ModuleError | None = None
    identity: FileIdentity | None = None
    link_target: str | None = None
    #: An ``__init__.py``: composed once per scan for every entry, so
    #: known rather than computed.
    is_package: bool = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'is_package', os.path.basename(
            self.relpath) == '__init__.py')


def compose(entries: Mapping[str, Entry]) -> TreeSnapshot:
    """The snapshot of a set of entries, whatever order they were found in.

    :param entries: Path relative to the actions directory to its entry.
    """
    packages = {e.module: e.relpath for e in entries.values()
                if e.module is not None and e.is_package}
    sources: dict[str, loader.SourceRef] = {}
    refused: dict[str, manifest.ModuleError] = {}
    identities: dict[str, FileIdentity] = {}
    # Sorted, so that a refused directory and a module refused under the
    # same key resolve the same way on every walk.
    for relpath in sorted(entries):
        entry = entries[relpath]
        module = entry.module
        if module is None:
            refused[relpath] = entry.refusal
        elif not entry.is_package and module in packages:
            # As in Python, the package wins over foo.py.
            refused[relpath] = _refusal(
                relpath, f'shadowed by the package {packages[module]}: a '
                f'module and a package cannot share a name')
        elif entry.refusal is not None:
            refused[module] = entry.refusal
        else:
            sources[module] = entry.ref
            identities[module] = entry.identity
    for module in list(sources):
        parts = module.split('.')
        for depth in range(1, len(parts)):
            package = '.'.join(parts[:depth])
            if package not in sources and package not in packages:
                sources[package] = loader.SourceRef(
                    package.replace('.', os.sep), None, True)
    return TreeSnapshot(sources, refused, identities)


def check_root(root: str, policy: trust.TrustPolicy) -> str:
    """The real path of ``root``, once it passed the trust rules.

    :param root: The actions directory.
    :param policy: The trust rules.
    :raises UntrustedRootError: when ``root`` fails them.
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
    return root


def walk_entries(root: str, policy: trust.TrustPolicy,
                 blobs: store.BlobStore, *, max_depth: int = 32,
                 on_progress: Callable[[], None] | None = None,
                 cancelled: threading.Event | None = None
                 ) -> dict[str, Entry]:
    """Walk all of ``root``: the entries of :func:`snapshot_tree`.

    Parameters and exceptions as :func:`snapshot_tree`.
    """
    walker = TreeWalk(check_root(root, policy), policy, blobs, max_depth,
                      on_progress, cancelled)
    walker.walk_dir('', 0, None)
    return walker.entries


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
    return compose(walk_entries(root, policy, blobs, max_depth=max_depth,
                                on_progress=on_progress,
                                cancelled=cancelled))


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


class _PathNode:
    """A path met outside a directory listing, as an ``os.DirEntry``.

    What :meth:`TreeWalk._subdirectory` asks of the entries of a listing,
    for a path an event named.
    """

    def __init__(self, root: str, relpath: str) -> None:
        self.name = os.path.basename(relpath)
        self.path = os.path.join(root, relpath)

    def is_dir(self) -> bool:
        return os.path.isdir(self.path)

    def is_symlink(self) -> bool:
        return os.path.islink(self.path)

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path, follow_symlinks=follow_symlinks)


#: A directory to walk: (path relative to root, level, problem of a
#: directory above it).
DirToWalk = tuple[str, int, str | None]


class TreeWalk:
    """Walks (parts of) the tree into :attr:`entries`.

    :param root: The actions directory, as :func:`check_root` returned it.
    :param policy: The trust rules.
    :param blobs: Where accepted contents are stored.
    :param max_depth: Deepest directory level walked.
    :param on_progress: Called after each directory listed and file hashed.
    :param cancelled: When set, the walk stops at the next file or
        directory.
    :param entries: The entries to add to (a new dict by default).
    """

    def __init__(self, root: str, policy: trust.TrustPolicy,
                 blobs: store.BlobStore, max_depth: int,
                 on_progress: Callable[[], None] | None,
                 cancelled: threading.Event | None,
                 entries: dict[str, Entry] | None = None) -> None:
        self.root = root
        self.policy = policy
        self.blobs = blobs
        self.max_depth = max_depth
        self.on_progress = on_progress or (lambda: None)
        self.cancelled = cancelled
        self.entries: dict[str, Entry] = {} if entries is None else entries

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise exceptions.ScanCancelled('scan cancelled during the walk')

    def _refuse(self, relpath: str, message: str) -> None:
        self.entries[relpath] = Entry(relpath, None,
                                      refusal=_refusal(relpath, message))

    def walk_dir(self, reldir: str, depth: int,
                 inherited: str | None) -> None:
        """Walk a directory that passed the rules, and all below it.

        :param reldir: Its path relative to the root (``''``: the root).
        :param depth: Its level (the root is 0).
        :param inherited: The trust problem of a directory on its way.
        """
        with self._storing():
            self._walk_dir(reldir, depth, inherited)

    def _walk_dir(self, reldir: str, depth: int,
                  inherited: str | None) -> None:
        stack: list[DirToWalk] = [(reldir, depth, inherited)]
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
                    subdir = self._subdirectory(
                        entry, os.path.join(reldir, entry.name), depth,
                        inherited)
                    if subdir:
                        subdirs.append(subdir)
                elif not trust.is_ignored_name(entry.name):
                    self._check_cancelled()
                    self._file(entry.name, reldir, inherited)
            stack.extend(reversed(subdirs))

    def evaluate(self, relpath: str, depth: int,
                 inherited: str | None) -> None:
        """Judge one path as the walk of its directory would.

        A directory is walked, with all below it. Nothing is added for a
        path that is gone or ignored.

        :param relpath: Path relative to the root, not the root itself.
        :param depth: Level of the directory it is in (the root is 0).
        :param inherited: The trust problem of a directory on its way.
        """
        self._check_cancelled()
        node = _PathNode(self.root, relpath)
        if node.is_dir():
            subdir = self._subdirectory(node, relpath, depth, inherited)
            if subdir:
                self.walk_dir(*subdir)
        elif os.path.lexists(node.path) and \
                not trust.is_ignored_name(node.name):
            with self._storing():
                self._file(node.name, os.path.dirname(relpath), inherited)

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """Contents go to the store without waiting (see
        :class:`~hotload.blobs.BlobStore`); all are there when the walk
        ends, since the probe reads them from there."""
        try:
            yield
        except BaseException:
            # The walk failed: its writes end, and matter no more (the
            # next walk stores the same contents again).
            with contextlib.suppress(OSError):
                self.blobs.flush()
            raise
        self.blobs.flush()

    def climb(self, relpath: str) -> tuple[str, int, str | None] | None:
        """What to judge again for a change at ``relpath``.

        A full walk reaches a path only through directories it walks. When
        one on the way is not walked (a name that is no package, a symlink,
        too deep, gone), that directory is what the walk would judge, and
        report: it is returned in place of ``relpath``.

        :param relpath: Path relative to the root, not the root itself.
        :returns: (path, level of its directory, trust problem inherited)
            for :meth:`evaluate`, or None when the path lies in a directory
            that is never walked (hidden, ``__pycache__``).
        """
        parts = relpath.split(os.sep)
        inherited = None
        for level in range(1, len(parts)):
            if trust.is_ignored_dir(parts[level - 1]):
                return None
            ancestor = os.sep.join(parts[:level])
            node = _PathNode(self.root, ancestor)
            walked = node.is_dir() and self._subdirectory(
                node, ancestor, level - 1, inherited, judge_only=True)
            if not walked:
                return ancestor, level - 1, inherited
            inherited = walked[2]
        return relpath, len(parts) - 1, inherited

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
                self._refuse(reldir, f'cannot list the directory: '
                             f'{exc.strerror}')
            return None

    def _subdirectory(self, entry: os.DirEntry | _PathNode, relpath: str,
                      depth: int, inherited: str | None,
                      judge_only: bool = False) -> DirToWalk | None:
        """The stack entry for a directory to walk, or None (reported,
        unless ``judge_only``)."""
        name = entry.name
        refuse = (lambda *_: None) if judge_only else self._refuse
        if trust.is_ignored_dir(name):
            return None
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if target == self.root or target.startswith(self.root + os.sep):
                refuse(relpath, f'symlinked directory: not followed (it '
                       f'points to {os.path.relpath(target, self.root)}); '
                       f'link the modules one by one, or move the directory '
                       f'here')
            else:
                refuse(relpath, f'symlink to {target} leads outside the '
                       f'actions directory')
            return None
        if depth + 1 > self.max_depth:
            # Not walked, so nothing below it is reported a second time.
            refuse(relpath, f'directory nested {depth + 1} levels deep, '
                   f'deeper than max_depth ({self.max_depth}): not walked; '
                   f'flatten the tree or raise [hotload] max_depth')
            return None
        if not trust.is_identifier(name):
            if not judge_only and _holds_modules(entry.path):
                refuse(relpath, 'not a valid Python package name: the '
                       'modules under it cannot be imported')
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed while we walk; the next scan sees it
        return (relpath, depth + 1,
                inherited or self.policy.check_dir(relpath, st))

    def _file(self, name: str, reldir: str, inherited: str | None) -> None:
        relpath = os.path.join(reldir, name)
        module = _module_name(relpath)
        if module is None:
            self._refuse(relpath, (
                'the actions directory is mounted as a namespace package: '
                'its own __init__.py is not loaded; move the code to a '
                'module') if relpath == '__init__.py'
                else 'not a valid Python module name')
            return
        problem, data, identity, target = inherited, b'', None, None
        if not problem:
            try:
                problem, data, identity, target = self._read_checked(relpath)
            except _Vanished:
                return
        if problem:
            self.entries[relpath] = Entry(
                relpath, module, refusal=_refusal(relpath, problem),
                link_target=target)
            return
        self.entries[relpath] = Entry(
            relpath, module, loader.SourceRef(
                relpath, self.blobs.put(data, wait=False),
                name == '__init__.py'),
            identity=identity, link_target=target)
        self.on_progress()

    def _read_checked(self, relpath: str
                      ) -> tuple[str | None, bytes, FileIdentity | None,
                                 str | None]:
        """(problem, content, identity, symlink target) of a file; raises
        _Vanished."""
        path = os.path.join(self.root, relpath)
        target = None
        try:
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not target.startswith(self.root + os.sep):
                    return (f'symlink to {target} leads outside the actions '
                            f'directory'), b'', None, None
                target = os.path.relpath(target, self.root)
                fd = self._open_through_checked_dirs(target)
                if isinstance(fd, str):
                    return f'symlink to {target}: {fd}', b'', None, target
            else:
                fd = os.open(path, _FILE_FLAGS | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno not in _VANISHED:
                return f'cannot open: {exc.strerror}', b'', None, target
            if target is not None and os.path.lexists(path):
                # The link is still there: its target is what is missing.
                return (f'symlink to {target}: the target does not exist'
                        ), b'', None, target
            raise _Vanished() from None
        # Checks on the open descriptor, so the file cannot be swapped between
        # the check and the read.
        with os.fdopen(fd, 'rb') as stream:
            st = os.fstat(fd)
            problem = self.policy.check_file(st)
            if problem:
                return problem, b'', None, target
            data = stream.read(self.policy.max_file_size + 1)
        if len(data) > self.policy.max_file_size:
            return (f'file grew past max_file_size '
                    f'({self.policy.max_file_size} bytes) while being read'
                    ), b'', None, target
        return None, data, FileIdentity.of(st), target

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
