"""Import a candidate module in a separate, limited process.

The daemon never runs user code itself. Each module is imported in a child
process with an address-space limit, a timeout and its output captured; the
child reports the classes it exports or the error, as data.

Why a forkserver: a cold interpreter that imports mistral-lib takes about
170 ms. multiprocessing's forkserver starts one clean interpreter (no
daemon threads, no watchdog, no messaging) that preloads the probe and
mistral-lib once, then forks a fresh child for every module in a few
milliseconds. Each child is still a separate process that exits after one
module, so nothing one module does at import leaks into another's probe;
a first scan imports several modules per child, each after modules
whose import left nothing the probe can see (:meth:`Probe.probe_batch`).

That child is a guard (hotload._probe_guard) which forks the process that
imports the module and answers for every process below it: the timeout,
the cleanup, and :meth:`Probe.cancel`. A guard probes one module after
another, each in a fresh worker, so a scan pays for starting a process
through the forkserver once per guard, not per module
(hotload._probe_pool).
"""

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

from oslo_log import log as logging

from hotload import _probe_child
from hotload import _probe_pool
from hotload import exceptions
from hotload import loader
from hotload import manifest

LOG = logging.getLogger(__name__)

#: Seconds the child gets to write its stack after SIGUSR1 on timeout.
STACK_DUMP_GRACE = 0.5
#: Seconds past its own deadline after which a guard that did not exit is
#: killed by the daemon (it runs no module code, so this is a last resort).
GUARD_MARGIN = 5.0
#: Seconds a guard gets after cancel() before the daemon kills it.
CANCEL_GRACE = 1.0
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
            _context.set_forkserver_preload(['hotload._probe_guard'])
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

    Thread-safe: a scan probes several modules at once from a thread pool.

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
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._cancelled_at: float | None = None
        self._active = 0  # probe() calls under way
        self._pool = _probe_pool.GuardPool(self._start_guard)
        self._encoded_sources: tuple | None = None
        self._snapshots = 0

    def cancel(self) -> None:
        """Kill every probe in flight, with whatever its module started.

        Probes in flight and every later :meth:`probe` raise
        :class:`~hotload.exceptions.ScanCancelled`. Does not wait: each
        probe's own thread waits for its processes to go.
        """
        with self._lock:
            if self._cancelled_at is None:
                self._cancelled_at = time.monotonic()
        for guard in self._pool.all():
            guard.signal(signal.SIGTERM)

    def prestart(self, count: int) -> None:
        """Start ``count`` guards in the background, for the next probes.

        Called before a first scan walks the tree: the forkserver and
        the guards start meanwhile (some 0.4 s), on a core the walk
        leaves idle. :meth:`close` waits for it.

        :param count: Guards wanted (the scan's ``probe_workers``).
        """
        def start() -> None:
            try:
                with self._in_flight():
                    self._pool.prestart(count)
            except exceptions.ScanCancelled:
                pass
            except Exception:
                # The scan starts its guards itself, and reports a
                # failure to do so as each module's.
                LOG.exception('Starting the probe guards failed')

        threading.Thread(target=start, name='hotload-probe-prestart',
                         daemon=True).start()

    def close(self) -> None:
        """Cancel, wait for the probes in flight, remove the temporary
        directory."""
        self.cancel()
        with self._idle:
            self._idle.wait_for(lambda: not self._active,
                                CANCEL_GRACE + GUARD_MARGIN)
        self._pool.close_all()
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
        :raises ScanCancelled: when :meth:`cancel` was called.
        """
        with self._in_flight():
            return self._probe(module, sources)

    def probe_batch(self, modules: Sequence[str],
                    sources: Mapping[str, loader.SourceRef]
                    ) -> dict[str, ProbeResult]:
        """Import ``modules`` in turn in one child process; the results of
        those that imported clean.

        For many modules at once (a first scan): a process per module
        costs more than most imports (a fork, then copying every page the
        import touches). Each module still gets a snapshot of its own and
        imports its in-tree modules afresh, so a clean result is the one
        it gets alone, short of what the probe cannot see (a library's
        class patched in place), which Mistral's processes, where every
        hot module is imported together, share anyway. The batch stops
        at the first module that is not clean (an error, a thread, a
        process), and a batch that runs out of one module's ``timeout``
        or leaves a process behind yields nothing: what is missing from
        the result must be probed alone, with :meth:`probe`, so that
        every error is reported as an isolated probe finds it.

        :param modules: Dotted names inside the package, each in
            ``sources`` with a sha256.
        :param sources: As for :meth:`probe`.
        :returns: Module name to result, for the clean modules from the
            start of ``modules`` on (possibly none).
        :raises ScanCancelled: when :meth:`cancel` was called.
        """
        with self._in_flight():
            return self._probe_many(list(modules), sources)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._lock:
            self._check_cancelled()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def _check_cancelled(self) -> None:
        if self._cancelled_at is not None:
            raise exceptions.ScanCancelled('the probe was cancelled')

    def _files(self) -> dict[str, str]:
        """An output file and a result file, in the private directory."""
        fd, output_path = tempfile.mkstemp(dir=self._tmp, suffix='.out')
        os.close(fd)
        return {'output_path': output_path,
                'result_path': output_path[:-len('.out')] + '.json'}

    def _probe(self, module: str,
               sources: Mapping[str, loader.SourceRef]) -> ProbeResult:
        snapshot, encoded = self._encoded(sources)
        command = {**self._files(), 'module': module, 'snapshot': snapshot}
        try:
            report, exitcode = self._run(command, encoded)
            with self._lock:
                self._check_cancelled()
            output = _tail(command['output_path'], OUTPUT_LIMIT)
            result = _read_result(command['result_path'])
        finally:
            _remove(command)
        return self._result(module, sources, result, report, exitcode,
                            output)

    def _probe_many(self, modules: list[str],
                    sources: Mapping[str, loader.SourceRef]
                    ) -> dict[str, ProbeResult]:
        snapshot, encoded = self._encoded(sources)
        command = {**self._files(), 'batch': modules, 'snapshot': snapshot}
        results: dict[str, ProbeResult] = {}
        try:
            report, _ = self._run(command, encoded)
            with self._lock:
                self._check_cancelled()
            if report is None or report.get('timed_out') or \
                    report.get('leftover'):
                return results
            lines = _read_lines(command['result_path'], len(modules))
        finally:
            _remove(command)
        for module, line in zip(modules, lines, strict=False):
            # In order, and clean, or the rest is probed alone.
            if not isinstance(line, dict) or line.get('module') != module \
                    or not _probe_child.is_clean(line.get('result')):
                break
            results[module] = self._result(
                module, sources, line['result'], report, 0,
                str(line.get('output', ''))[-OUTPUT_LIMIT:])
        return results

    def _run(self, command: dict, encoded: bytes
             ) -> tuple[dict | None, int | None]:
        """Have a guard probe the command's module or batch: (its report,
        or None when it died without one; and then its exit code)."""
        # A guard that exited for being idle, just as it was handed the
        # module, never started it: another one is.
        for _attempt in range(3):
            guard = self._pool.take(command['snapshot'])
            with self._lock:
                cancelled = self._cancelled_at is not None
            if cancelled:
                guard.signal(signal.SIGTERM)
            if guard.snapshot != command['snapshot']:
                command = {**command, 'sources': encoded}
            else:
                command.pop('sources', None)
            deadline = (time.monotonic() + self.timeout + STACK_DUMP_GRACE
                        + GUARD_MARGIN)
            try:
                guard.send(command)
                guard.snapshot = command['snapshot']
                report = guard.report(
                    functools.partial(self._should_stop, deadline))
            except _probe_pool.GuardDied as died:
                self._pool.close(guard)
                if died.idle:
                    continue
                return None, died.exitcode
            if report is None or report.get('cancelled'):
                self._pool.close(guard)
                return report, guard.process.exitcode
            self._pool.give_back(guard, command['snapshot'])
            return report, 0
        return None, None

    def _should_stop(self, deadline: float) -> bool:
        """The guard does not answer: long past its timeout, or cancelled
        and past the grace it gets."""
        cancelled_at = self._cancelled_at
        now = time.monotonic()
        return now > deadline or (cancelled_at is not None
                                  and now > cancelled_at + CANCEL_GRACE)

    def _start_guard(self) -> _probe_pool.Guard:
        request = {
            'root': self.root,
            'package_name': self.package_name,
            'blob_dir': self.blob_dir,
            'memory_limit': self.memory_limit,
            'output_file_limit': OUTPUT_FILE_LIMIT,
            'timeout': self.timeout,
            'stack_dump_grace': STACK_DUMP_GRACE,
        }
        return _probe_pool.Guard(_forkserver_context(), request,
                                  'hotload-probe-guard')

    def _encoded(self, sources: Mapping[str, loader.SourceRef]
                 ) -> tuple[int, bytes]:
        """``sources`` as the guards read them, encoded once per snapshot,
        with a number for that snapshot.

        A scan probes many modules against one snapshot of the tree: a
        guard receives it once (see :mod:`hotload._probe_pool`).
        Snapshots are not changed once made; the size guards against a
        caller that does.
        """
        with self._lock:
            cached = self._encoded_sources
        if cached and cached[0] is sources and cached[1] == len(sources):
            return cached[2], cached[3]
        data = pickle.dumps({name: (ref.path, ref.sha256, ref.is_package)
                             for name, ref in sources.items()},
                            protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._encoded_sources and \
                    self._encoded_sources[0] is sources:
                return self._encoded_sources[2], self._encoded_sources[3]
            self._snapshots += 1
            # Holding ``sources`` keeps its id from being reused.
            self._encoded_sources = (sources, len(sources), self._snapshots,
                                     data)
            return self._snapshots, data

    def _result(self, module: str, sources: Mapping[str, loader.SourceRef],
                result: dict | None, report: dict | None,
                guard_exitcode: int | None, output: str) -> ProbeResult:
        path = sources[module].path
        imports = _imports_of(result)
        timed_out = bool(report and report.get('timed_out'))
        if report is None:
            exitcode = guard_exitcode
        else:
            exitcode = report.get('worker_exitcode')
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
            if error is None and report and report.get('leftover'):
                error = self._process_error(path, report['leftover'],
                                            result.get('started') or ())
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

    def _process_error(self, path: str, leftover: list[dict],
                       started: list) -> manifest.ModuleError:
        """Processes the import left running (the guard killed them)."""
        # A process is found under its own PID, or, when it double-forked
        # or started a session, under the session or group it belongs to,
        # which the recorded start created.
        lines = {int(pid): (where, line) for pid, where, line, _ in started}
        where, line = None, None
        for process in leftover:
            for key in ('pid', 'sid', 'pgid'):
                if int(process[key]) in lines:
                    where, line = lines[int(process[key])]
                    break
            if line:
                break
        else:
            # Not found (a library started it): the first start recorded.
            where, line = next(((w, ln) for _, w, ln, _ in started if ln),
                               (None, None))
        shown = ', '.join(f"{p['pid']} ({p['name']})" for p in leftover[:5])
        noun = 'process' if len(leftover) == 1 else 'processes'
        return manifest.ModuleError(
            kind='process',
            message=f'starts {noun} at import still running when the import '
                    f'ends: {shown}; the probe killed them. The module is '
                    "imported inside Mistral's API, engine and executor "
                    'processes: start processes in run() and wait for them',
            path=where or path, line=line)

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


def _remove(files: dict[str, str]) -> None:
    for key in ('output_path', 'result_path'):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files[key])


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


def _read_lines(path: str, count: int) -> list:
    """The first ``count`` JSON lines of a batch's result file; a line
    that is garbage, and those after it, are left out."""
    lines = []
    try:
        with open(path, 'rb') as stream:
            for line in stream:
                if len(lines) == count or len(line) > RESULT_LIMIT:
                    break
                lines.append(json.loads(line))
    except (FileNotFoundError, ValueError):
        pass
    return lines


def _imports_of(result: dict | None) -> dict[str, str | None]:
    imports = (result or {}).get('imports')
    if not isinstance(imports, dict):
        return {}
    return {str(name): (str(sha) if sha else None)
            for name, sha in imports.items()}
