"""The probe's child side: import one module and describe what it exports.

This module runs only in the probe's child processes (forked from a
forkserver that preloaded it, so mistral-lib is imported once, not once per
file). Nothing here runs in the daemon. Results go back as plain data.
"""

import ast
import contextlib
import faulthandler
import importlib
import importlib.machinery
import inspect
import io
import json
import os
import resource
import signal
import sys
import tokenize
import traceback
from typing import Any

from mistral_lib import actions as ml_actions
from mistral_lib.utils import inspect_utils

from hotload import _probe_effects
from hotload import loader

TRACEBACK_LIMIT = 4000
PARENT_MAIN_ENV = 'HOTLOAD_PROBE_PARENT_MAIN'
#: True in the forkserver (and so in the probes forked from it).
IN_FORKSERVER = False
#: The process that imports the module; set by run().
_worker_pid = None
# Bound now: the module may replace json.dumps or builtins.open at import
# (that is reported), and the report must still get out.
_dumps = json.dumps
_open = io.open


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


def _class_lines(tree: ast.Module) -> dict[str, int]:
    lines: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            lines.setdefault(node.name, node.lineno)
    return lines


def _description(cls: type) -> str:
    """First paragraph of the class's own docstring, on one line."""
    doc = cls.__dict__.get('__doc__')
    if not isinstance(doc, str):
        return ''
    summary = []
    for line in inspect.cleandoc(doc).splitlines():
        # A summary ends at a blank line or where the reST fields begin
        # (":param x:" right under the summary, as the seed wrote them).
        if not line.strip() or line.lstrip().startswith(':'):
            break
        summary.append(line.strip())
    return ' '.join(summary)


def _input_spec(cls: type) -> str:
    if cls.__init__ is object.__init__:
        return ''
    return inspect_utils.get_arg_list_as_str(cls.__init__)


def _non_json_default(cls: type) -> str | None:
    """Why a default of ``cls.__init__`` cannot be action input, or None.

    The spec string drops such a default, Mistral then rejects the
    parameter, and the executor cannot serialize the action.
    """
    if cls.__init__ is object.__init__:
        return None
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return None
    for parameter in parameters:
        if parameter.default is parameter.empty:
            continue
        try:
            _dumps(parameter.default)
        except Exception:  # noqa: BLE001 - whatever it is, it is not JSON
            try:
                shown = repr(parameter.default)[:80]
            except Exception:  # noqa: BLE001 - a broken __repr__
                shown = type(parameter.default).__name__
            return (f'default of parameter {parameter.name!r} ({shown}) is '
                    'not JSON; Mistral passes action input as JSON')
    return None


def _abstract_methods(cls: type) -> list[str]:
    return sorted(name for name in dir(cls)
                  if getattr(getattr(cls, name, None),
                             '__isabstractmethod__', False))


def _exports(module, module_path: str, tree: ast.Module):
    """(exports, error) for the classes defined in ``module``."""
    lines = _class_lines(tree)
    exports = []
    seen = set()
    for obj in list(vars(module).values()):
        if (not isinstance(obj, type) or obj.__module__ != module.__name__
                or obj in seen):
            continue
        seen.add(obj)
        name = obj.__name__
        explicit = obj.__dict__.get('__export__')
        is_action = issubclass(obj, ml_actions.Action)
        if name.startswith('_') or explicit is False:
            continue
        if not is_action and explicit is not True:
            continue
        line = lines.get(name)
        if not callable(getattr(obj, 'run', None)):
            return None, _error(
                'export', f'class {name} sets __export__ = True but has no '
                'run() method', module_path, line)
        abstract = _abstract_methods(obj)
        if abstract:
            return None, _error(
                'export', f'class {name} is abstract: it does not implement '
                f'{", ".join(m + "()" for m in abstract)}; implement it, or '
                f'mark a base class __export__ = False or name it _{name}',
                module_path, line)
        declared = obj.__dict__.get('__action_name__')
        if declared is not None and (not isinstance(declared, str)
                                     or not declared.strip()):
            return None, _error(
                'export', f'class {name}: __action_name__ must be a '
                'non-empty string', module_path, line)
        try:
            spec = _input_spec(obj)
        except (TypeError, ValueError) as exc:
            return None, _error(
                'export', f'class {name}: cannot read the parameters of '
                f'__init__: {exc}', module_path, line)
        problem = _non_json_default(obj)
        if problem:
            return None, _error('export', f'class {name}: {problem}',
                                module_path, line)
        exports.append({'class_name': name, 'declared_name': declared,
                        'input': spec, 'description': _description(obj),
                        'line': line or 0})
    return sorted(exports, key=lambda e: e['line']), None


def _import_targets(module: str, is_package: bool, package_name: str,
                    node: ast.AST) -> list[str]:
    """In-tree module names an import statement may refer to."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == package_name or alias.name.startswith(
                    package_name + '.'):
                targets.append(alias.name[len(package_name) + 1:])
        return [t for t in targets if t]
    if not isinstance(node, ast.ImportFrom):
        return targets
    if node.level:
        parts = module.split('.') if module else []
        if not is_package:
            parts = parts[:-1]
        if node.level - 1 > len(parts):
            return targets
        parts = parts[:len(parts) - (node.level - 1)]
        base = '.'.join(parts + ([node.module] if node.module else []))
    elif node.module and (node.module == package_name
                          or node.module.startswith(package_name + '.')):
        base = node.module[len(package_name) + 1:]
    else:
        return targets
    if base:
        targets.append(base)
    for alias in node.names:
        targets.append(f'{base}.{alias.name}' if base else alias.name)
    return targets


def _static_imports(module: str, ref: loader.SourceRef, tree: ast.Module,
                    package_name: str) -> list[tuple[str, int, bool]]:
    """(target, line, at module level) for each in-tree import in ``tree``."""
    found = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _import_targets(module, ref.is_package,
                                              package_name, child):
                    found.append((target, child.lineno, top_level))
            nested = not isinstance(child, (ast.FunctionDef,
                                            ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top_level and nested)

    visit(tree, True)
    return found


def _find_cycle(start: str, edges: dict[str, list[tuple[str, int]]]):
    """A module-level import cycle reachable from ``start``, or None."""
    stack: list[tuple[str, int]] = []
    on_stack: set[str] = set()
    done: set[str] = set()

    def visit(name: str, line: int):
        stack.append((name, line))
        on_stack.add(name)
        for target, target_line in edges.get(name, []):
            if target in on_stack:
                names = [n for n, _ in stack]
                return stack[names.index(target):] + [(target, target_line)]
            if target not in done:
                cycle = visit(target, target_line)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(name)
        done.add(name)
        return None

    return visit(start, 0)


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


def _tree_facts(importer: loader.TreeImporter, package_name: str):
    """In-tree imports (closure) and module-level import edges.

    Starts from the modules the import loaded and follows every import
    statement found in their sources, also those inside functions that
    did not run yet, and theirs in turn: all of them are pinned in the
    content key, so the executor can load them at the version validated.
    Only module-level statements make edges for the cycle check: an import
    inside a function is how Python code breaks a cycle.
    """
    imports: dict[str, str | None] = dict(importer.requested)
    edges: dict[str, list[tuple[str, int]]] = {}
    pending = [name for name, sha in imports.items() if sha]
    parsed = set()
    while pending:
        name = pending.pop()
        if name in parsed:
            continue
        parsed.add(name)
        ref = importer.sources[name]
        try:
            tree = ast.parse(importer.read_source(ref.sha256))
        except (SyntaxError, ValueError):
            continue
        for target, line, top_level in _static_imports(name, ref, tree,
                                                       package_name):
            target_ref = importer.sources.get(target)
            if target_ref is None or target_ref.sha256 is None:
                continue
            if target not in imports:
                imports[target] = target_ref.sha256
                pending.append(target)
            # Importing a submodule of one's own package while it
            # initialises is ordinary Python, not a cycle.
            if top_level and target != name and \
                    not name.startswith(target + '.'):
                edges.setdefault(name, []).append((target, line))
    return imports, edges


def _probe(request: dict[str, Any]) -> dict[str, Any]:
    root = request['root']
    package_name = request['package_name']
    module = request['module']
    sources = {name: loader.SourceRef(*ref)
               for name, ref in request['sources'].items()}
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
        tree = ast.parse(source, filename=os.path.join(root, ref.path))
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
        imports, _ = _tree_facts(importer, package_name)
        return {'error': _describe_exception(
            root, exc, request['memory_limit'], ref.path), 'imports': imports,
            'started': recorder.processes}
    finally:
        os._exit = real_exit
        recorder.uninstall()
    imports, edges = _tree_facts(importer, package_name)
    imports.pop(module, None)
    facts = {'imports': imports, 'started': recorder.processes}
    if changes:
        trees = [(ref.path, tree)] + _trees(importer, imports)
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
    cycle = _find_cycle(module, edges)
    if cycle:
        return {**facts, 'error': _cycle_error(cycle, sources, module)}
    exports, error = _exports(imported, ref.path, tree)
    return {**facts, 'error': error, 'exports': exports}


def _trees(importer: loader.TreeImporter, imports: dict[str, str | None]
           ) -> list[tuple[str, ast.Module]]:
    """(path, syntax tree) of the in-tree modules the import loaded."""
    trees = []
    for name, sha in imports.items():
        if not sha or name not in importer.requested:
            continue
        with contextlib.suppress(SyntaxError, ValueError, OSError):
            trees.append((importer.sources[name].path,
                          ast.parse(importer.read_source(sha))))
    return trees


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
    sources = {name: loader.SourceRef(*ref)
               for name, ref in request['sources'].items()}
    ref = sources[module]
    path = os.path.join(request['blob_dir'], ref.sha256[:2], ref.sha256)
    try:
        with open(path, 'rb') as stream:
            tree = ast.parse(stream.read())
    except (SyntaxError, ValueError, OSError):
        return {}
    imports = {}
    for target, _line, _top in _static_imports(
            module, ref, tree, request['package_name']):
        if target in sources and sources[target].sha256:
            imports[target] = sources[target].sha256
    return imports


def run(request: dict[str, Any]) -> None:
    """Entry point of a probe's worker process (forked by its guard,
    hotload._probe_guard, which kills whatever this one leaves behind).

    Writes the result as JSON to ``request['result_path']``: first the
    module's own in-tree imports (so that if the import hangs or kills the
    process, a later change to one of them still triggers a new probe),
    then the full result.

    :param request: What to probe; see :meth:`hotload.probe.Probe.probe`.
    """
    global _worker_pid
    # Until the stack dump below is set up, a timeout's SIGUSR1 must not
    # kill the process (it would be reported as a crash).
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
    _write_result(request['result_path'],
                  {'partial': True, 'imports': _own_static_imports(request)})
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    output = os.open(request['output_path'], os.O_WRONLY | os.O_APPEND)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.stdout = open(1, 'w', closefd=False)
    sys.stderr = open(2, 'w', closefd=False)
    # On timeout the parent sends SIGUSR1 first: the stack dump tells
    # which line the import is stuck on.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=False)
    try:
        result = _probe(request)
    except MemoryError:
        result = {'error': _error(
            'memory', 'allocated more than the probe memory limit at import',
            request['sources'][request['module']][0], None), 'imports': {}}
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    _write_result(request['result_path'], result)
