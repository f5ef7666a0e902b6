"""Guards reused across the modules of a snapshot (hotload._probe_pool)."""

import os
import signal
import time

from tests.unit.conftest import GREET

# Leaves a mark on a library module that no side-effect check watches
# (plain data): only a fresh process per module keeps it from the next.
MARKS = GREET + '''
import json
json.hotload_mark = getattr(json, 'hotload_mark', 0) + 1
'''
CHECKS = GREET.replace('Greet(', 'Check(') + '''
import json
if hasattr(json, 'hotload_mark'):
    raise RuntimeError('saw the mark of another module')
'''


def test_one_guard_probes_a_snapshot_each_module_in_a_fresh_process(probe):
    sources = {'marks': probe.add('marks', MARKS),
               'checks': probe.add('checks', CHECKS)}
    for name in ('marks', 'checks', 'marks', 'checks'):
        result = probe.probe(name, sources)
        assert result.error is None, result.error
        assert len(result.exports) == 1
    guards = probe._pool.all()
    assert len(guards) == 1
    assert guards[0].probed == 4


def test_a_new_snapshot_gets_a_new_guard(probe):
    sources = {'marks': probe.add('marks', MARKS)}
    probe.probe('marks', sources)
    first = probe._pool.all()
    newer = {**sources, 'checks': probe.add('checks', CHECKS)}
    assert probe.probe('checks', newer).error is None
    second = probe._pool.all()
    assert len(second) == 1
    assert second[0] is not first[0]


def test_a_guard_that_died_idle_is_replaced(probe):
    sources = {'marks': probe.add('marks', MARKS)}
    probe.probe('marks', sources)
    guard, = probe._pool.all()
    os.kill(guard.pid, signal.SIGKILL)
    guard.process.join(5)
    result = probe.probe('marks', sources)
    assert result.error is None, result.error
    assert [g.pid for g in probe._pool.all()] != [guard.pid]


def test_an_idle_guard_exits_when_the_daemon_lets_it_go(probe):
    sources = {'marks': probe.add('marks', MARKS)}
    probe.probe('marks', sources)
    guard, = probe._pool.all()
    probe._pool.close_all()
    guard.process.join(5)
    assert guard.process.exitcode == 0
    assert probe._pool.all() == []


def test_a_cancel_ends_idle_guards(probe):
    sources = {'marks': probe.add('marks', MARKS)}
    probe.probe('marks', sources)
    guard, = probe._pool.all()
    probe.cancel()
    deadline = time.monotonic() + 5
    while guard.process.exitcode is None and time.monotonic() < deadline:
        guard.process.join(0.1)
    assert guard.process.exitcode == -signal.SIGTERM
