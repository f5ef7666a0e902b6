"""Import a candidate module in a separate, limited process.

The daemon never runs user code itself. Each module is imported in a child
process with an address-space limit, a timeout and its output captured; the
child reports the classes it exports or the error, as data.

Why a forkserver: a cold interpreter that imports mistral-lib takes about
170 ms. multiprocessing's forkserver starts one clean interpreter (no
daemon threads, no watchdog, no messaging) that preloads the probe and
mistral-lib once, then forks a fresh child for every module in a few
milliseconds. Each child is still a separate process that exits after one
module, so nothing one module does at import leaks into another's probe.
"""

import contextlib
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping

from hotload import _probe_child
from hotload import loader
from hotload import manifest

#: Seconds the child gets to write its stack after SIGUSR1 on timeout.
STACK_DUMP_GRACE = 0.5
OUTPUT_LIMIT = 4000
#: Largest output file a probe may write (RLIMIT_FSIZE).
OUTPUT_FILE_LIMIT = 16 * 1024 * 1024
#: Largest result document accepted from a probe.
RESULT_LIMIT = 4 * 1024 * 1024
_STACK_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')

_context_lock = threading.Lock()
_context = None


def _forkserver_context():
    global _context
    with _context_lock:
        if _context is None:
            # Every forkserver child re-runs the parent's main module unless
            # the forkserver's own __main__ looks like it (CPython 3.11
            # never passes the main path to the forkserver, so its
            # '__main__' preload does nothing). For a console script that
            # is a few hundred ms of imports per probe. Tell the
            # preloaded child module what the parent's main is.
            main = sys.modules.get('__main__')
            os.environ[_probe_child.PARENT_MAIN_ENV] = json.dumps({
                'file': getattr(main, '__file__', None),
                'name': getattr(getattr(main, '__spec__', None), 'name',
                                None)})
            _context = multiprocessing.get_context('forkserver')
            _context.set_forkserver_preload(['hotload._probe_child'])
        return _context


@dataclasses.dataclass(frozen=True)
class Export:
    """A class the probed module exports, before it is given a name.

    :param class_name: The class's name.
    :param declared_name: Its ``__action_name__``, or None.
    :param input: Parameter spec (``get_arg_list_as_str``).
    :param description: First paragraph of its docstring.
    :param line: Line of its class statement.
    """

    class_name: str
    declared_name: str | None
    input: str
    description: str
    line: int


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the probe found in one module.

    :param module: The module's dotted name inside the package.
    :param exports: Exported classes, in source order (empty on error).
    :param imports: In-tree modules loaded or referred to, with the sha256
        seen (None: tried but absent).
    :param error: Why the module cannot be served, or None.
    :param output: What the module printed at import (truncated).
    :param packages: Which of the module and its imports are packages.
    """

    module: str
    exports: tuple[Export, ...]
    imports: dict[str, str | None]
    error: manifest.ModuleError | None
    output: str = ''
    packages: tuple[str, ...] = ()


class Probe:
    """Imports modules of one actions directory in child processes.

    :param root: Absolute path of the actions directory.
    :param package_name: Import name the directory is mounted as.
    :param blob_dir: Blob store directory the sources are read from.
    :param timeout: Seconds one import may take.
    :param memory_limit_mb: Address space limit of a child, in MiB.
    """

    def __init__(self, root: str, package_name: str, blob_dir: str,
                 timeout: float, memory_limit_mb: int) -> None:
        self.root = os.path.abspath(root)
        self.package_name = package_name
        self.blob_dir = blob_dir
        self.timeout = timeout
        self.memory_limit = memory_limit_mb * 1024 * 1024
        self._tmp = tempfile.mkdtemp(prefix='hotload-probe-')

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> 'Probe':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def probe(self, module: str,
              sources: Mapping[str, loader.SourceRef]) -> ProbeResult:
        """Import ``module`` from ``sources`` in a child process.

        :param module: Dotted name inside the package; must be in
            ``sources`` with a sha256.
        :param sources: The whole snapshot of the tree, so in-tree imports
            see the same content the scanner hashed.
        """
        context = _forkserver_context()
        fd, output_path = tempfile.mkstemp(dir=self._tmp, suffix='.out')
        os.close(fd)
        result_path = output_path[:-len('.out')] + '.json'
        request = {
            'root': self.root,
            'package_name': self.package_name,
            'module': module,
            'sources': {name: (ref.path, ref.sha256, ref.is_package)
                        for name, ref in sources.items()},
            'blob_dir': self.blob_dir,
            'memory_limit': self.memory_limit,
            'output_path': output_path,
            'output_file_limit': OUTPUT_FILE_LIMIT,
            'result_path': result_path,
        }
        process = context.Process(target=_probe_child.run, args=(request,),
                                  name=f'hotload-probe:{module}', daemon=True)
        try:
            process.start()
            # The child's exit is the signal its result is complete.
            process.join(self.timeout)
            timed_out = process.is_alive()
            if timed_out:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGUSR1)
                process.join(STACK_DUMP_GRACE)
            # Its session: whatever the module started goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.join()
            output = _tail(output_path, OUTPUT_LIMIT)
            result = _read_result(result_path)
        finally:
            for path in (output_path, result_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return self._result(module, sources, result, timed_out,
                            process.exitcode, output)

    def _result(self, module: str, sources: Mapping[str, loader.SourceRef],
                result: dict | None, timed_out: bool, exitcode: int | None,
                output: str) -> ProbeResult:
        path = sources[module].path
        imports = _imports_of(result)
        if result is None or result.get('partial') or timed_out:
            error = (self._timeout_error(path, output) if timed_out
                     else self._death_error(path, exitcode, output))
            return ProbeResult(module, (), imports, error, output)
        try:
            error = None
            if result.get('error'):
                raw = result['error']
                error = manifest.ModuleError(
                    kind=str(raw['kind']), message=str(raw['message']),
                    path=str(raw['path'] or path),
                    line=int(raw['line']) if raw['line'] else None,
                    traceback=str(raw['traceback']))
            exports = tuple(Export(
                class_name=str(e['class_name']),
                declared_name=(str(e['declared_name'])
                               if e['declared_name'] is not None else None),
                input=str(e['input']), description=str(e['description']),
                line=int(e['line'])) for e in result.get('exports') or ())
        except (KeyError, TypeError, ValueError) as exc:
            error = manifest.ModuleError(
                kind='crash', path=path,
                message=f'the probe returned malformed data ({exc!r}); '
                        f'did the module tamper with the probe?')
            return ProbeResult(module, (), imports, error, output)
        packages = tuple(sorted(
            name for name in [module, *imports]
            if name in sources and sources[name].is_package))
        return ProbeResult(module, exports, imports, error, output, packages)

    def _location_in_stack(self, output: str) -> tuple[str | None, int | None]:
        # faulthandler prints the innermost frame first.
        for match in _STACK_LINE.finditer(output):
            absolute = os.path.abspath(match['file'])
            if absolute.startswith(self.root + os.sep):
                return os.path.relpath(absolute, self.root), int(match['line'])
        return None, None

    def _timeout_error(self, path: str, output: str) -> manifest.ModuleError:
        where, line = self._location_in_stack(output)
        return manifest.ModuleError(
            kind='timeout',
            message=f'import did not finish within {self.timeout:g} s '
                    f'(probe_timeout); the probe was killed',
            path=where or path, line=line,
            traceback=output[-OUTPUT_LIMIT:])

    def _death_error(self, path: str, exitcode: int | None,
                     output: str) -> manifest.ModuleError:
        if exitcode is not None and exitcode < 0:
            # strsignal also names real-time signals, which Signals lacks.
            cause = (f'was killed by signal {-exitcode} '
                     f'({signal.strsignal(-exitcode)})')
            if -exitcode in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
                cause += (' (out of memory? probe_memory_limit is '
                          f'{self.memory_limit // (1024 * 1024)} MiB)')
        else:
            cause = f'exited with status {exitcode}'
        return manifest.ModuleError(
            kind='crash',
            message=f'the probe process {cause} while importing the module',
            path=path, traceback=output[-OUTPUT_LIMIT:])


def _tail(path: str, limit: int) -> str:
    """The last ``limit`` bytes of a file, as text."""
    with open(path, 'rb') as stream:
        stream.seek(max(os.fstat(stream.fileno()).st_size - limit, 0))
        return stream.read().decode('utf-8', 'replace')


def _read_result(path: str) -> dict | None:
    """The child's JSON result; None when it wrote none or garbage."""
    try:
        with open(path, 'rb') as stream:
            data = stream.read(RESULT_LIMIT + 1)
    except FileNotFoundError:
        return None
    if len(data) > RESULT_LIMIT:
        return None
    try:
        result = json.loads(data)
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def _imports_of(result: dict | None) -> dict[str, str | None]:
    imports = (result or {}).get('imports')
    if not isinstance(imports, dict):
        return {}
    return {str(name): (str(sha) if sha else None)
            for name, sha in imports.items()}
