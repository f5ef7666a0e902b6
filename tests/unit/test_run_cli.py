"""``mistral-hotload run``: a hot action run as an executor would, from
the generation a scan published (no daemon, no Mistral, no broker)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mistral_lib.actions import context as ml_context

from hotload.cli import run as run_mod
from tests.unit.conftest import GREET

TOP = Path(__file__).resolve().parents[2]
TOKEN = 'gAAAAAB-secret-token'
GREET_V2 = GREET.replace('"hello "', '"good morning "')
ACTIONS = '''
import datetime
import signal

from mistral_lib import actions
from mistral_lib import exceptions


class Fails(actions.Action):
    def run(self, context):
        raise exceptions.ActionException('the disk is full')


class Crashes(actions.Action):
    def run(self, context):
        return 1 / 0


class Errs(actions.Action):
    def run(self, context):
        return actions.Result(error={'code': 42})


class Cancels(actions.Action):
    def run(self, context):
        return actions.Result(cancel=True)


class Exits(actions.Action):
    def run(self, context):
        raise SystemExit(3)


class Later(actions.Action):
    def is_sync(self):
        return False

    def run(self, context):
        raise AssertionError('an asynchronous action must not be run')


class Refuses(actions.Action):
    def __init__(self, size):
        super().__init__()
        if size > 10:
            raise ValueError('size must be at most 10')
        self.size = size

    def run(self, context):
        return self.size


class Holds(actions.Action):
    def __init__(self):
        super().__init__()
        self.lock = __import__('threading').Lock()

    def run(self, context):
        return 'never'


class Unsendable(actions.Action):
    def run(self, context):
        return object()


class Dated(actions.Action):
    def run(self, context):
        return {'at': datetime.datetime(2026, 1, 2, 3, 4, 5),
                'pair': (1, 2)}


class Chatty(actions.Action):
    def run(self, context):
        print('working on it')
        return 'done'


class Trapped(actions.Action):
    def run(self, context):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return 'main thread'


class Who(actions.Action):
    def run(self, context):
        return {'project': context.security.project_id,
                'workflow': context.execution.workflow_name,
                'token_seen': context.security.auth_token == TOKEN}
'''.replace(
    'TOKEN', repr(TOKEN))


@pytest.fixture
def conf(tree, scan, tmp_path):
    """A configuration over a published generation of greet.py, the
    test actions above and the curated system.py."""
    tree.write('greet.py', GREET)
    tree.write('acts.py', ACTIONS)
    tree.write('system.py', (TOP / 'actions' / 'system.py').read_bytes())
    scan()
    return _conf(tmp_path, tree.root, scan.states.state_dir)


def _conf(tmp_path, actions_dir: str, state_dir: str) -> str:
    path = tmp_path / 'hotload.conf'
    path.write_text(f'[hotload]\nactions_dir = {actions_dir}\n'
                    f'state_dir = {state_dir}\naction_prefix = hot\n')
    return str(path)


def hotload(conf: str, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file', conf,
         'run', *args], input=stdin, capture_output=True, text=True,
        timeout=120)


def run(conf: str, *args: str) -> tuple[int, dict | None, str]:
    """Exit status, the -f json record (None when nothing was printed),
    stderr."""
    result = hotload(conf, *args, '-f', 'json')
    return result.returncode, (json.loads(result.stdout)
                               if result.stdout else None), result.stderr


def test_an_action_runs_and_its_result_is_printed(conf, scan):
    code, shown, stderr = run(conf, 'hot.greet.greet', '--input',
                              '{"who": "ann"}')
    assert code == 0, stderr
    key = scan.states.load().modules['greet'].good.content_key
    assert shown == {'action': 'hot.greet.greet', 'generation': 1,
                     'content_key': key, 'state': 'SUCCESS',
                     'result': 'hello ann!', 'error': None}
    # The provider's own log lines are for Mistral's logs.
    assert stderr == ''


def test_the_curated_system_exec_runs_and_its_failure_exits_1(conf):
    code, shown, stderr = run(conf, 'hot.system.exec', '--input',
                              '{"cmd": "echo hot"}')
    assert (code, shown['result']) == (0, 'hot\n'), stderr
    code, shown, _ = run(conf, 'hot.system.exec', '--input',
                         '{"cmd": "false"}')
    assert (code, shown['state'], shown['result']) == (1, 'ERROR', None)
    assert "command 'false' exited with code 1" in shown['error']


def test_the_version_published_runs_not_the_file_on_disk(conf, tree,
                                                         scan):
    tree.write('greet.py', GREET_V2)
    code, shown, _ = run(conf, 'hot.greet.greet', '--input',
                         '{"who": "bo"}')
    assert (code, shown['result'], shown['generation']) == \
        (0, 'hello bo!', 1)
    scan()
    code, shown, _ = run(conf, 'hot.greet.greet', '--input',
                         '{"who": "bo"}')
    assert (code, shown['result'], shown['generation']) == \
        (0, 'good morning bo!', 2)


@pytest.mark.parametrize('name, state, error', [
    ('hot.acts.fails', 'ERROR', 'the disk is full'),
    ('hot.acts.crashes', 'ERROR', 'ZeroDivisionError: division by zero'),
    ('hot.acts.errs', 'ERROR', {'code': 42}),
    ('hot.acts.cancels', 'CANCELLED', None),
    ('hot.acts.exits', 'ERROR', 'SystemExit: 3'),
    ('hot.acts.unsendable', 'ERROR',
     "the result cannot be sent to Mistral's engine (ValueError: Cannot "
     "convert <object object"),
    # The executor runs an action in a thread of its own.
    ('hot.acts.trapped', 'ERROR', 'ValueError: signal only works in main '
                                  'thread'),
])
def test_an_action_that_fails_exits_1_with_its_error(conf, name, state,
                                                     error):
    code, shown, _ = run(conf, name)
    assert (code, shown['state'], shown['result']) == (1, state, None)
    if isinstance(error, str):
        assert shown['error'].startswith(error)
    else:
        assert shown['error'] == error


def test_the_result_is_what_the_engine_would_receive(conf):
    code, shown, _ = run(conf, 'hot.acts.dated')
    assert code == 0
    assert shown['result'] == {'at': '2026-01-02T03:04:05.000000',
                               'pair': [1, 2]}


def test_what_an_action_prints_goes_to_stderr(conf):
    code, shown, stderr = run(conf, 'hot.acts.chatty')
    assert (code, shown['result']) == (0, 'done')
    assert 'working on it' in stderr


def test_a_traceback_is_shown_with_verbose(conf):
    result = hotload(conf, 'hot.acts.crashes', '-v')
    assert result.returncode == 1
    assert 'Traceback' in result.stderr
    assert 'return 1 / 0' in result.stderr
    assert 'Traceback' not in hotload(conf, 'hot.acts.crashes').stderr


def test_value_format_prints_a_structure_as_json(conf):
    result = hotload(conf, 'hot.acts.dated', '-f', 'value', '-c', 'result')
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        'at': '2026-01-02T03:04:05.000000', 'pair': [1, 2]}
    table = hotload(conf, 'hot.greet.greet', '--input', '{"who": "cy"}')
    assert 'hello cy!' in table.stdout and 'SUCCESS' in table.stdout


def test_the_context_reaches_the_action_and_the_token_is_not_printed(
        conf, tmp_path):
    context = {'security': {'project_id': 'p1', 'auth_token': TOKEN},
               'execution': {'workflow_name': 'wf'}}
    expected = {'project': 'p1', 'workflow': 'wf', 'token_seen': True}
    code, shown, stderr = run(conf, 'hot.acts.who', '--context',
                              json.dumps(context))
    assert (code, shown['result']) == (0, expected), stderr
    assert TOKEN not in json.dumps(shown) + stderr
    # From a file and from stdin: off the command line.
    path = tmp_path / 'context.json'
    path.write_text(json.dumps(context))
    code, shown, _ = run(conf, 'hot.acts.who', '--context', f'@{path}')
    assert (code, shown['result']) == (0, expected)
    result = hotload(conf, 'hot.acts.who', '--context', '@-', '-f', 'json',
                     stdin=json.dumps(context))
    assert json.loads(result.stdout)['result'] == expected


@pytest.mark.parametrize('args, message', [
    (['--input', '[1]'],
     'argument --input: a JSON object is needed, not a list'),
    (['--input', '{'], 'argument --input: invalid JSON: Expecting'),
    (['--input', '@/nonexistent.json'],
     'argument --input: cannot read /nonexistent.json: [Errno 2]'),
    (['--context', '{"securty": {}}'],
     "argument --context: unknown keys ['securty']; expected ['execution', "
     "'security']"),
    (['--context', json.dumps({'security': {'token': TOKEN}})],
     "argument --context: unknown \"security\" keys ['token']; expected "
     "some of ["),
    (['--context', json.dumps({'security': {'auth_token': TOKEN}})[:-2]],
     "argument --context: invalid JSON: Expecting ',' delimiter: line 1"),
])
def test_a_bad_input_or_context_is_a_usage_error(conf, args, message):
    result = hotload(conf, 'hot.greet.greet', *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert TOKEN not in result.stderr and result.stdout == ''


@pytest.mark.parametrize('args, message', [
    (['hot.greet.gret'], 'hot.greet.gret: no such hot action in generation '
                         '1 of {state}; did you mean hot.greet.greet?; '
                         '"mistral-hotload action list" lists those served'),
    (['hot.greet.greet', '--input', '{"whom": "ann"}'],
     "Invalid input [name=hot.greet.greet, class=hotload_actions.greet."
     "Greet, missing=['who'], unexpected=['whom']]"),
    (['hot.acts.refuses', '--input', '{"size": 11}'],
     'hot.acts.refuses cannot be instantiated (the engine would fail the '
     'task): ValueError: size must be at most 10'),
    (['hot.acts.later'], 'hot.acts.later is asynchronous: it completes only '
                         'when Mistral receives its result'),
    (['hot.acts.holds'], 'hot.acts.holds: the state its __init__ made '
                         'cannot be sent to an executor (ValueError: '
                         'Cannot convert <unlocked _thread.lock'),
])
def test_what_cannot_be_run_exits_1_with_the_reason(conf, scan, args,
                                                    message):
    result = hotload(conf, *args, '-f', 'json')
    assert result.returncode == 1
    assert result.stdout == ''
    assert message.format(state=scan.states.state_dir) in result.stderr


def test_a_disabled_action_says_so(conf, scan):
    scan.states.set_disabled({'hot.greet.greet'})
    scan()
    result = hotload(conf, 'hot.greet.greet', '--input', '{"who": "x"}')
    assert result.returncode == 1
    assert (f'hot.greet.greet is disabled in generation 2 of '
            f'{scan.states.state_dir}; "mistral-hotload enable '
            f'hot.greet.greet" serves it again') in result.stderr


def test_nothing_published_says_so(tmp_path, tree):
    state_dir = tmp_path / 'empty'
    state_dir.mkdir(mode=0o755)
    result = hotload(_conf(tmp_path, tree.root, str(state_dir)),
                     'hot.greet.greet')
    assert result.returncode == 1
    assert f'nothing is published in {state_dir} yet' in result.stderr


def test_an_untrusted_manifest_is_named(conf, scan):
    os.chmod(scan.states.current_path, 0o666)
    result = hotload(conf, 'hot.greet.greet', '--input', '{"who": "x"}')
    assert result.returncode == 1
    assert (f'no hot action generation can be read from '
            f'{scan.states.state_dir}: {scan.states.current_path} is not '
            f'trusted') in result.stderr


def test_context_keys_follow_mistral_lib():
    assert 'auth_token' in run_mod.context_keys(ml_context.SecurityContext)
    assert 'workflow_execution_id' in run_mod.context_keys(
        ml_context.ExecutionContext)
    context = run_mod.action_context({})
    assert context.security.auth_token is None
    assert context.execution.workflow_name is None
    with pytest.raises(argparse.ArgumentTypeError, match='"execution" must'):
        run_mod.action_context({'execution': [1]})


@pytest.mark.parametrize('value, structured, human, machine', [
    ('text\n', False, 'text', 'text'),
    ('text\n', True, 'text', 'text\n'),
    (None, True, '', None),
    ({'b': 1, 'a': [1]}, True, '{\n  "a": [\n    1\n  ],\n  "b": 1\n}',
     {'b': 1, 'a': [1]}),
    ({'a': 1}, False, '{\n  "a": 1\n}', '{\n  "a": 1\n}'),
])
def test_result_column(value, structured, human, machine):
    column = run_mod.ResultColumn(value, structured)
    assert (column.human_readable(), column.machine_readable()) == \
        (human, machine)


def test_json_object_from_a_file_names_the_file_not_the_text(tmp_path):
    path = tmp_path / 'context.json'
    path.write_text(json.dumps({'security': {'auth_token': TOKEN}})[:-2])
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        run_mod.json_object(f'@{path}')
    assert str(caught.value).startswith(f'invalid JSON in {path}: ')
    assert TOKEN not in str(caught.value)
    path.write_text('[]')
    with pytest.raises(argparse.ArgumentTypeError,
                       match='a JSON object is needed in .*, not a list'):
        run_mod.json_object(f'@{path}')
    path.write_text('{"security": {"project_id": "p"}}')
    assert run_mod.context_option(f'@{path}').security.project_id == 'p'
