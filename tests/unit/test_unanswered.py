"""Mistral processes of this node that did not answer status
(hotload.cli.unanswered), found in the real /proc."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from hotload.cli import columns
from hotload.cli import unanswered
from tests.polling import wait_for

HOST = 'node-x'


def started(process: subprocess.Popen, program) -> subprocess.Popen:
    """``process`` once it runs ``program``: until its exec, /proc shows
    the command line of the test's own interpreter."""
    def execed() -> bool:
        with open(f'/proc/{process.pid}/cmdline', 'rb') as stream:
            return str(program).encode() in stream.read()

    wait_for(execed, f'{program} to start')
    return process


@pytest.fixture
def engine(tmp_path):
    """A process whose command line is a mistral-server engine's."""
    program = tmp_path / 'mistral-server'
    program.write_text('import sys, time\ntime.sleep(60)\n')
    process = started(subprocess.Popen(
        [sys.executable, str(program), '--server', 'engine',
         '--config-file', 'x.conf']), program)
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize('argv, expected', [
    (['/usr/bin/python3', '/usr/bin/mistral-server', '--server', 'engine'],
     'engine'),
    (['/venv/bin/mistral-server', '--server=api,executor'], 'api,executor'),
    (['mistral-server', '--config-file', 'm.conf'], 'all'),
    (['/usr/bin/python3', '-m', 'mistral_hotload'], None),
    (['/usr/bin/vim', 'mistral-server'], None),
])
def test_the_services_of_a_command_line(argv, expected):
    assert unanswered.services(argv) == expected


def test_an_engine_that_did_not_answer_is_listed_with_why(engine):
    rows = unanswered.unanswered([], HOST)
    row, = [r for r in rows if r['pid'] == engine.pid]
    assert row['state'] == 'not answered'
    assert row['service'] == 'engine'
    assert 'first action lookup' in row['why']
    text = columns.ProcessesColumn([row]).human_readable()
    assert text == (f'engine pid {engine.pid} on {HOST}: not answered; '
                    f"Mistral's engine loads action providers at its first "
                    f'action lookup (its first workflow)')


def test_an_engine_that_answered_is_not_listed_again(engine):
    answered = [{'host': HOST, 'pid': engine.pid, 'service': 'engine'}]
    assert engine.pid not in [r['pid'] for r in
                              unanswered.unanswered(answered, HOST)]
    # The same PID on another node is another process.
    elsewhere = [dict(answered[0], host='node-y')]
    assert engine.pid in [r['pid'] for r in
                          unanswered.unanswered(elsewhere, HOST)]


def test_a_parent_whose_worker_answered_is_not_listed(tmp_path):
    program = tmp_path / 'mistral-server'
    program.write_text(
        'import subprocess, sys, time\n'
        'child = subprocess.Popen([sys.executable, "-c", '
        '"import time; time.sleep(60)"])\n'
        'print(child.pid, flush=True)\n'
        'time.sleep(60)\n')
    parent = started(subprocess.Popen(
        [sys.executable, str(program), '--server', 'api'],
        stdout=subprocess.PIPE, text=True), program)
    try:
        worker = int(parent.stdout.readline())
        answered = [{'host': HOST, 'pid': worker, 'service': 'api'}]
        pids = [r['pid'] for r in unanswered.unanswered(answered, HOST)]
        assert parent.pid not in pids
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_a_process_of_another_node_on_this_machine_is_not_listed(tmp_path):
    # Simulated nodes share one machine: each names its host in its file.
    conf = tmp_path / 'node-y.conf'
    conf.write_text('[DEFAULT]\nhost = node-y\n[hotload]\nx = 1\n')
    program = tmp_path / 'mistral-server'
    program.write_text('import time\ntime.sleep(60)\n')
    other = started(subprocess.Popen(
        [sys.executable, str(program), '--server', 'engine',
         '--config-file', str(conf)]), program)
    try:
        assert other.pid not in [r['pid'] for r in
                                 unanswered.unanswered([], HOST)]
        assert other.pid in [r['pid'] for r in
                             unanswered.unanswered([], 'node-y')]
    finally:
        other.kill()
        other.wait()
