"""The probe's child side: import one module and describe what it exports.

This module runs only in the probe's child processes (forked from a
forkserver that preloaded it, so mistral-lib is imported once, not once per
file). Nothing here runs in the daemon. Results go back as plain data.

This is the worker's flow: limits, the import, its side effects, the
result. What the module exports is read by :mod:`hotload._probe_exports`,
its in-tree imports (closure, cycles) by :mod:`hotload._probe_imports`.
"""

import contextlib
import faulthandler
import importlib
import importlib.machinery
import io
import json
import os
import pickle
import resource
import signal
import sys
import tokenize
import traceback
from typing import Any

from hotload import _probe_effects
from hotload import _probe_exports
from hotload import _probe_imports
from hotload import loader

TRACEBACK_LIMIT = 4000
#: Most of a module's output a batch reports (its last bytes).
OUTPUT_LIMIT = 4000
PARENT_MAIN_ENV = 'HOTLOAD_PROBE_PARENT_MAIN'
#: True in the forkserver (and so in the probes forked from it).
IN_FORKSERVER = False
#: The process that imports the module; set by run().
_worker_pid = None
#: The request's sources as SourceRefs; see use_sources().
_refs = None
# Bound now: the module may replace json.dumps or builtins.open at import
# (that is reported), and the report must still get out.
_dumps = json.dumps
_open = io.open
_write, _lseek, _pread = os.write, os.lseek, os.pread


def _prepare_forkserver() -> None:
    """Runs when the forkserver preloads this module, and only there.

    Makes ``__main__`` look like the parent's, so multiprocessing skips
    re-running the parent's main module in every child (see
    ``hotload.probe._forkserver_context``). And ignores SIGHUP, which
    oslo.service's master sends to its whole process group on reload: a
    probe killed by it would be reported as a crash of its module.
    """
    global IN_FORKSERVER
    info = os.environ.pop(PARENT_MAIN_ENV, None)
    if info is None:
        return  # imported by the daemon itself, not by the forkserver
    IN_FORKSERVER = True
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    info = json.loads(info)
    main = sys.modules.get('__main__')
    if main is None or getattr(main, '__file__', None):
        return
    if info.get('file'):
        main.__file__ = info['file']
    if info.get('name'):
        main.__spec__ = importlib.machinery.ModuleSpec(info['name'], None)


_prepare_forkserver()


class ExitAtImport(BaseException):
    """Raised in place of ``os._exit`` so the caller's line can be named."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _raise_exit_at_import(code: int = 0) -> None:
    raise ExitAtImport(code)


def _relative_path(root: str, filename: str | None) -> str | None:
    if not filename:
        return None
    absolute = os.path.abspath(filename)
    if absolute == root or absolute.startswith(root + os.sep):
        return os.path.relpath(absolute, root)
    return None


def _location(root: str, exc: BaseException) -> tuple[str | None, int | None]:
    """Innermost file:line inside the actions directory for ``exc``."""
    if isinstance(exc, SyntaxError) and exc.filename:
        path = _relative_path(root, exc.filename)
        if path:
            return path, exc.lineno
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        path = _relative_path(root, frame.f_code.co_filename)
        if path:
            return path, lineno
    return None, None


def _short_traceback(root: str, exc: BaseException) -> str:
    """The traceback's frames inside the actions directory, and the error.

    Frames of the probe and of importlib say nothing to an action author.
    """
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if _relative_path(root, frame.filename)]
    lines = traceback.format_list(frames[-8:])
    lines += traceback.format_exception_only(type(exc), exc)
    return ''.join(lines)[-TRACEBACK_LIMIT:]


def _error(kind: str, message: str, path: str | None, line: int | None,
           tb: str = '') -> dict[str, Any]:
    return {'kind': kind, 'message': message, 'path': path, 'line': line,
            'traceback': tb}


def _describe_exception(root: str, exc: BaseException, memory_limit: int,
                        module_path: str) -> dict[str, Any]:
    path, line = _location(root, exc)
    path = path or module_path
    if isinstance(exc, SyntaxError):
        return _error('syntax', f'{type(exc).__name__}: {exc.msg}', path,
                      line, _short_traceback(root, exc))
    if isinstance(exc, ExitAtImport):
        return _error('exit', f'os._exit({exc.code}) called at import', path,
                      line)
    if isinstance(exc, SystemExit):
        return _error('exit', f'sys.exit({exc.code!r}) called at import',
                      path, line)
    if isinstance(exc, MemoryError):
        return _error('memory', 'allocated more than the probe memory limit '
                      f'({memory_limit // (1024 * 1024)} MiB) at import',
                      path, line, _short_traceback(root, exc))
    kind = 'import' if isinstance(exc, ImportError) else 'exception'
    message = f'{type(exc).__name__}: {exc}'
    return _error(kind, message, path, line, _short_traceback(root, exc))


def _source_problem(source: bytes, path: str) -> dict[str, Any] | None:
    """NUL bytes or undecodable text, with the line they are on."""
    nul = source.find(b'\0')
    if nul >= 0:
        return _error('encoding', 'file contains a NUL byte (binary data or '
                      'a file truncated mid-write?)', path,
                      source.count(b'\n', 0, nul) + 1)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        source.decode(encoding)
    except SyntaxError as exc:
        return _error('encoding', str(exc), path, None)
    except UnicodeDecodeError as exc:
        return _error('encoding', f'byte 0x{source[exc.start]:02x} is not '
                      f'valid {encoding}; save the file as UTF-8', path,
                      source.count(b'\n', 0, exc.start) + 1)
    return None


def _cycle_error(cycle, sources, module: str) -> dict[str, Any]:
    chain = ' -> '.join(name for name, _ in cycle)
    first, _ = cycle[0]
    _, line = cycle[1]
    where = sources[first].path
    if first == module:
        message = f'circular in-tree import: {chain}'
    else:
        message = f'imports {first}, which is in a circular import: {chain}'
    return _error('cycle', message + '; move the shared code to a module '
                  'both import, or import inside a function', where, line)


def use_sources(encoded: bytes) -> None:
    """Decode the snapshot of the tree the next probes import from.

    Called by the guard, once per snapshot: every worker it forks then
    finds the SourceRefs built (a thousand of them took 2 ms a probe).
    Unpickling is safe here: the daemon wrote it, for this process.

    :param encoded: The pickled source map (see ``hotload.probe``).
    """
    global _refs
    decoded = pickle.loads(encoded)  # noqa: S301 - see above
    _refs = {name: loader.SourceRef(*ref) for name, ref in decoded.items()}


def _source_refs(request: dict[str, Any]) -> dict[str, loader.SourceRef]:
    """The snapshot of the tree (see :func:`use_sources`)."""
    if _refs is None:
        use_sources(request['sources'])
    return _refs


def _probe(request: dict[str, Any]) -> dict[str, Any]:
    root = request['root']
    package_name = request['package_name']
    module = request['module']
    sources = _source_refs(request)
    ref = sources[module]
    blob_dir = request['blob_dir']

    def read_source(sha: str) -> bytes:
        with _open(os.path.join(blob_dir, sha[:2], sha), 'rb') as stream:
            return stream.read()

    source = read_source(ref.sha256)
    problem = _source_problem(source, ref.path)
    if problem:
        return {'error': problem, 'imports': {}}
    try:
        tree = _probe_imports.parse(ref.sha256, read_source,
                                    os.path.join(root, ref.path))
    except SyntaxError as exc:
        return {'error': _describe_exception(
            root, exc, request['memory_limit'], ref.path), 'imports': {}}

    importer = loader.TreeImporter(package_name, root, sources, read_source)
    importer.install()
    fullname = f'{package_name}.{module}'
    recorder = _probe_effects.StartRecorder(root)
    recorder.install()
    real_exit = os._exit
    os._exit = _raise_exit_at_import
    # A process the module forks is not the probe: os._exit must exit it.
    os.register_at_fork(after_in_child=lambda: setattr(os, '_exit',
                                                       real_exit))
    # After the probe's own changes (the importer, the wrappers), so that
    # only the module's show.
    snapshot = _probe_effects.Snapshot(package_name)
    try:
        imported = importlib.import_module(fullname)
        changes = snapshot.changes()
    except BaseException as exc:  # noqa: BLE001 - any failure is the report
        os._exit = real_exit
        imports, _ = _probe_imports.closure(importer, package_name)
        return {'error': _describe_exception(
            root, exc, request['memory_limit'], ref.path), 'imports': imports,
            'started': recorder.processes}
    finally:
        os._exit = real_exit
        recorder.uninstall()
    imports, edges = _probe_imports.closure(importer, package_name)
    imports.pop(module, None)
    facts = {'imports': imports, 'started': recorder.processes}
    if changes:
        trees = [(ref.path, tree)] + _probe_imports.loaded_trees(importer,
                                                                 imports)
        path, line = _probe_effects.locate(changes, trees)
        return {**facts, 'error': _error(
            'side-effect', _probe_effects.describe(changes),
            path or ref.path, line)}
    threads = recorder.running_threads()
    if threads:
        thread, (path, line, _) = threads[0]
        return {**facts, 'error': _error(
            'thread', _probe_effects.describe_thread(thread),
            path or ref.path, line)}
    cycle = _probe_imports.find_cycle(module, edges)
    if cycle:
        return {**facts, 'error': _cycle_error(cycle, sources, module)}
    exports, error = _probe_exports.exports(imported, ref.path, tree)
    return {**facts, 'error': error, 'exports': exports}


def _write_result(path: str, result: dict[str, Any]) -> None:
    # JSON, not pickle: the parent must never run anything this process
    # (which runs user code) could have crafted.
    if os.getpid() != _worker_pid:
        return  # a process the module forked, come back up the stack
    data = _dumps(result).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _own_static_imports(request: dict[str, Any]) -> dict[str, str | None]:
    """In-tree modules the module's own source names, with their hashes."""
    module = request['module']
    sources = _source_refs(request)
    ref = sources[module]
    blob_dir = request['blob_dir']

    def read_source(sha: str) -> bytes:
        with open(os.path.join(blob_dir, sha[:2], sha), 'rb') as stream:
            return stream.read()

    try:
        tree = _probe_imports.parse(ref.sha256, read_source,
                      os.path.join(request['root'], ref.path))
    except (SyntaxError, ValueError, OSError):
        return {}
    imports = {}
    for target, _line, _top in _probe_imports.static_imports(
            module, ref, tree, request['package_name']):
        if target in sources and sources[target].sha256:
            imports[target] = sources[target].sha256
    return imports


def run_batch(request: dict[str, Any]) -> None:
    """Entry point of a worker that probes several modules in turn.

    Each module of ``request['batch']`` is probed as by :func:`run`, with
    its own snapshot of the interpreter, and the in-tree modules of the
    one before removed first (it imports its own fresh, as alone). The
    batch stops after the first module that is not clean (any error,
    thread or process): what it did may still be in the process, so the
    daemon probes it and the rest one by one (see
    :meth:`hotload.probe.Probe.probe_batch`).

    One output file and one result file serve the whole batch (creating
    two files a module cost as much as a small module's import): each
    module's result is a line of JSON appended to ``result_path``, with
    what it printed.

    :param request: As for :func:`run`, with ``batch``, the modules, in
        place of ``module``.
    """
    _limit(request)
    _redirect_output(request['output_path'])
    results = os.open(request['result_path'],
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    package_prefix = request['package_name'] + '.'
    for module in request['batch']:
        started = _lseek(1, 0, os.SEEK_END)
        result = _probe_guarded({**request, 'module': module})
        if os.getpid() != _worker_pid:
            return  # a process the module forked, come back up the stack
        ended = _lseek(1, 0, os.SEEK_END)
        output = _pread(1, min(ended - started, OUTPUT_LIMIT),
                        max(started, ended - OUTPUT_LIMIT))
        _write(results, _dumps({
            'module': module, 'result': result,
            'output': output.decode('utf-8', 'replace')}).encode() + b'\n')
        if not is_clean(result):
            return
        sys.meta_path[:] = [finder for finder in sys.meta_path
                            if not isinstance(finder, loader.TreeImporter)]
        for name in [name for name in sys.modules
                     if name.startswith(package_prefix)]:
            del sys.modules[name]


def is_clean(result: dict[str, Any] | None) -> bool:
    """True for a module that imported without any error, thread or
    process: nothing of its import is left that another one could see."""
    return bool(result) and not result.get('partial') and \
        not result.get('error') and not result.get('started')


def run(request: dict[str, Any]) -> None:
    """Entry point of a probe's worker process (forked by its guard,
    hotload._probe_guard, which kills whatever this one leaves behind).

    Writes the result as JSON to ``request['result_path']``: first the
    module's own in-tree imports (so that if the import hangs or kills the
    process, a later change to one of them still triggers a new probe),
    then the full result.

    :param request: What to probe; see :meth:`hotload.probe.Probe.probe`.
    """
    _limit(request)
    _write_result(request['result_path'],
                  {'partial': True,
                   'imports': _own_static_imports(request)})
    _redirect_output(request['output_path'])
    result = _probe_guarded(request)
    _write_result(request['result_path'], result)


def _limit(request: dict[str, Any]) -> None:
    """The worker's limits: memory, core files, output size."""
    global _worker_pid
    # Until the stack dump is set up (_redirect_output), a timeout's
    # SIGUSR1 must not kill the process (it would be reported as a crash).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _worker_pid = os.getpid()
    limit = request['memory_limit']
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A module printing without end must not fill the disk.
    output_limit = request['output_file_limit']
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_limit, output_limit))
    # Past the limit a write then fails (an exception with its line)
    # instead of the process dying of SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _redirect_output(path: str) -> None:
    """Standard input from /dev/null; output and errors to ``path``."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    output = os.open(path, os.O_RDWR | os.O_APPEND)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.stdout = open(1, 'w', closefd=False)
    sys.stderr = open(2, 'w', closefd=False)
    # On timeout the parent sends SIGUSR1 first: the stack dump tells
    # which line the import is stuck on.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=False)


def _probe_guarded(request: dict[str, Any]) -> dict[str, Any]:
    """The module's result, with what it printed flushed to the file."""
    try:
        result = _probe(request)
    except MemoryError:
        result = {'error': _error(
            'memory', 'allocated more than the probe memory limit at import',
            _source_refs(request)[request['module']].path, None),
            'imports': {}}
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    return result
