#!/usr/bin/env python3
"""Drop-to-runnable latency against a real Mistral, beside a restart.

Brings up Mistral 23 with tools/mistral_harness.py (this project installed
in its virtualenv) and mistral-hotload-daemon on the same mistral.conf,
then, for each of N drops:

* ``listed``: from the moment a new module is closed in the watched
  directory (written to a temporary name and renamed, as an editor or a
  deployment tool does) until ``GET /v2/actions?name=...`` lists it;
* ``runnable``: from the same moment until a workflow using the action
  first ends in SUCCESS; beside it, the time a workflow of Mistral's own
  ``std.noop`` takes, the floor under that figure.

In the same run, the way users get new actions without mistral-hotload:
stop the engine and executor, start them again, and time until a workflow
succeeds (``restart``). Prints a table and writes the figures as JSON.

Usage: benchmarks/drop_latency.py [--drops 30] [--restarts 3] [--output F]
Needs RabbitMQ and PostgreSQL (tools/ensure-services).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / 'tools'))

import mistral_harness  # noqa: E402
from common import close_file  # noqa: E402
from common import listed  # noqa: E402
from common import print_table  # noqa: E402
from common import start_daemon  # noqa: E402
from common import stop_daemon  # noqa: E402
from common import wait_for  # noqa: E402
from common import write_results  # noqa: E402

MODULE = '''
from mistral_lib import actions


class Probe{index}(actions.Action):
    """Benchmark action {index}."""

    def run(self, context):
        return {index}
'''

WORKFLOW = '''
---
version: '2.0'
bench_{index}:
  tasks:
    call:
      action: {action}
'''


def run_until_success(harness, workflow: str) -> None:
    while True:
        execution = harness.run_workflow(None, workflow, timeout=60)
        if execution['state'] == 'SUCCESS':
            return


def drop(actions_dir: Path, index: int) -> float:
    """Write module ``index``; the time it was closed in the directory."""
    return close_file(actions_dir, f'bench{index:03d}.py',
                      MODULE.format(index=index))


def measure_drops(harness, actions_dir: Path, prefix: str, drops: int):
    listed_ms, runnable_ms = [], []
    for index in range(drops):
        action = f'{prefix}.bench{index:03d}.probe{index}'
        workflow = f'bench_{index}'
        harness.create_workflows(WORKFLOW.format(index=index, action=action))
        closed = drop(actions_dir, index)
        wait_for(lambda action=action: listed(harness, action), action)
        listed_ms.append((time.monotonic() - closed) * 1000)
        run_until_success(harness, workflow)
        runnable_ms.append((time.monotonic() - closed) * 1000)
        print(f'  drop {index + 1:2d}/{drops}: listed {listed_ms[-1]:7.1f} '
              f'ms, runnable {runnable_ms[-1]:7.1f} ms', flush=True)
    return listed_ms, runnable_ms


def measure_noop(harness, runs: int) -> list[float]:
    """A workflow of Mistral's own std.noop: the floor under ``runnable``."""
    noop_ms = []
    for _ in range(runs):
        started = time.monotonic()
        run_until_success(harness, 'bench_noop')
        noop_ms.append((time.monotonic() - started) * 1000)
    return noop_ms


def measure_restarts(harness, restarts: int) -> list[float]:
    restart_ms = []
    for attempt in range(restarts):
        started = time.monotonic()
        harness.restart(('engine', 'executor'))
        run_until_success(harness, 'bench_noop')
        restart_ms.append((time.monotonic() - started) * 1000)
        print(f'  restart {attempt + 1}/{restarts}: '
              f'{restart_ms[-1]:7.1f} ms', flush=True)
    return restart_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--drops', type=int, default=30,
                        help='Modules dropped one after the other (30).')
    parser.add_argument('--restarts', type=int, default=3,
                        help='Engine+executor restarts timed (3).')
    parser.add_argument('--output', default=str(
        TOP / 'benchmarks' / 'results' / 'drop_latency.json'),
        help='Where to write the JSON results.')
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix='hotload-bench-'))
    os.chmod(workdir, 0o755)  # noqa: S103 - Mistral's users read it
    actions_dir = workdir / 'actions'
    actions_dir.mkdir(mode=0o755)
    prefix = 'bench'
    harness = mistral_harness.MistralHarness(
        mistral_harness.default_venv(), workdir / 'mistral',
        extra_config={'hotload': {'actions_dir': str(actions_dir),
                                  'state_dir': str(workdir / 'state'),
                                  'action_prefix': prefix}})
    daemon = None
    with harness:
        try:
            daemon = start_daemon(harness, harness.config_file,
                                  workdir / 'daemon.log')
            status = workdir / 'state' / 'daemon.json'
            wait_for(status.exists, 'the daemon\'s first scan')
            print(f'Dropping {args.drops} modules ...', flush=True)
            listed_ms, runnable_ms = measure_drops(
                harness, actions_dir, prefix, args.drops)
            harness.create_workflows(WORKFLOW.format(index='noop',
                                                     action='std.noop'))
            noop_ms = measure_noop(harness, args.drops)
            print(f'Restarting engine and executor {args.restarts} '
                  f'times ...', flush=True)
            restart_ms = measure_restarts(harness, args.restarts)
        finally:
            if daemon is not None:
                stop_daemon(daemon)

    rows = [('file closed -> listed by GET /v2/actions', listed_ms),
            ('file closed -> workflow SUCCESS', runnable_ms),
            ('std.noop workflow alone (baseline)', noop_ms),
            ('restart engine+executor -> workflow SUCCESS', restart_ms)]
    results = print_table(rows)
    ratio = statistics.median(restart_ms) / statistics.median(runnable_ms)
    print(f'\nA restart takes {ratio:.0f}x the drop-to-runnable median.')
    results['restart_over_runnable_median'] = round(ratio, 1)
    results['targets'] = {'listed_p50_ms': 150, 'listed_p95_ms': 500}
    write_results(args.output, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
