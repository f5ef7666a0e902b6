"""Several modules imported per probe process (Probe.probe_batch), and
scans that use it: the same records as probing each module alone."""

import json

import pytest

from hotload import probe_scheduler
from hotload import store
from tests.unit.conftest import GREET
from tests.unit.conftest import Scan
from tests.unit.test_probe_pool import CHECKS
from tests.unit.test_probe_pool import MARKS


def named(index: int) -> str:
    return GREET.replace('class Greet(', f'class Greet{index}(')


SIDE_EFFECT = GREET + '''
import json
json.dumps = lambda *args, **kwargs: '{}'
'''
THREAD = GREET + '''
import threading
threading.Thread(target=threading.Event().wait, args=(60,),
                 daemon=True).start()
'''
PRINTS = GREET + '''
print('hello from the import')
'''
KILLS = GREET + '''
import os
import signal
os.kill(os.getpid(), signal.SIGKILL)
'''
HANGS = GREET + '''
import time
time.sleep(60)
'''


def test_a_batch_of_clean_modules_gives_what_each_probe_alone_gives(probe):
    sources = {f'm{i}': probe.add(f'm{i}', named(i)) for i in range(5)}
    sources['prints'] = probe.add('prints', PRINTS)
    names = sorted(sources)
    together = probe.probe_batch(names, sources)
    assert list(together) == names
    for name in names:
        alone = probe.probe(name, sources)
        assert together[name] == alone, name
    assert 'hello from the import' in together['prints'].output


@pytest.mark.parametrize('text', [SIDE_EFFECT, THREAD, KILLS, 'def (:\n'],
                         ids=['side effect', 'thread', 'killed', 'syntax'])
def test_a_batch_stops_at_the_first_module_that_is_not_clean(probe, text):
    sources = {'a': probe.add('a', named(1)), 'b': probe.add('b', text),
               'c': probe.add('c', named(3))}
    together = probe.probe_batch(['a', 'b', 'c'], sources)
    # What b did may still be in the process: c is left to a probe alone.
    assert list(together) == ['a']
    assert together['a'].error is None


def test_a_batch_that_runs_out_of_time_gives_nothing(tree, probe):
    probe.timeout = 1.0
    sources = {'a': probe.add('a', named(1)), 'b': probe.add('b', HANGS)}
    assert probe.probe_batch(['a', 'b'], sources) == {}
    # The module alone gets its own report.
    assert probe.probe('b', sources).error.kind == 'timeout'


def test_a_mark_left_by_one_module_sends_the_next_to_a_probe_alone(probe):
    sources = {'marks': probe.add('marks', MARKS),
               'checks': probe.add('checks', CHECKS)}
    together = probe.probe_batch(['marks', 'checks'], sources)
    assert list(together) == ['marks']
    assert probe.probe('checks', sources).error is None


def test_results_of_modules_not_asked_for_are_ignored(probe, monkeypatch):
    sources = {'a': probe.add('a', named(1)), 'b': probe.add('b', named(2))}
    real = probe._run

    def forged(command, encoded):
        report = real(command, encoded)
        with open(command['result_path'], 'r+b') as stream:
            lines = stream.read().splitlines()
            first = json.loads(lines[0])
            first['module'] = 'b'  # a line that names another module
            stream.seek(0)
            stream.truncate()
            stream.write(json.dumps(first).encode() + b'\n' + lines[1])
        return report

    monkeypatch.setattr(probe, '_run', forged)
    assert probe.probe_batch(['a', 'b'], sources) == {}


def mixed_tree(tree) -> None:
    for index in range(20):
        tree.write(f'd{index % 3}/m{index:02d}.py', named(index))
    tree.write('d0/helper.py', 'GREETING = "hello"\n')
    tree.write('d0/uses_helper.py', named(50) + '\nfrom . import helper\n')
    tree.write('d1/side_effect.py', SIDE_EFFECT)
    tree.write('d1/thread.py', THREAD)
    tree.write('d1/prints.py', PRINTS)
    tree.write('d2/broken.py', 'def (:\n')
    tree.write('d2/marks.py', MARKS)
    tree.write('d2/n_checks.py', CHECKS)
    tree.write('pkg/__init__.py', named(99))
    tree.write('pkg/inner.py', named(98) + '\nfrom . import Greet99\n')


def test_a_scan_in_batches_publishes_what_probes_alone_publish(
        tree, scan, tmp_path, monkeypatch):
    mixed_tree(tree)
    batches = []
    real = scan.probe.probe_batch

    def counted(modules, sources):
        batches.append(list(modules))
        return real(modules, sources)

    monkeypatch.setattr(scan.probe, 'probe_batch', counted)
    together = scan()
    assert max(len(batch) for batch in batches) > 1, batches

    monkeypatch.setattr(probe_scheduler, 'BATCH_SIZE', 1)
    batches.clear()
    states = store.ManifestStore(str(tmp_path / 'state-alone'))
    states.ensure()
    alone = Scan(tree, states, scan.probe)()
    assert batches == []
    assert together.modules == alone.modules
    errors = {name: record.error.kind for name, record in
              together.modules.items() if record.error}
    assert errors == {'d1.side_effect': 'side-effect', 'd1.thread': 'thread',
                      'd2.broken': 'syntax'}
    assert together.modules['d2.n_checks'].good is not None
