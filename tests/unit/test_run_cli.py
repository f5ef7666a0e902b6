"""``mistral-hotload run``: a hot action run as an executor would, from
the generation a scan published (no daemon, no Mistral, no broker)."""

import json

import pytest

from tests.unit.conftest import GREET
from tests.unit.test_cli import hotload

FAILS = '''
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


class Later(actions.Action):
    def is_sync(self):
        return False

    def run(self, context):
        return None


class Who(actions.Action):
    def run(self, context):
        return {'project': context.security.project_id,
                'workflow': context.execution.workflow_name,
                'token_seen': bool(context.security.auth_token)}
'''
TOKEN = 'gAAAAAB-secret-token'


@pytest.fixture
def conf(tree, scan, tmp_path):
    tree.write('greet.py', GREET)
    tree.write('fails.py', FAILS)
    scan()
    path = tmp_path / 'hotload.conf'
    path.write_text(f'[hotload]\nactions_dir = {tree.root}\n'
                    f'state_dir = {scan.states.state_dir}\n'
                    f'action_prefix = hot\n')
    return str(path)


def run(conf: str, *args: str):
    result = hotload('--config-file', conf, 'run', *args, '-f', 'json')
    return result.returncode, (json.loads(result.stdout)
                               if result.stdout else None), result.stderr


def test_an_action_runs_and_its_result_is_printed(conf):
    code, shown, _ = run(conf, 'hot.greet.greet', '--input',
                         '{"who": "ann"}')
    assert code == 0
    assert shown == {'action': 'hot.greet.greet', 'generation': 1,
                     'result': 'hello ann!'}


@pytest.mark.parametrize('name, error', [
    ('hot.fails.fails', 'the disk is full'),
    ('hot.fails.crashes', 'ZeroDivisionError: division by zero'),
    ('hot.fails.errs', {'code': 42}),
    ('hot.fails.later', 'an asynchronous action completes only when '
                        'Mistral receives its result; run it in a workflow'),
])
def test_an_action_that_fails_exits_1_with_its_error(conf, name, error):
    code, shown, _ = run(conf, name)
    assert code == 1
    assert shown['error'] == error
    assert 'result' not in shown


def test_the_context_reaches_the_action_and_the_token_is_not_printed(
        conf):
    context = {'security': {'project_id': 'p1', 'auth_token': TOKEN},
               'execution': {'workflow_name': 'wf'}}
    result = hotload('--config-file', conf, 'run', 'hot.fails.who',
                     '--context', json.dumps(context))
    assert result.returncode == 0, result.stderr
    assert "'project': 'p1'" in result.stdout or '"project": "p1"' in \
        result.stdout
    assert '"token_seen": true' in result.stdout
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize('args, message', [
    (['hot.nope'], 'hot.nope: no such hot action in generation 1'),
    (['hot.greet.greet', '--input', '[1]'],
     '--input must be a JSON object, not list'),
    (['hot.greet.greet', '--input', '{'], '--input is not JSON'),
    (['hot.greet.greet', '--context', '{"securty": {}}'],
     "--context: unknown keys ['securty']"),
    (['hot.greet.greet', '--input', '{"whom": "ann"}'], 'whom'),
])
def test_what_cannot_be_run_is_named_and_exits_1(conf, args, message):
    code, shown, stderr = run(conf, *args)
    assert code == 1
    assert message in (stderr + json.dumps(shown)), stderr
