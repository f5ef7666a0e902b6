"""What a module does to its process at import is seen, reported, undone.

Module code runs inside Mistral's engine and executor: a module that
patches the interpreter, leaves a thread or a process running, or declares
defaults Mistral cannot carry is refused with its line, and nothing it
started outlives the probe. Cancelling the probe stops everything at once.
"""

import hashlib
import os
import tempfile
import textwrap
import threading
import time

import pytest

from hotload import exceptions
from hotload import loader
from hotload import probe as probe_mod
from tests.polling import process_alive
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.conftest import PACKAGE
from tests.unit.conftest import served

SIDE_EFFECTS = {
    'sys.modules entry': (
        'import sys\nimport types\n\n'
        'sys.modules["json"] = types.ModuleType("json")\n',
        4, "replaces sys.modules['json'] at import"),
    'builtins.open': (
        'import builtins\n\n\nbuiltins.open = lambda *args: None\n',
        4, 'replaces builtins.open'),
    'json.dumps': (
        'import json\n\n\ndef dumps(*args, **kwargs):\n    return "{}"\n\n\n'
        'json.dumps = dumps\n', 8, 'replaces json.dumps'),
    'sys.excepthook': (
        'import sys\nsys.excepthook = print\n', 2, 'sets sys.excepthook'),
    'threading.excepthook': (
        'import threading\nthreading.excepthook = print\n', 2,
        'sets threading.excepthook'),
    'os.environ': (
        'import os\n\nos.environ["HOTLOAD_TEST_FLAG"] = "1"\n', 3,
        "sets os.environ['HOTLOAD_TEST_FLAG']"),
    'signal handler': (
        'import signal\n\n\ndef stop(*args):\n    pass\n\n\n'
        'signal.signal(signal.SIGTERM, stop)\n', 8,
        'sets the SIGTERM handler'),
    'sys.meta_path': (
        'import sys\n\n\nclass Finder:\n    def find_spec(self, *args):\n'
        '        return None\n\n\nsys.meta_path.insert(0, Finder())\n', 9,
        'changes sys.meta_path (Finder added)'),
    'sys.settrace': (
        'import sys\nsys.settrace(lambda *args: None)\n', 2,
        'changes the trace function (sys.settrace)'),
}


@pytest.mark.parametrize('case', sorted(SIDE_EFFECTS))
def test_change_to_interpreter_state_is_reported_with_its_line(
        case, tree, scan):
    content, line, fragment = SIDE_EFFECTS[case]
    tree.write('greet.py', content + GREET)
    error = scan().modules['greet'].error
    assert (error.kind, error.path, error.line) == \
        ('side-effect', 'greet.py', line)
    assert fragment in error.message
    assert "inside Mistral's API, engine and executor" in error.message


def test_change_made_by_an_in_tree_import_names_that_file(tree, scan):
    tree.write('common.py', 'import json\n\nX = 1\njson.loads = str\n')
    tree.write('greet.py', 'from . import common  # noqa\n' + GREET)
    error = scan().modules['greet'].error
    assert (error.kind, error.path, error.line) == \
        ('side-effect', 'common.py', 4)
    assert 'replaces json.loads' in error.message


def test_ordinary_imports_are_not_side_effects(tree, scan):
    tree.write('client.py', textwrap.dedent('''
        import datetime
        import json
        import logging

        import openstack
        import oslo_config.cfg
        import requests
        import six
        import yaml
        from mistral_lib import actions

        LOG = logging.getLogger(__name__)
        STARTED = datetime.datetime.now()
        DEFAULTS = json.loads(json.dumps({"a": [1, 2]}))
        SESSION = requests.Session()
        CONF = oslo_config.cfg.ConfigOpts()
        DOC = yaml.safe_load("a: 1")


        class Servers(actions.Action):
            def run(self, context):
                return openstack.connect
    ''') + GREET)
    found = scan()
    assert found.errors() == []
    assert set(served(found)) == {'hot.client.servers', 'hot.client.greet'}


THREAD = '''
import threading

stop = threading.Event()
worker = threading.Thread(target=stop.wait, args=(600,), daemon={daemon})
worker.start()
'''


def test_non_daemon_thread_left_running_is_reported_not_timed_out(
        tree, scan):
    tree.write('greet.py', THREAD.format(daemon=False) + GREET)
    started = time.monotonic()
    error = scan().modules['greet'].error
    assert (error.kind, error.path, error.line) == ('thread', 'greet.py', 6)
    assert "starts thread 'Thread-1 (wait)' at import" in error.message
    assert 'keeps Mistral processes from exiting' in error.message
    assert time.monotonic() - started < scan.probe.timeout


def test_daemon_thread_left_running_by_action_code_is_reported(tree, scan):
    tree.write('greet.py', THREAD.format(daemon=True) + GREET)
    error = scan().modules['greet'].error
    assert (error.kind, error.line) == ('thread', 6)
    assert 'starts daemon thread' in error.message


def test_thread_finished_at_import_is_fine(tree, scan):
    tree.write('greet.py', THREAD.format(daemon=False)
               + 'stop.set()\nworker.join()\n' + GREET)
    assert scan().modules['greet'].error is None


SPAWNER = '''
import os
import subprocess

session = subprocess.Popen(["sleep", "600"], start_new_session=True)
first = os.fork()
if first == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os.execvp("sleep", ["sleep", "600"])
    open({pids!r} + "/daemon", "w").write(str(daemon))
    os._exit(0)
os.waitpid(first, 0)
open({pids!r} + "/session", "w").write(str(session.pid))
{tail}
'''


def _pids(directory) -> list[int]:
    return [int((directory / name).read_text())
            for name in ('session', 'daemon')]


def test_processes_left_running_are_reported_and_none_outlives_the_probe(
        tree, scan, tmp_path):
    pids = tmp_path / 'pids'
    pids.mkdir()
    tree.write('greet.py', SPAWNER.format(pids=str(pids), tail='') + GREET)
    error = scan().modules['greet'].error
    # Both the new session's process and the double-forked daemon are
    # found, and each is killed before the probe returns.
    session, daemon = _pids(pids)
    assert not process_alive(session) and not process_alive(daemon)
    assert (error.kind, error.path) == ('process', 'greet.py')
    assert error.line in (5, 6)
    assert 'still running when the import ends' in error.message
    assert f'{session} (sleep)' in error.message
    assert f'{daemon} (sleep)' in error.message


def test_processes_of_an_import_that_times_out_are_killed(
        tree, scan, tmp_path):
    pids = tmp_path / 'pids'
    pids.mkdir()
    scan.probe.timeout = 1.0
    tree.write('greet.py', SPAWNER.format(
        pids=str(pids), tail='while True:\n    pass\n'))
    error = scan().modules['greet'].error
    assert error.kind == 'timeout'
    assert error.line in (16, 17)  # the loop, wherever the dump caught it
    session, daemon = _pids(pids)
    assert not process_alive(session) and not process_alive(daemon)


def test_default_that_is_not_json_is_reported_with_its_class(tree, scan):
    tree.write('wait.py', textwrap.dedent('''
        import datetime

        from mistral_lib import actions


        class Wait(actions.Action):
            def __init__(self, when=datetime.timedelta(1), note="x"):
                super().__init__()
                self.when = when

            def run(self, context):
                return None
    '''))
    error = scan().modules['wait'].error
    assert (error.kind, error.path, error.line) == ('export', 'wait.py', 7)
    assert error.message == (
        "class Wait: default of parameter 'when' (datetime.timedelta("
        "days=1)) is not JSON; Mistral passes action input as JSON")


SLEEPER = '''
import os
import subprocess
import time

child = subprocess.Popen(["sleep", "600"], start_new_session=True)
open({pidfile!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep(600)
'''


def test_cancel_stops_probes_in_flight_and_close_leaves_nothing(
        tree, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    blobs = tmp_path / 'blobs'
    sources = {}
    for index in range(3):
        pidfile = str(tmp_path / f'sleeper{index}.pid')
        text = SLEEPER.format(pidfile=pidfile).encode()
        tree.write(f'sleeper{index}.py', text)
        sha = hashlib.sha256(text).hexdigest()
        (blobs / sha[:2]).mkdir(parents=True, exist_ok=True)
        (blobs / sha[:2] / sha).write_bytes(text)
        sources[f'sleeper{index}'] = loader.SourceRef(
            f'sleeper{index}.py', sha, False)
    probe = probe_mod.Probe(tree.root, PACKAGE, str(blobs), timeout=60.0,
                            memory_limit_mb=512)
    outcomes = {}

    def run(name):
        try:
            outcomes[name] = probe.probe(name, sources)
        except exceptions.ScanCancelled as exc:
            outcomes[name] = exc
        outcomes[name, 'at'] = time.monotonic()

    threads = [threading.Thread(target=run, args=(name,))
               for name in sources]
    for thread in threads:
        thread.start()
    pidfiles = [tmp_path / f'{name}.pid' for name in sources]
    wait_for(lambda: all(p.exists() and p.read_text() for p in pidfiles),
             'every module to be importing')
    pids = [int(pid) for p in pidfiles for pid in p.read_text().split()]
    cancelled_at = time.monotonic()
    probe.cancel()
    for thread in threads:
        thread.join(5)
    assert all(isinstance(outcomes[name], exceptions.ScanCancelled)
               for name in sources)
    assert max(outcomes[name, 'at'] for name in sources) - cancelled_at < 1.5
    assert [pid for pid in pids if process_alive(pid)] == []
    with pytest.raises(exceptions.ScanCancelled):
        probe.probe('sleeper0', sources)
    probe.close()
    assert [p for p in os.listdir(tmp_path)
            if p.startswith('hotload-probe-')] == []
