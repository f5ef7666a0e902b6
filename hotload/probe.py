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
        request = {
            'root': self.root,
            'package_name': self.package_name,
            'module': module,
            'sources': {name: (ref.path, ref.sha256, ref.is_package)
                        for name, ref in sources.items()},
            'blob_dir': self.blob_dir,
            'memory_limit': self.memory_limit,
            'output_path': output_path,
        }
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_child_main, args=(sender, request),
                                  name=f'hotload-probe:{module}', daemon=True)
        try:
            process.start()
            sender.close()
            result = None
            timed_out = False
            if receiver.poll(self.timeout):
                with contextlib.suppress(EOFError):
                    result = receiver.recv()
            else:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGUSR1)
                process.join(STACK_DUMP_GRACE)
            if process.is_alive():
                process.kill()
            process.join()
            with open(output_path, 'rb') as stream:
                output = stream.read().decode('utf-8', 'replace')
        finally:
            receiver.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output_path)
        path = sources[module].path
        if result is None:
            error = (self._timeout_error(path, output) if timed_out
                     else self._death_error(path, process.exitcode, output))
            return ProbeResult(module, (), {}, error, output[-OUTPUT_LIMIT:])
        error = None
        if result.get('error'):
            raw = result['error']
            error = manifest.ModuleError(
                kind=raw['kind'], message=raw['message'],
                path=raw['path'] or path, line=raw['line'],
                traceback=raw['traceback'])
        exports = tuple(Export(**e) for e in result.get('exports') or ())
        imports = dict(result.get('imports', {}))
        packages = tuple(sorted(
            name for name in [module, *imports]
            if name in sources and sources[name].is_package))
        return ProbeResult(module, exports, imports, error,
                           output[-OUTPUT_LIMIT:], packages)

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
            cause = f'was killed by signal {signal.Signals(-exitcode).name}'
            if -exitcode in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
                cause += (' (out of memory? probe_memory_limit is '
                          f'{self.memory_limit // (1024 * 1024)} MiB)')
        else:
            cause = f'exited with status {exitcode}'
        return manifest.ModuleError(
            kind='crash',
            message=f'the probe process {cause} while importing the module',
            path=path, traceback=output[-OUTPUT_LIMIT:])


def _child_main(connection, request) -> None:
    _probe_child.run(connection, request)
