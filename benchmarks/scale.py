#!/usr/bin/env python3
"""How mistral-hotload scales: 100 and 1,000 modules, and 1,000 reloads.

For each size, builds an actions tree of N modules in 10 directories, 10
actions a module, and runs ``mistral-hotload-daemon`` on it as a real
process (no broker: no ``transport_url``), with a
``HotloadActionProvider`` in this process, as Mistral hosts it. The
provider notices each generation itself (one ``stat`` of manifest.json per
lookup, refresh in the background). Measures:

* first full scan: from starting the daemon until generation 1 exists;
* one-file edit -> served: from the edit (written to a temporary name and
  renamed) until the provider's ``find()`` returns the descriptor of the
  new version (its ``ref.sha256`` is the file's), over single-file edits;
* provider full refresh: building a fresh provider, which loads the whole
  table;
* provider work per generation with one changed module: ``refresh()`` of
  a second provider, timed after the daemon published the edit's
  generation;
* provider table memory: tracemalloc, the bytes still allocated after a
  fresh provider built its table;
* ``find()``: mean over many lookups of existing names;
* the daemon's own "N probed in X s" of the last edit, from its log;

and, on the first size, RSS growth over reloads of one module: each
version is edited through the daemon, served, instantiated and run once
(its action formats a traceback of its own code, as Mistral's log of a
failed action does, so that ``linecache`` is exercised); the process RSS,
``len(sys.modules)``, ``len(sys.meta_path)`` and ``len(linecache.cache)``
are taken before (the provider has loaded its table and run the module's
current version once; no reload is warmed up) and after.

Prints the figures and the issue's targets with PASS/FAIL, and writes them
as JSON to benchmarks/results/scale-<timestamp>.json.

Usage: benchmarks/scale.py [--sizes 100,1000] [--edits 20] [--reloads N]
                           [--quick] [--output F] [--keep]
"""

import argparse
import contextlib
import gc
import hashlib
import linecache
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

from common import close_file
from common import percentile
from common import stop_daemon
from common import wait_for
from common import write_results
from oslo_config import cfg

# As the daemon does (hotload.cmd.daemon): oslo.service, under
# oslo.messaging, warns of eventlet at import; nothing here uses it.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

from hotload import conf as hotload_conf  # noqa: E402
from hotload import provider as provider_mod  # noqa: E402
from hotload import store  # noqa: E402
from hotload import versions  # noqa: E402

TOP = Path(__file__).resolve().parents[1]
PREFIX = 'scale'
DIRECTORIES = 10
ACTIONS_PER_MODULE = 10
#: The module the reload loop edits (and no edit of the latency loop).
RELOAD_MODULE = 0
FIRST_SCAN_DEADLINE = 600.0
EDIT_DEADLINE = 60.0
#: Pause between two find() calls while waiting for a version: the
#: resolution of the edit latency.
FIND_PAUSE = 0.001
PAGE_SIZE = os.sysconf('SC_PAGE_SIZE')
PUBLISHED = re.compile(
    r'Published generation (?P<generation>\d+): (?P<modules>\d+) modules, '
    r'(?P<actions>\d+) actions, (?P<errors>\d+) errors '
    r'\((?P<probed>\d+) probed in (?P<seconds>[0-9.]+) s\)')

HEADER = '''"""Scale benchmark module {index}, version {version}."""

import traceback

from mistral_lib import actions
'''
ACTION = '''

class Act{number}(actions.Action):
    """Action {number} of module {index}, version {version}."""

    def __init__(self, value=0):
        super().__init__()
        self.value = value

    def run(self, context):
        try:
            raise ValueError({version})
        except ValueError as exc:
            return {version}, len("".join(traceback.format_exception(exc)))
'''


def module_path(index: int) -> str:
    """Where module ``index`` lives: spread over the directories."""
    return f'd{index % DIRECTORIES}/m{index:04d}.py'


def module_source(index: int, version: int) -> str:
    return HEADER.format(index=index, version=version) + ''.join(
        ACTION.format(number=number, index=index, version=version)
        for number in range(ACTIONS_PER_MODULE))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def published_generation(state_dir: Path) -> int:
    """The generation the state directory serves (0: none yet).

    The only place the benchmark reads the state directory itself: the
    manifest's format is not a stable interface.
    """
    if not (state_dir / 'manifest.json').exists():
        return 0
    current = store.ManifestStore(str(state_dir)).load()
    return current.generation if current else 0


def rss_mb() -> float:
    with open('/proc/self/statm') as stream:
        return int(stream.read().split()[1]) * PAGE_SIZE / 2 ** 20


def footprint() -> dict:
    """What a process that reloads actions must not accumulate."""
    gc.collect()
    return {'rss_mb': round(rss_mb(), 2), 'sys.modules': len(sys.modules),
            'sys.meta_path': len(sys.meta_path),
            'linecache': len(linecache.cache)}


class Setup:
    """An actions tree, a state directory and the daemon serving them.

    :param workdir: Private directory (mode 0700, the user's) for both.
    :param modules: Modules in the tree.
    """

    def __init__(self, workdir: Path, modules: int) -> None:
        self.workdir = workdir
        self.modules = modules
        self.actions_dir = workdir / 'actions'
        self.state_dir = workdir / 'state'
        self.log_path = workdir / 'daemon.log'
        self.config_file = workdir / 'mistral-hotload.conf'
        self.daemon: subprocess.Popen | None = None
        self.user = pwd.getpwuid(os.getuid()).pw_name

    def write_tree(self) -> None:
        # Directories 0755, files 0644: the trust rules refuse anything
        # group or other may write.
        self.actions_dir.mkdir(mode=0o755)
        for directory in range(DIRECTORIES):
            (self.actions_dir / f'd{directory}').mkdir(mode=0o755)
        for index in range(self.modules):
            path = self.actions_dir / module_path(index)
            path.write_text(module_source(index, 0))
            path.chmod(0o644)
        self.config_file.write_text(
            f'[hotload]\n'
            f'actions_dir = {self.actions_dir}\n'
            f'state_dir = {self.state_dir}\n'
            f'trusted_owners = {self.user}\n'
            f'action_prefix = {PREFIX}\n')

    def start_daemon(self) -> float:
        """Start the daemon; seconds until generation 1 exists."""
        script = Path(sys.executable).parent / 'mistral-hotload-daemon'
        command = [str(script)] if script.exists() else [
            sys.executable, '-c',
            'import sys; from hotload.cmd import daemon; '
            'sys.exit(daemon.main())']
        started = time.monotonic()
        with open(self.log_path, 'ab') as log:
            self.daemon = subprocess.Popen(
                [*command, '--config-file', str(self.config_file)],
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.wait_for(lambda: published_generation(self.state_dir) >= 1,
                      'generation 1', FIRST_SCAN_DEADLINE, pause=0.005)
        return time.monotonic() - started

    def wait_for(self, predicate, what: str, deadline: float,
                 pause: float = 0.01):
        """``common.wait_for``, failing at once if the daemon died."""
        def alive_and(predicate=predicate):
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(
                    f'the daemon exited with {self.daemon.returncode}; '
                    f'its log: {self.log_path}\n{self.log_tail()}')
            return predicate()
        return wait_for(alive_and, what, deadline, pause)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return '\n'.join(
                self.log_path.read_text(errors='replace').splitlines()[
                    -lines:])
        return ''

    def published_line(self, generation: int) -> dict | None:
        """The daemon's log line for ``generation``, as numbers."""
        with contextlib.suppress(OSError):
            for match in PUBLISHED.finditer(
                    self.log_path.read_text(errors='replace')):
                if int(match['generation']) == generation:
                    return {key: float(value) if key == 'seconds'
                            else int(value)
                            for key, value in match.groupdict().items()}
        return None

    def provider(self) -> provider_mod.HotloadActionProvider:
        """A provider on the state directory, as Mistral builds one."""
        conf = cfg.ConfigOpts()
        hotload_conf.register_opts(conf)
        conf([], default_config_files=[])
        for option, value in (('state_dir', str(self.state_dir)),
                              ('actions_dir', str(self.actions_dir)),
                              ('trusted_owners', [self.user]),
                              ('action_prefix', PREFIX)):
            conf.set_override(option, value, 'hotload')
        return provider_mod.HotloadActionProvider('hotload', conf=conf)

    def edit(self, index: int, version: int) -> tuple[float, str]:
        """Write a new version of module ``index`` as an editor saves.

        :returns: When it was closed under its name, and its sha256.
        """
        text = module_source(index, version)
        path = self.actions_dir / module_path(index)
        return close_file(path.parent, path.name, text), sha256(text)

    def stop(self) -> None:
        if self.daemon is not None:
            stop_daemon(self.daemon)


def action_names(provider) -> dict[str, str]:
    """Module name to the name of its first action (``Act0``)."""
    return {d.ref.module: d.name for d in provider.find_all()
            if d.ref.class_name == 'Act0'}


def module_name(index: int) -> str:
    return module_path(index)[:-len('.py')].replace('/', '.')


def serve(setup: Setup, provider, name: str, sha: str):
    """Poll ``find(name)`` until it names the version ``sha``."""
    def served():
        descriptor = provider.find(name)
        return descriptor if descriptor and \
            descriptor.ref.sha256 == sha else None
    return setup.wait_for(served, f'{name} at {sha[:12]}', EDIT_DEADLINE,
                          pause=FIND_PAUSE)


def measure_size(setup: Setup, args) -> dict:
    """Every per-size figure, with the daemon of ``setup`` running."""
    figures: dict = {'modules': setup.modules}
    print(f'\n{setup.modules} modules: writing the tree ...', flush=True)
    setup.write_tree()
    figures['first_scan_s'] = setup.start_daemon()
    print(f'  generation 1 after {figures["first_scan_s"]:.2f} s',
          flush=True)

    timings = []
    for _ in range(args.refreshes):
        started = time.perf_counter()
        fresh = setup.provider()
        timings.append((time.perf_counter() - started) * 1000)
        assert fresh.generation >= 1
        del fresh
    figures['full_refresh_ms'] = statistics.median(timings)
    figures['full_refresh_samples_ms'] = timings
    gc.collect()

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fresh = setup.provider()
    figures['table_mb'] = (tracemalloc.get_traced_memory()[0]
                           - before) / 2 ** 20
    tracemalloc.stop()
    actions = len(fresh.find_all())
    del fresh
    figures['actions'] = actions

    provider = setup.provider()
    timer = setup.provider()  # refresh() timed on it alone
    names = action_names(provider)
    lookups = list(names.values())
    started = time.perf_counter()
    for count in range(args.lookups):
        provider.find(lookups[count % len(lookups)])
    figures['find_us'] = (time.perf_counter() - started) * 1e6 / \
        args.lookups

    print(f'  {args.edits} single-file edits ...', flush=True)
    edit_ms, refresh_ms, refresh_swapped = [], [], []
    for edit in range(args.edits):
        index = 1 + edit % (setup.modules - 1)  # never RELOAD_MODULE
        name = names[module_name(index)]
        closed, sha = setup.edit(index, 1 + edit // (setup.modules - 1))
        serve(setup, provider, name, sha)
        edit_ms.append((time.monotonic() - closed) * 1000)
        started = time.perf_counter()
        swapped = timer.refresh()
        refresh_ms.append((time.perf_counter() - started) * 1000)
        refresh_swapped.append(swapped)
    figures['edit_ms'] = edit_ms
    figures['edit_p50_ms'] = percentile(edit_ms, 0.5)
    figures['edit_p90_ms'] = percentile(edit_ms, 0.9)
    figures['refresh_one_module_ms'] = statistics.median(refresh_ms)
    figures['refresh_one_module_samples_ms'] = refresh_ms
    figures['refresh_swapped'] = sum(refresh_swapped)
    generation = provider.generation
    last = setup.wait_for(lambda: setup.published_line(generation),
                          f'the log line of generation {generation}', 10.0)
    figures['last_edit_probe'] = last
    print(f'  edit p50 {figures["edit_p50_ms"]:.1f} ms', flush=True)
    if args.reloads and setup.modules == args.rss_size:
        figures['reloads'] = measure_reloads(setup, provider, args.reloads)
    return figures


def measure_reloads(setup: Setup, provider, reloads: int) -> dict:
    """RSS and interpreter tables across ``reloads`` reloads of a module.

    The starting point: the provider has loaded its table (and served the
    single-file edits before), and has run the reload module's current
    version once, as a Mistral engine that ran one action of it; nothing
    of the reloads is warmed up. Before and after, ``gc.collect()`` (what
    is left is held, not garbage waiting); before, also ``malloc_trim``,
    so that the growth does not count pages freed before the start, which
    the cache's first trim would give back. After, no trim but the
    cache's own. ``sys.modules`` and ``linecache`` grow by the idle
    versions the cache keeps (``versions.IDLE_VERSIONS``), which the
    starting point has not loaded yet.
    """
    from mistral_lib.actions import context as ml_context

    name = action_names(provider)[module_name(RELOAD_MODULE)]
    context = ml_context.ActionContext()

    def run_once(count: int) -> int:
        descriptor = provider.find(name)
        action = descriptor.instantiate({'value': count}, {})
        result, _ = action.run(context)
        del action, descriptor
        return result

    assert run_once(0) == 0
    print(f'  {reloads} reloads of one module ...', flush=True)
    versions.trim_heap()
    before = footprint()
    collections = provider.cache.collections
    started = time.monotonic()
    for version in range(1, reloads + 1):
        _, sha = setup.edit(RELOAD_MODULE, version)
        serve(setup, provider, name, sha)
        result = run_once(version)
        assert result == version, (result, version)
        if version % 100 == 0:
            print(f'    {version}/{reloads} '
                  f'({time.monotonic() - started:.0f} s, RSS '
                  f'{rss_mb() - before["rss_mb"]:+.2f} MB)', flush=True)
    seconds = time.monotonic() - started
    after = footprint()
    return {'reloads': reloads, 'seconds': round(seconds, 1),
            'before': before, 'after': after,
            'growth': {key: round(after[key] - before[key], 2)
                       for key in after},
            'collections': provider.cache.collections - collections}


def print_figures(sizes: list[dict]) -> list[dict]:
    """The table of figures per size; the rows as data."""
    def label(figures):
        return (f'{figures["modules"]:,} modules / '
                f'{figures["actions"]:,} actions')

    rows = [
        ('first full scan to generation 1 (s)',
         lambda f: f'{f["first_scan_s"]:.2f}'),
        ('one-file edit -> provider serves it, p50 (ms)',
         lambda f: f'{f["edit_p50_ms"]:.1f}'),
        ('one-file edit -> provider serves it, p90 (ms)',
         lambda f: f'{f["edit_p90_ms"]:.1f}'),
        ('provider full refresh, fresh provider, median (ms)',
         lambda f: f'{f["full_refresh_ms"]:.1f}'),
        ('provider refresh(), one module changed, median (ms)',
         lambda f: f'{f["refresh_one_module_ms"]:.1f}'),
        ('provider table memory, tracemalloc (MB)',
         lambda f: f'{f["table_mb"]:.2f}'),
        ('find(), mean (us)', lambda f: f'{f["find_us"]:.2f}'),
        ('daemon: probed / time, last edit (ms)',
         lambda f: f'{f["last_edit_probe"]["probed"]} / '
                   f'{f["last_edit_probe"]["seconds"] * 1000:.0f}'),
    ]
    width = max(len(title) for title, _ in rows)
    columns = [label(f) for f in sizes]
    column = max(len(c) for c in columns)
    print()
    print(f'{"measure":{width}s}  ' + '  '.join(
        f'{c:>{column}s}' for c in columns))
    table = []
    for title, cell in rows:
        cells = [cell(f) for f in sizes]
        print(f'{title:{width}s}  ' + '  '.join(
            f'{c:>{column}s}' for c in cells))
        table.append({'measure': title,
                      'values': dict(zip(columns, cells, strict=True))})
    return table


def print_reloads(reloads: dict, modules: int) -> None:
    print(f'\n{reloads["reloads"]} reloads of one module in a tree of '
          f'{modules} modules, each run once '
          f'({reloads["seconds"]:.0f} s):')
    print('  measured from the provider with its table loaded and one run '
          'of the\n  module\'s current version (then gc.collect() and '
          'malloc_trim), to after the\n  last reload (gc.collect() only); '
          f'{reloads["collections"]} collections of unmounted\n  versions '
          f'(gc + malloc_trim) meanwhile; sys.modules and linecache: '
          f'+{versions.IDLE_VERSIONS}\n  idle versions kept, not loaded at '
          f'the start')
    print(f'{"":15s} {"before":>10s} {"after":>10s} {"growth":>10s}')
    for key in reloads['before']:
        print(f'{key:15s} {reloads["before"][key]:10} '
              f'{reloads["after"][key]:10} {reloads["growth"][key]:10}')


def targets(sizes: list[dict]) -> list[dict]:
    """The issue's targets, each with the figure and PASS/FAIL."""
    by_modules = {f['modules']: f for f in sizes}
    small, large = by_modules.get(100), by_modules.get(1000)
    checks = []

    def check(target, value, passed, shown):
        checks.append({'target': target, 'value': value,
                       'shown': shown, 'pass': passed})

    if large:
        edit = large['edit_p50_ms']
        check('edit p50 < 150 ms at 1,000 modules', edit, edit < 150,
              f'{edit:.1f} ms')
        if small:
            ratio = edit / small['edit_p50_ms']
            check('edit p50 at 1,000 modules within 1.3x of 100', ratio,
                  ratio <= 1.3, f'{ratio:.2f}x')
        refresh = large['refresh_one_module_ms']
        check(f'provider work per generation, one module changed, < 10 ms '
              f'at {large["actions"]:,} actions', refresh, refresh < 10,
              f'{refresh:.1f} ms')
        scan = large['first_scan_s']
        check('first full scan of 1,000 modules < 5 s', scan, scan < 5,
              f'{scan:.2f} s')
        memory = large['table_mb']
        check(f'provider table at {large["actions"]:,} actions < 10 MB',
              memory, memory < 10, f'{memory:.2f} MB')
    for figures in sizes:
        reloads = figures.get('reloads')
        if reloads:
            growth = reloads['growth']['rss_mb']
            check(f'RSS growth over {reloads["reloads"]:,} reloads < 5 MB',
                  growth, growth < 5, f'{growth:.2f} MB')
    width = max([10, *(len(c['target']) for c in checks)])
    print()
    print(f'{"target":{width}s}  {"measured":>12s}  result')
    for c in checks:
        print(f'{c["target"]:{width}s}  {c["shown"]:>12s}  '
              f'{"PASS" if c["pass"] else "FAIL"}')
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='100,1000',
                        help='Module counts of the trees (100,1000).')
    parser.add_argument('--edits', type=int, default=20,
                        help='Single-file edits timed per size (20).')
    parser.add_argument('--reloads', type=int, default=1000,
                        help='Reloads of one module for the RSS figure '
                             '(1000; 0 skips them).')
    parser.add_argument('--rss-size', type=int, default=100,
                        help='The tree size the reloads run on (100).')
    parser.add_argument('--refreshes', type=int, default=5,
                        help='Fresh providers timed per size (5).')
    parser.add_argument('--lookups', type=int, default=100_000,
                        help='find() calls averaged per size (100000).')
    parser.add_argument('--quick', action='store_true',
                        help='A short run: 5 edits, 50 reloads, '
                             '2 fresh providers, 10000 lookups.')
    parser.add_argument('--output', default=str(
        TOP / 'benchmarks' / 'results' /
        f'scale-{time.strftime("%Y%m%d-%H%M%S")}.json'),
        help='Where to write the JSON results.')
    parser.add_argument('--keep', action='store_true',
                        help='Keep the trees, state directories and daemon '
                             'logs (their directory is printed).')
    args = parser.parse_args()
    if args.quick:
        args.edits, args.reloads = 5, min(args.reloads, 50)
        args.refreshes, args.lookups = 2, 10_000
    sizes = [int(size) for size in args.sizes.split(',')]

    # mkdtemp: mode 0700, this user's; the trust rules accept it.
    workdir = Path(tempfile.mkdtemp(prefix='hotload-scale-'))
    print(f'Working in {workdir}', flush=True)
    started = time.monotonic()
    results: list[dict] = []
    try:
        for modules in sizes:
            setup = Setup(workdir / f'n{modules}', modules)
            setup.workdir.mkdir(mode=0o700)
            try:
                results.append(measure_size(setup, args))
            finally:
                setup.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = print_figures(results)
    for figures in results:
        if figures.get('reloads'):
            print_reloads(figures['reloads'], figures['modules'])
    checks = targets(results)
    total = time.monotonic() - started
    print(f'\nTotal {total:.0f} s. Table memory: tracemalloc (bytes '
          f'allocated and still live after a fresh provider built its '
          f'table), not RSS.')
    write_results(args.output, {
        'sizes': results, 'table': table, 'targets': checks,
        'settings': {key: value for key, value in vars(args).items()
                     if key != 'output'},
        'python': sys.version, 'cpus': os.cpu_count(),
        'seconds': round(total, 1)})
    return 0 if all(c['pass'] for c in checks) else 1


if __name__ == '__main__':
    sys.exit(main())
