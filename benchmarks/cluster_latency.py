#!/usr/bin/env python3
"""Drop-to-runnable latency on three simulated Mistral nodes, beside one.

Brings up Mistral 23 with tools/mistral_harness.py as node A (API, engine,
executor; ``[DEFAULT] host = node-a``) and mistral-hotload-daemon as its
publisher (with a ``cluster_key``), then:

1. Node A alone, exactly as benchmarks/drop_latency.py measures it (its
   ``measure_drops``), for N drops: file closed -> listed by
   ``GET /v2/actions``; file closed -> a one-task workflow using the
   action first ends in SUCCESS.
2. Adds node B (engine, executor) and node C (executor only, no reachable
   database), each with a mirror daemon (``[hotload] mode = mirror``, the
   same ``cluster_key``, its own state directory), waits until both
   mirrors' ``manifest.json`` has the bytes of A's, and for N more drops
   measures: file closed on A -> listed by the API; file closed on A -> a
   workflow using the action has SUCCEEDED with at least one of its
   actions run by an executor of node C.

Each dropped action returns ``cfg.CONF.host``, the ``[DEFAULT] host`` of
the executor that ran it. RabbitMQ hands actions to the executors of A, B
and C in turn, so the workflow runs the action ``with-items`` over 3 items
(one per executor) and outputs the hosts. A workflow that ends in ERROR
(an engine of B that does not know the action yet, an executor that
lacks its content) or that succeeds without node C is started again at
once; those runs are counted.
Before each drop of part 2, the mirrors are back in step with A (not
timed), so every drop starts from a converged cluster.

Prints a table with the single-node and the cluster figures side by side
and whether the target (p50 under 500 ms to SUCCESS on C) was met, and
writes the figures as JSON.

Usage: benchmarks/cluster_latency.py [--drops 30] [--output F]
Needs RabbitMQ and PostgreSQL (tools/ensure-services).
"""

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP / 'tools'))

import mistral_harness  # noqa: E402
from common import close_file  # noqa: E402
from common import listed  # noqa: E402
from common import percentile  # noqa: E402
from common import print_table  # noqa: E402
from common import start_daemon  # noqa: E402
from common import stop_daemon  # noqa: E402
from common import wait_for  # noqa: E402
from common import write_results  # noqa: E402
from drop_latency import measure_drops  # noqa: E402

PREFIX = 'bench'
NODE_A, NODE_B, NODE_C = 'node-a', 'node-b', 'node-c'
CLUSTER_KEY = 'benchmark-cluster-key-' + os.urandom(16).hex()
#: ``[hotload]`` of nodes B and C, as the functional tests configure them.
MIRROR_HOTLOAD = {
    'mode': 'mirror',
    'cluster_key': CLUSTER_KEY,
    'action_prefix': PREFIX,
    'mirror_check_interval': 30,
    'cluster_timeout': 5,
}
#: Items of the workflow's with-items: one per executor, and RabbitMQ
#: hands them out in turn, so one runs on node C.
ITEMS = 3
TARGET_P50_MS = 500
#: Seconds a mirror may take to copy a generation, and a drop to succeed
#: on C, before the benchmark gives up.
CONVERGE_DEADLINE = 120.0
DROP_DEADLINE = 120.0

WHERE = '''
from mistral_lib import actions
from oslo_config import cfg


class Where{index}(actions.Action):
    """Cluster benchmark action {index}: the node it runs on."""

    def run(self, context):
        return cfg.CONF.host
'''

WORKFLOW = '''
---
version: '2.0'
bench_cluster_{index}:
  output:
    hosts: <% task(call).result %>
  tasks:
    call:
      with-items: item in {items}
      action: {action}
'''


def manifests_in_step(state_dirs: list[Path], daemons: list) -> bool:
    """Every state directory's manifest.json has the same bytes."""
    for daemon in daemons:
        if daemon.poll() is not None:
            raise RuntimeError(f'a daemon exited with {daemon.returncode} '
                               f'(its log: {daemon.log_path})')
    try:
        contents = {(d / 'manifest.json').read_bytes() for d in state_dirs}
    except FileNotFoundError:
        return False
    return len(contents) == 1


#: The floor under the cluster figure: the same workflow with Mistral's own
#: action, which every executor has, on the same three nodes.
BASELINE = '''
---
version: '2.0'
bench_cluster_baseline:
  output:
    hosts: <% task(call).result %>
  tasks:
    call:
      with-items: item in {items}
      action: std.echo output=<% $.item %>
'''


def describe(execution: dict) -> str:
    """Why a run did not count: its state, and its error or hosts."""
    if execution['state'] != 'SUCCESS':
        info = ' '.join((execution.get('state_info') or '').split())
        return f'{execution["state"]}: {info[:300]}'
    hosts = collections.Counter(execution['output'].get('hosts') or [])
    return f'SUCCESS without {NODE_C}: {dict(hosts)}'


def run_until_on(harness, workflow: str, host: str):
    """Start ``workflow`` again and again until it succeeds on ``host``.

    Returns the hosts of the run that counted and the description of
    every run that did not (ERROR, or SUCCESS without ``host``).
    """
    misses = []
    end = time.monotonic() + DROP_DEADLINE
    while True:
        execution = harness.run_workflow(None, workflow, timeout=60)
        hosts = execution['output'].get('hosts') or []
        if execution['state'] == 'SUCCESS' and host in hosts:
            return hosts, misses
        misses.append(describe(execution))
        if time.monotonic() > end:
            raise RuntimeError(
                f'{workflow}: no SUCCESS on {host} in {DROP_DEADLINE:.0f}s '
                f'({len(misses)} runs); last: {misses[-1]}')


def measure_cluster(harness, actions_dir: Path, state_dirs: list[Path],
                    daemons: list, drops: int) -> dict:
    listed_ms, on_c_ms, per_drop = [], [], []
    hosts_seen = collections.Counter()
    for index in range(drops):
        action = f'{PREFIX}.where{index:03d}.where{index}'
        workflow = f'bench_cluster_{index}'
        harness.create_workflows(WORKFLOW.format(
            index=index, action=action, items=list(range(ITEMS))))
        wait_for(lambda: manifests_in_step(state_dirs, daemons),
                 'the mirrors to be in step before the drop',
                 deadline=CONVERGE_DEADLINE)
        closed = close_file(actions_dir, f'where{index:03d}.py',
                            WHERE.format(index=index))
        wait_for(lambda action=action: listed(harness, action), action)
        listed_ms.append((time.monotonic() - closed) * 1000)
        hosts, misses = run_until_on(harness, workflow, NODE_C)
        on_c_ms.append((time.monotonic() - closed) * 1000)
        in_step = manifests_in_step(state_dirs, daemons)
        hosts_seen.update(hosts)
        per_drop.append({'listed_ms': round(listed_ms[-1], 1),
                         'success_on_c_ms': round(on_c_ms[-1], 1),
                         'hosts': hosts, 'runs_not_counted': misses,
                         'mirrors_in_step_at_success': in_step})
        print(f'  drop {index + 1:2d}/{drops}: listed {listed_ms[-1]:7.1f} '
              f'ms, SUCCESS on {NODE_C} {on_c_ms[-1]:7.1f} ms, '
              f'{len(misses)} run(s) again, mirrors '
              f'{"in step" if in_step else "behind"}', flush=True)
        for miss in misses:
            print(f'      again: {miss}', flush=True)
    return {'listed_ms': listed_ms, 'on_c_ms': on_c_ms,
            'per_drop': per_drop, 'hosts': dict(hosts_seen)}


def add_mirror_node(harness, stack, workdir: Path, name: str,
                    servers: tuple[str, ...], **options):
    """Node ``name`` of the session and its mirror daemon, both started."""
    node = harness.add_node(name, servers, workdir=workdir / name,
                            hotload=MIRROR_HOTLOAD, **options)
    stack.callback(node.stop)
    daemon = start_daemon(harness, node.config_file,
                          node.workdir / 'daemon.log')
    daemon.log_path = node.workdir / 'daemon.log'
    stack.callback(stop_daemon, daemon)
    return node, daemon


def run(args, workdir: Path) -> dict:
    actions_dir = workdir / 'actions'
    actions_dir.mkdir(mode=0o755)
    state_a = workdir / 'state'
    harness = mistral_harness.MistralHarness(
        mistral_harness.default_venv(), workdir / 'mistral',
        extra_config={
            'DEFAULT': {'host': NODE_A},
            'engine': {'host': NODE_A},
            'executor': {'host': NODE_A},
            'hotload': {'actions_dir': str(actions_dir),
                        'state_dir': str(state_a),
                        'action_prefix': PREFIX,
                        'cluster_key': CLUSTER_KEY}})
    with harness, contextlib.ExitStack() as stack:
        publisher = start_daemon(harness, harness.config_file,
                                 workdir / 'daemon-a.log')
        publisher.log_path = workdir / 'daemon-a.log'
        stack.callback(stop_daemon, publisher)
        wait_for(lambda: manifests_in_step([state_a], [publisher]),
                 'the publisher\'s first scan')
        print(f'Node A alone: dropping {args.drops} modules ...', flush=True)
        single_listed, single_runnable = measure_drops(
            harness, actions_dir, PREFIX, args.drops)

        print(f'Adding {NODE_B} (engine, executor) and {NODE_C} '
              f'(executor, no database) with mirror daemons ...',
              flush=True)
        node_b, mirror_b = add_mirror_node(harness, stack, workdir, NODE_B,
                                           ('engine', 'executor'))
        node_c, mirror_c = add_mirror_node(harness, stack, workdir, NODE_C,
                                           ('executor',), database=False)
        state_dirs = [state_a, node_b.state_dir, node_c.state_dir]
        daemons = [publisher, mirror_b, mirror_c]
        started = time.monotonic()
        wait_for(lambda: manifests_in_step(state_dirs, daemons),
                 'the mirrors to copy the publisher',
                 deadline=CONVERGE_DEADLINE)
        print(f'Mirrors in step with the publisher '
              f'{time.monotonic() - started:.1f}s after their start; '
              f'dropping {args.drops} modules on A ...', flush=True)
        cluster = measure_cluster(harness, actions_dir, state_dirs, daemons,
                                  args.drops)
        harness.create_workflows(BASELINE.format(items=list(range(ITEMS))))
        baseline = []
        for _ in range(args.drops):
            started = time.monotonic()
            execution = harness.run_workflow(None, 'bench_cluster_baseline',
                                             timeout=60)
            if execution['state'] != 'SUCCESS':
                raise RuntimeError(f'baseline: {describe(execution)}')
            baseline.append((time.monotonic() - started) * 1000)
        # What an operator sees on node B once it is over.
        status = subprocess.run(
            [str(harness.bin_dir / 'mistral-hotload'), '--config-file',
             str(node_b.config_file), 'status', '--cluster'],
            capture_output=True, text=True, timeout=60)
        print(f'\n$ mistral-hotload status --cluster   (on {NODE_B}; exit '
              f'{status.returncode})\n{status.stdout}{status.stderr}',
              flush=True)
    return {'single_listed': single_listed,
            'single_runnable': single_runnable, 'baseline': baseline,
            'status_cluster': status.stdout,
            'status_cluster_exit': status.returncode, **cluster}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--drops', type=int, default=30,
                        help='Modules dropped in each part (30).')
    parser.add_argument('--output', default=str(
        TOP / 'benchmarks' / 'results' / 'cluster_latency.json'),
        help='Where to write the JSON results.')
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: every daemon and node is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + 15))

    workdir = Path(tempfile.mkdtemp(prefix='hotload-cluster-bench-'))
    os.chmod(workdir, 0o755)  # noqa: S103 - Mistral's users read it
    try:
        figures = run(args, workdir)
    except KeyboardInterrupt:
        print(f'Interrupted; everything it started is stopped (logs in '
              f'{workdir}).', file=sys.stderr)
        return 130

    rows = [
        ('node A alone: closed -> listed by GET /v2/actions',
         figures['single_listed']),
        ('3 nodes: closed on A -> listed by GET /v2/actions',
         figures['listed_ms']),
        ('node A alone: closed -> workflow SUCCESS',
         figures['single_runnable']),
        (f'3 nodes: closed on A -> workflow SUCCESS on {NODE_C}',
         figures['on_c_ms']),
        ('3 nodes: the same workflow of std.echo (baseline)',
         figures['baseline']),
    ]
    results = print_table(rows)
    misses = [m for d in figures['per_drop'] for m in d['runs_not_counted']]
    errors = sum(not m.startswith('SUCCESS') for m in misses)
    behind = sum(not d['mirrors_in_step_at_success']
                 for d in figures['per_drop'])
    print(f'\nWorkflows started again: {errors} ended in ERROR, '
          f'{len(misses) - errors} succeeded without {NODE_C}; mirrors '
          f'behind A at SUCCESS on {NODE_C}: {behind} of {args.drops} '
          f'drops. Items per executor host: {figures["hosts"]}')
    p50 = percentile(figures['on_c_ms'], 0.5)
    met = p50 < TARGET_P50_MS
    print(f'Target: p50 under {TARGET_P50_MS} ms from file closed on A to '
          f'SUCCESS on {NODE_C}: {"met" if met else "NOT met"} '
          f'(p50 {p50:.1f} ms)')
    results['cluster'] = {
        'items_per_workflow': ITEMS,
        'runs_again_error': errors,
        'runs_again_without_node_c': len(misses) - errors,
        'drops_with_mirrors_behind_at_success': behind,
        'items_per_host': figures['hosts'],
        'status_cluster_exit': figures['status_cluster_exit'],
        'status_cluster': figures['status_cluster'],
        'per_drop': figures['per_drop'],
        'workdir': str(workdir),
    }
    results['targets'] = {'success_on_c_p50_ms': TARGET_P50_MS,
                          'met': met}
    write_results(args.output, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
