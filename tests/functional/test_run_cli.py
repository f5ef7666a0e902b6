"""``mistral-hotload run`` beside a real daemon (no broker, no Mistral):
the curated ``system.exec`` and a file dropped, with the daemon running
and after it stopped.

The daemon is a process of its own on a tree of the test's (the curated
actions copied), started as ``benchmarks/scale.py`` starts it and stopped
by PID; nothing here needs the node that the other functional tests
share.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hotload import store
from tests.polling import wait_for

TOP = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Seconds the first generation (every curated module probed) may take.
FIRST_GENERATION = 120.0
DROPPED = '''
from mistral_lib import actions


class Shout(actions.Action):
    """Say it louder."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def run(self, context):
        return self.text.upper() + "!"
'''


def command(script: str, module: str) -> list[str]:
    """The console script of this environment, else its module."""
    path = BIN / script
    return [str(path)] if path.exists() else [sys.executable, '-m', module]


class Standalone:
    """The curated actions under a daemon of their own, with no broker."""

    def __init__(self, top: Path) -> None:
        self.actions = top / 'actions'
        shutil.copytree(TOP / 'actions', self.actions,
                        ignore=shutil.ignore_patterns('__pycache__', '*.md'))
        # The trust rules refuse group- or world-writable files.
        for directory, _dirs, files in os.walk(self.actions):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        self.states = store.ManifestStore(str(top / 'state'))
        self.config_file = top / 'hotload.conf'
        self.config_file.write_text(
            f'[hotload]\nactions_dir = {self.actions}\n'
            f'state_dir = {self.states.state_dir}\naction_prefix = hotload\n')
        self.log_path = top / 'daemon.log'
        self.daemon: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, 'ab') as log:
            self.daemon = subprocess.Popen(
                [*command('mistral-hotload-daemon', 'hotload.cmd.daemon'),
                 '--config-file', str(self.config_file)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for(lambda: self.generation() >= 1, 'generation 1',
                      FIRST_GENERATION)

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            self.daemon.wait(timeout=60)

    def generation(self) -> int:
        current = self.states.load()
        return current.generation if current else 0

    def wait_for(self, predicate, what: str, deadline: float = 30.0):
        """``wait_for``, failing at once, with the log, if the daemon
        died."""
        def alive_and():
            if self.daemon.poll() is not None:
                raise AssertionError(
                    f'the daemon exited with {self.daemon.returncode}:\n'
                    f'{self.log_path.read_text(errors="replace")[-4000:]}')
            return predicate()
        return wait_for(alive_and, what, deadline)

    def run(self, *args: str) -> tuple[int, dict | None, str]:
        """``mistral-hotload run ARGS -f json``: exit status, the record
        (None when nothing was printed), stderr."""
        result = subprocess.run(
            [*command('mistral-hotload', 'hotload.cli.main'),
             '--config-file', str(self.config_file), 'run', *args,
             '-f', 'json'], capture_output=True, text=True, timeout=120)
        return result.returncode, (json.loads(result.stdout)
                                   if result.stdout else None), result.stderr


@pytest.fixture
def standalone(tmp_path):
    os.chmod(tmp_path, 0o755)
    node = Standalone(tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_curated_and_dropped_actions_run_with_and_without_the_daemon(
        standalone):
    code, shown, stderr = standalone.run(
        'hotload.system.exec', '--input', '{"cmd": "echo hot"}')
    assert (code, shown['state'], shown['result']) == (0, 'SUCCESS',
                                                       'hot\n'), stderr
    code, shown, _ = standalone.run('hotload.system.exec', '--input',
                                    '{"cmd": "false"}')
    assert (code, shown['state']) == (1, 'ERROR')
    assert "command 'false' exited with code 1" in shown['error']

    path = standalone.actions / 'shout.py'
    path.write_text(DROPPED)
    os.chmod(path, 0o644)
    # The file counts once the daemon published it: no sooner, whatever
    # is on disk.
    standalone.wait_for(
        lambda: 'shout' in (standalone.states.load().modules or {}),
        'the dropped file to be published')
    code, shown, stderr = standalone.run(
        'hotload.shout.shout', '--input', '{"text": "hi"}')
    assert (code, shown['result']) == (0, 'HI!'), stderr
    served = shown['generation']

    standalone.stop()
    code, shown, stderr = standalone.run(
        'hotload.shout.shout', '--input', '{"text": "still"}')
    assert (code, shown['result'], shown['generation']) == \
        (0, 'STILL!', served), stderr
    code, shown, stderr = standalone.run(
        'hotload.system.exec', '--input', '{"cmd": "exit 3"}')
    assert (code, shown['state']) == (1, 'ERROR'), stderr
    assert "cannot run 'exit'" in shown['error']
