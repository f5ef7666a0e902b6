"""What a module does to its process at import, beyond defining things.

A hot module is imported inside every Mistral API, engine and executor
process, and again for every new version of it. Whatever its import does to
the interpreter as a whole (replacing ``json.dumps`` or
``sys.modules['json']``, setting ``sys.excepthook`` or a signal handler,
changing ``os.environ``, starting a thread or a process) then happens to
Mistral itself. The probe's child runs the import between a
:class:`Snapshot` and a comparison with it, with :class:`StartRecorder`
noting the line of every thread and process started; this module turns
what changed into messages for the action author.

Runs only in the probe's child process (hotload._probe_child).
"""

import _signal
import ast
import contextlib
import ctypes
import dataclasses
import functools
import gc
import operator
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

#: Attributes compared by identity whatever their value; elsewhere only
#: functions, classes and modules are: lazy caches in plain data (say
#: mimetypes' tables, filled at first use) change without harm.
WATCHED = frozenset({
    ('sys', 'stdin'), ('sys', 'stdout'), ('sys', 'stderr'),
    ('sys', 'modules'), ('sys', 'path'), ('sys', 'meta_path'),
    ('sys', 'path_hooks'), ('sys', 'path_importer_cache'),
    ('os', 'environ'), ('threading', '_trace_hook'),
    ('threading', '_profile_hook'),
})
#: Hooks whose replacement reads better as "sets".
HOOKS = frozenset({
    ('sys', 'excepthook'), ('sys', 'displayhook'), ('sys', 'unraisablehook'),
    ('sys', 'breakpointhook'), ('threading', 'excepthook'),
})
_MISSING = object()
#: Process-wide settings that are not attributes: (what, anchor in the
#: source, how to read it).
_SETTINGS = (
    ('the trace function (sys.settrace)', 'settrace', sys.gettrace),
    ('the profile function (sys.setprofile)', 'setprofile', sys.getprofile),
    ('the recursion limit', 'setrecursionlimit', sys.getrecursionlimit),
    ('the thread switch interval', 'setswitchinterval',
     sys.getswitchinterval),
    ('the garbage collector', 'gc', gc.isenabled),
    ('the working directory', 'chdir', os.getcwd),
    ('the umask', 'umask', lambda: os.umask(os.umask(0o022))),
)


@dataclasses.dataclass(frozen=True)
class Change:
    """One change to interpreter-global state.

    :param message: What changed, as the author would say it
        (``replaces json.dumps``).
    :param anchors: Names or strings that the line doing it likely
        contains, most specific first; used to find that line.
    """

    message: str
    anchors: tuple[str, ...]


def _version_reader():
    """A function reading a dict's version tag from its address, or None.

    Why: copying or comparing every module's dict in the probe's child
    touches (increments the reference count of) about 13,000 objects, and
    each page they sit on is then copied (copy-on-write after the fork):
    some 6 ms per probe, the probe's whole cost again. CPython 3.11 to
    3.13 give every dict a version tag (PEP 509) that changes on every
    modification; reading it by address touches nothing. So the dicts are
    copied once, in the forkserver (:func:`prepare`), and a child compares
    only the few whose tag moved. The layout is checked here; on any other
    interpreter every dict is copied and compared (correct, slower).
    """
    if (sys.implementation.name != 'cpython'
            or not (3, 11) <= sys.version_info[:2] <= (3, 13)):
        return None
    head = object().__sizeof__()  # PyObject_HEAD; ma_used, then the tag

    def read(address: int) -> int:
        return ctypes.c_uint64.from_address(address + head + 8).value

    probe = {'a': 0, 'b': 1}
    tags = []
    for value in range(3):
        probe['a'] = value
        tags.append(read(id(probe)))
    used = ctypes.c_ssize_t.from_address(id(probe) + head).value
    if used == len(probe) and tags[0] < tags[1] < tags[2] == \
            read(id(probe)):
        return read
    return None


_read_version = _version_reader()
#: Module dicts as the forkserver preloaded them: name to (module, copy,
#: address of its dict, version tag). Set by prepare().
_base: dict[str, tuple] = {}
#: The same modules, name to module, for a comparison in C.
_base_modules: dict[str, types.ModuleType] = {}
#: Their names, and their tags when prepare() copied them.
_base_names: tuple[str, ...] = ()
_base_tags: tuple[int, ...] = ()
#: Reads the tags of the dicts of ``_base_names`` now, in one call.
_read_base_tags: Callable[[], tuple[int, ...]] | None = None


def prepare() -> None:
    """Copy every module's dict once, in the forkserver, for
    :class:`Snapshot` (see :func:`_version_reader`)."""
    global _base_names, _base_tags, _read_base_tags
    if _read_version is None:
        return
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType):
            address = id(module.__dict__)
            _base[name] = (module, dict(module.__dict__), address,
                           _read_version(address))
            _base_modules[name] = module
    _base_names = tuple(_base)
    _base_tags = tuple(_base[name][3] for name in _base_names)
    if len(_base_names) < 2:
        return
    # The process's memory as 64-bit words: itemgetter then reads every
    # tag in C, a few dozen nanoseconds each, where a ctypes object per
    # tag took half a microsecond. Each word read is the tag of a dict
    # that a module in _base (alive for good) holds.
    memory = (ctypes.c_uint64 * (sys.maxsize // 8)).from_address(0)
    head = object().__sizeof__() + 8
    words = [(_base[name][2] + head) // 8 for name in _base_names]
    getter = operator.itemgetter(*words)
    _read_base_tags = functools.partial(getter, memory)
    if _read_base_tags() != tuple(_read_version(_base[name][2])
                                  for name in _base_names):
        _read_base_tags = None  # not the layout _version_reader checked


class Snapshot:
    """Interpreter-global state, taken just before the import.

    Costs well under a millisecond after :func:`prepare`: the module
    dicts prepare() copied are compared by their version tags, read in
    one call; only the dicts that changed since then are copied, not
    their contents.

    :param package_name: Import name of the actions directory.
    """

    def __init__(self, package_name: str) -> None:
        self.package_name = package_name
        self.modules = dict(sys.modules)
        #: The tags of the dicts of _base_names, or None when they are
        #: not compared that way (no prepare(), or a module replaced).
        self.tags: tuple[int, ...] | None = None
        #: Copies of the dicts that prepare()'s do not stand for.
        self.dicts: dict[str, dict[str, Any]] = {}
        #: name to (address, tag) of those of self.dicts to compare only
        #: if moved.
        self.versions: dict[str, tuple[int, int]] = {}
        others = self.modules.keys()
        if _read_base_tags is not None and \
                _base_modules.items() <= self.modules.items():
            self.tags = _read_base_tags()
            for name, tag, base_tag in zip(_base_names, self.tags,
                                           _base_tags, strict=True):
                if tag != base_tag:
                    self.dicts[name] = dict(self.modules[name].__dict__)
            others = others - _base_modules.keys()
        for name in others:
            module = self.modules[name]
            if not isinstance(module, types.ModuleType):
                continue
            self.dicts[name] = dict(module.__dict__)
            if _read_version is not None:
                address = id(module.__dict__)
                self.versions[name] = (address, _read_version(address))
        self.lists = {name: tuple(getattr(sys, name))
                      for name in ('path', 'meta_path', 'path_hooks')}
        self.environ = dict(os.environ)
        self.signals = _signal_handlers()
        self.settings = [read() for _, _, read in _SETTINGS]

    def changes(self) -> list[Change]:
        """What differs now from the snapshot, in a stable order."""
        found = []
        # In C first: every module of the snapshot is still there.
        if not self.modules.items() <= sys.modules.items():
            for name, module in self.modules.items():
                now = sys.modules.get(name, _MISSING)
                if now is _MISSING:
                    found.append(Change(f'removes sys.modules[{name!r}]',
                                        (name, 'modules')))
                elif now is not module:
                    found.append(Change(f'replaces sys.modules[{name!r}]',
                                        (name, 'modules')))
        if self.tags is not None:
            for name, before, now in zip(_base_names, self.tags,
                                         _read_base_tags(), strict=True):
                if now != before:
                    found += _attribute_changes(
                        name, self.modules[name],
                        self.dicts.get(name, _base[name][1]))
        for name, before in self.dicts.items():
            if self.tags is not None and name in _base_modules:
                continue  # compared above
            address, tag = self.versions.get(name, (None, None))
            if address is not None and _read_version(address) == tag:
                continue
            found += _attribute_changes(name, self.modules[name], before)
        for name, before in self.lists.items():
            added = [entry for entry in getattr(sys, name, ())
                     if entry not in before and not self._libraries(entry)]
            if added or len(getattr(sys, name, ())) < len(before):
                found.append(Change(f'changes sys.{name} ({_short(added)} '
                                    'added)' if added else
                                    f'removes entries from sys.{name}',
                                    (f'sys.{name}', name)))
        found += _environ_changes(self.environ)
        now = _signal_handlers()
        for signum, handler in self.signals.items():
            if now.get(signum) is not handler:
                name = signal.Signals(signum).name
                found.append(Change(f'sets the {name} handler',
                                    (name, 'signal')))
        for (what, anchor, read), before in zip(_SETTINGS, self.settings,
                                                strict=True):
            if read() != before:
                found.append(Change(f'changes {what}', (anchor,)))
        return found

    def _libraries(self, entry: Any) -> bool:
        """True for an import hook that a library installs when it is
        first imported (six does): defined in a module that was not
        loaded before this import, and not in the actions directory."""
        if isinstance(entry, str):
            return False
        owner = getattr(entry, '__module__', None) or \
            getattr(type(entry), '__module__', None)
        return bool(owner) and owner not in self.modules and not (
            owner == self.package_name
            or owner.startswith(self.package_name + '.'))


def _signal_handlers() -> dict[int, Any]:
    # The C functions under the signal module: its wrappers turn every
    # number into an enum member, which took 0.7 ms a call. Compared by
    # identity, the plain numbers SIG_DFL and SIG_IGN serve as well.
    handlers = {}
    for signum in _signal.valid_signals():
        # SIGUSR1 is the probe's own (the stack dump on timeout).
        if signum in _UNWATCHED_SIGNALS:
            continue
        try:
            handlers[signum] = _signal.getsignal(signum)
        except (OSError, ValueError):
            continue
    return handlers


_UNWATCHED_SIGNALS = frozenset({int(signal.SIGKILL), int(signal.SIGSTOP),
                                int(signal.SIGUSR1)})


def _attribute_changes(name: str, module: types.ModuleType,
                       before: dict[str, Any]) -> list[Change]:
    now = module.__dict__
    # The fast path, in C: equal dicts hold the same objects except for
    # values equal by __eq__, which for functions, classes and modules is
    # identity. A strange __eq__ that raises: compare in full.
    with contextlib.suppress(Exception):
        if now == before:
            return []
    found = []
    for key, old in before.items():
        new = now.get(key, _MISSING)
        if new is old or not _watched(name, key, old):
            continue
        if new is _MISSING:
            found.append(Change(f'removes {name}.{key}', (key,)))
        elif (isinstance(new, types.ModuleType)
              and getattr(new, '__name__', None) == f'{name}.{key}'):
            continue  # importing a submodule binds it on its package
        else:
            verb = 'sets' if (name, key) in HOOKS else 'replaces'
            found.append(Change(f'{verb} {name}.{key}', (key,)))
    if name == 'builtins':
        for key in now.keys() - before.keys():
            found.append(Change(f'adds builtins.{key}', (key,)))
    return found


def _watched(module: str, key: str, old: Any) -> bool:
    if module == 'builtins' or (module, key) in WATCHED:
        return True
    if key.startswith('__') and key.endswith('__'):
        # __warningregistry__ and friends change under any warning.
        return False
    return callable(old) or isinstance(old, types.ModuleType)


def _environ_changes(before: dict[str, str]) -> list[Change]:
    found = []
    now = os.environ
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if old == new:
            continue
        verb = ('sets' if old is None else 'removes' if new is None
                else 'changes')
        found.append(Change(f'{verb} os.environ[{key!r}]',
                            (key, 'environ', 'putenv')))
    return found


def _short(entries: list[Any]) -> str:
    text = ', '.join(type(entry).__name__ if not isinstance(entry, str)
                     else repr(entry) for entry in entries[:3])
    return text + (', ...' if len(entries) > 3 else '')


def find_line(tree: ast.Module, anchors: tuple[str, ...]) -> int | None:
    """The line most likely to have made a change named by ``anchors``.

    A cheap heuristic on the source, so the import needs no tracing:
    an assignment to or deletion of a matching name wins over a call
    that mentions it, which wins over any other mention.

    :param tree: The module's syntax tree.
    :param anchors: Names (``dumps``, ``sys.path``) or string constants
        (``'json'``) the line should contain.
    """
    best: tuple[int, int] | None = None

    def consider(node: ast.AST, rank: int) -> None:
        nonlocal best
        if _mentions(node, anchors):
            candidate = (rank, node.lineno)
            if best is None or candidate < best:
                best = candidate

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign,
                             ast.Delete)):
            targets = (node.targets if isinstance(node, (ast.Assign,
                                                         ast.Delete))
                       else [node.target])
            for target in targets:
                for part in ast.walk(target):
                    consider(part, 0)
        elif isinstance(node, ast.Call):
            for part in ast.walk(node):
                consider(part, 1)
        else:
            consider(node, 2)
    return best[1] if best else None


def _mentions(node: ast.AST, anchors: tuple[str, ...]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in anchors
    if isinstance(node, ast.keyword):
        return node.arg in anchors
    dotted = _dotted(node)
    return dotted is not None and any(
        dotted == anchor or dotted.endswith('.' + anchor)
        for anchor in anchors)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f'{base}.{node.attr}' if base else node.attr
    return None


#: Said of every change: why it is refused.
_WHY = ("; the module is imported inside Mistral's API, engine and executor "
        "processes, so this would change Mistral itself")


def describe(changes: list[Change]) -> str:
    """One message for what the import changed.

    :param changes: From :meth:`Snapshot.changes`, not empty.
    """
    shown = '; '.join(change.message for change in changes[:4])
    more = f' (and {len(changes) - 4} more)' if len(changes) > 4 else ''
    return f'{shown}{more} at import{_WHY}'


def locate(changes: list[Change], trees: list[tuple[str, ast.Module]]
           ) -> tuple[str | None, int | None]:
    """(path, line) of the first change found in one of ``trees``.

    :param changes: From :meth:`Snapshot.changes`.
    :param trees: (path, syntax tree) of the module, then of the in-tree
        modules its import loaded.
    """
    for change in changes:
        for path, tree in trees:
            line = find_line(tree, change.anchors)
            if line:
                return path, line
    return None, None


def describe_thread(thread: threading.Thread) -> str:
    """Why a thread still running after the import is refused.

    :param thread: The thread (see :meth:`StartRecorder.running_threads`).
    """
    if thread.daemon:
        why = ('it would run in every Mistral process, once more for every '
               'new version of the module, and nothing would stop it')
    else:
        why = ('a non-daemon thread also keeps Mistral processes from '
               'exiting')
    kind = 'daemon thread' if thread.daemon else 'thread'
    return (f'starts {kind} {thread.name!r} at import, still running when '
            f'the import ends; {why}; start threads in run()')


def caller_location(root: str, depth: int = 2
                    ) -> tuple[str | None, int | None, bool]:
    """(path, line, direct) of the innermost frame in the actions directory.

    :param root: Absolute path of the actions directory.
    :param depth: Frames to skip (this function and its caller).
    :returns: ``direct`` is true when the frame right above the skipped
        ones is that frame: the call was made by action code, not by a
        library it called.
    """
    frame = sys._getframe(depth)
    direct = True
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if filename.startswith(root + os.sep):
            return os.path.relpath(filename, root), frame.f_lineno, direct
        direct = False
        frame = frame.f_back
    return None, None, False


class StartRecorder:
    """Notes the line of every thread and process started during an import.

    While installed, it wraps ``threading.Thread.start``,
    ``subprocess.Popen``, ``os.fork`` and ``os.posix_spawn[p]``. Processes
    the module starts are not listed here but by the probe's guard (it
    also sees those started by a double fork or with a new session); these
    records only give them a line.

    :param root: Absolute path of the actions directory.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        #: Thread to (path, line, started by action code itself).
        self.threads: dict[threading.Thread, tuple] = {}
        #: [pid, path, line, what] per process started.
        self.processes: list[list] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        """Wrap the functions that start threads and processes."""
        recorder = self
        thread_start = threading.Thread.start
        popen_init = subprocess.Popen.__init__

        def start(thread, *args, **kwargs):
            recorder.threads[thread] = caller_location(recorder.root)
            return thread_start(thread, *args, **kwargs)

        def init(popen, *args, **kwargs):
            popen_init(popen, *args, **kwargs)
            recorder._process(popen.pid, 'subprocess.Popen')

        self._replace(threading.Thread, 'start', start)
        self._replace(subprocess.Popen, '__init__', init)
        for name in ('fork', 'posix_spawn', 'posix_spawnp'):
            if hasattr(os, name):
                self._replace(os, name, self._wrap_spawn(getattr(os, name),
                                                         f'os.{name}'))

    def uninstall(self) -> None:
        """Put back what :meth:`install` wrapped."""
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)

    def _replace(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _wrap_spawn(self, real, what: str):
        recorder = self

        def spawn(*args, **kwargs):
            pid = real(*args, **kwargs)
            if pid:  # 0 in a forked child, which records nothing
                recorder._process(pid, what)
            return pid

        return spawn

    def _process(self, pid: int, what: str) -> None:
        path, line, _ = caller_location(self.root, depth=3)
        self.processes.append([pid, path, line, what])

    def running_threads(self) -> list[tuple[threading.Thread, tuple]]:
        """Threads started during the import that are still running and
        are not allowed to: non-daemon threads, and daemon threads that
        action code started itself (a library's own daemon thread, started
        when the library is first imported, is the library's business).
        """
        return [(thread, where) for thread, where in self.threads.items()
                if thread.is_alive() and (not thread.daemon or where[2])]
