"""``mistral-hotload run`` beside a real daemon (no broker, no Mistral):
the curated ``system.exec`` and a file dropped, with the daemon running
and after it stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import wait_for

TOP = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def standalone(tmp_path):
    """The curated actions under a daemon of their own, stopped by PID."""
    os.chmod(tmp_path, 0o755)
    actions = tmp_path / 'actions'
    shutil.copytree(TOP / 'actions', actions,
                    ignore=shutil.ignore_patterns('__pycache__'))
    for directory, _dirs, files in os.walk(actions):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    conf = tmp_path / 'hotload.conf'
    conf.write_text(f'[hotload]\nactions_dir = {actions}\n'
                    f'state_dir = {tmp_path / "state"}\n'
                    f'action_prefix = hotload\n')
    temporary = tmp_path / 'tmp'
    temporary.mkdir()
    with open(tmp_path / 'daemon.log', 'ab') as log:
        daemon = subprocess.Popen(
            [sys.executable, '-c',
             'from hotload.cmd.daemon import main; main()',
             '--config-file', str(conf)], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, 'TMPDIR': str(temporary)})
    try:
        wait_for(lambda: (tmp_path / 'state' / 'manifest.json').exists(),
                 'the first generation')
        yield actions, conf, daemon
    finally:
        stop(daemon)


def stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)


def run(conf: Path, *args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         str(conf), 'run', *args, '-f', 'json'],
        capture_output=True, text=True, timeout=120)
    return result.returncode, (json.loads(result.stdout) if result.stdout
                               else {'stderr': result.stderr})


def test_curated_and_dropped_actions_run_with_and_without_the_daemon(
        standalone):
    actions, conf, daemon = standalone
    code, shown = run(conf, 'hotload.system.exec', '--input',
                      '{"cmd": "echo hot"}')
    assert (code, shown['result']) == (0, 'hot\n')

    (actions / 'shout.py').write_text(DROPPED)
    os.chmod(actions / 'shout.py', 0o644)

    def served():
        code, shown = run(conf, 'hotload.shout.shout', '--input',
                          '{"text": "hi"}')
        return shown if code == 0 else None

    assert wait_for(served, 'the dropped action')['result'] == 'HI!'
    code, shown = run(conf, 'hotload.system.exec', '--input',
                      '{"cmd": "false"}')
    assert code == 1
    assert 'exited with code 1' in shown['error']

    stop(daemon)
    code, shown = run(conf, 'hotload.shout.shout', '--input',
                      '{"text": "still"}')
    assert (code, shown['result']) == (0, 'STILL!')
