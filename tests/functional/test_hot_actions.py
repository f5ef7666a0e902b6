"""Hot actions in a real Mistral, driven as an operator would.

Each test drops, edits or breaks modules in the watched directory and
checks what Mistral's REST API (through python-mistralclient) lists and
what its workflows return. The autouse fixture in conftest.py checks after
every test that the API, engine and executor processes are the same ones.
"""

import json
import signal
import textwrap

from tests.functional.conftest import wait_for

GREET = textwrap.dedent('''
    from mistral_lib import actions


    class Greet(actions.Action):
        """Greet someone."""

        def __init__(self, who):
            super().__init__()
            self.who = who

        def run(self, context):
            return "{greeting} " + self.who
''')


def workflow(name: str, action: str, inputs: list[str]) -> str:
    """A one-task workflow that outputs the action's result as ``said``."""
    arguments = ' '.join(f'{i}=<% $.{i} %>' for i in inputs)
    declared = f'input: {json.dumps(inputs)}' if inputs else ''
    return textwrap.dedent(f'''
        ---
        version: '2.0'
        {name}:
          {declared}
          tasks:
            call:
              action: {action} {arguments}
              publish:
                said: <% task().result %>
          output:
            said: <% $.said %>
    ''')


def said(execution) -> str:
    assert execution.state == 'SUCCESS', execution.state_info
    return json.loads(execution.output)['said']


def test_dropped_edited_and_deleted_module(node):
    node.client.workflows.create(
        workflow('greet_wf', 'hot.greet.greet', ['who']))
    node.write('greet.py', GREET.format(greeting='hello'))
    node.wait_listed('hot.greet.greet')
    action = node.client.actions.get('hot.greet.greet')
    assert action.input == 'who'
    assert action.description == 'Greet someone.'
    assert said(node.run('greet_wf', who='ann')) == 'hello ann'

    generation = node.daemon.generation()
    node.write('greet.py', GREET.format(greeting='bonjour'))
    wait_for(lambda: node.daemon.generation() > generation, 'the edit')
    assert said(node.run('greet_wf', who='ann')) == 'bonjour ann'

    (node.actions_dir / 'greet.py').unlink()
    node.wait_unlisted('hot.greet.greet')
    failed = node.run('greet_wf', who='ann')
    assert failed.state == 'ERROR'
    assert 'Failed to find action' in failed.state_info


def test_syntax_error_keeps_the_previous_version_serving(node):
    node.client.workflows.create(
        workflow('stable_wf', 'hot.stable.greet', ['who']))
    node.write('stable.py', GREET.format(greeting='still'))
    node.wait_listed('hot.stable.greet')
    assert said(node.run('stable_wf', who='here')) == 'still here'

    node.write('stable.py', GREET.format(greeting='broken') + '\ndef (:\n')
    status = wait_for(
        lambda: [e for e in json.loads(
            node.hotload('status', '-f', 'json').stdout)['errors']
            if e.startswith('stable.py:')],
        'the error in mistral-hotload status')
    line = len(GREET.format(greeting='broken').splitlines()) + 2
    assert status[0].startswith(f'stable.py:{line}: syntax: ')
    result = node.hotload('status')
    assert result.returncode == 1, result.stdout + result.stderr
    # GET /v2/actions keeps answering, and executions keep the old code.
    assert 'hot.stable.greet' in node.listed()
    assert said(node.run('stable_wf', who='here')) == 'still here'


def test_changed_shared_module_reaches_its_importer(node):
    node.write('lib/__init__.py', '')
    node.write('lib/common.py', 'WORD = "alpha"\n')
    node.write('lib/use.py', textwrap.dedent('''
        from mistral_lib import actions

        from . import common


        class Word(actions.Action):
            """Say the shared word."""

            def run(self, context):
                return common.WORD
    '''))
    node.client.workflows.create(workflow('word_wf', 'hot.lib.use.word',
                                          []))
    node.wait_listed('hot.lib.use.word')
    assert said(node.run('word_wf')) == 'alpha'
    node.write('lib/common.py', 'WORD = "beta"\n')
    wait_for(lambda: said(node.run('word_wf')) == 'beta',
             'the importer to use the new common.py')


SLOW = textwrap.dedent('''
    import os
    import time

    from mistral_lib import actions

    VERSION = "{version}"


    class Hold(actions.Action):
        """Run until the test lets go, then say the version."""

        def __init__(self, started, release):
            super().__init__()
            self.started = started
            self.release = release

        def run(self, context):
            open(self.started, "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(self.release):
                if time.monotonic() > deadline:
                    return "never released"
                time.sleep(0.02)
            return VERSION
''')


def test_action_in_flight_finishes_on_its_own_version(node, tmp_path):
    node.client.workflows.create(
        workflow('hold_wf', 'hot.hold.hold', ['started', 'release']))
    node.write('hold.py', SLOW.format(version='old'))
    node.wait_listed('hot.hold.hold')
    started, release = tmp_path / 'started', tmp_path / 'release'
    running = node.client.executions.create('hold_wf', workflow_input={
        'started': str(started), 'release': str(release)})
    wait_for(started.exists, 'the action to start on the executor')

    generation = node.daemon.generation()
    node.write('hold.py', SLOW.format(version='new'))
    wait_for(lambda: node.daemon.generation() > generation, 'the new file')
    release.touch()
    assert said(node.wait_execution(running.id)) == 'old'
    assert said(node.run('hold_wf', started=str(tmp_path / 'again'),
                         release=str(release))) == 'new'


def test_daemon_killed_and_restarted_loses_nothing(node):
    node.write('survivor.py', GREET.format(greeting='alive'))
    node.wait_listed('hot.survivor.greet')
    before = node.daemon.states.load()
    node.daemon.kill(signal.SIGKILL)
    node.daemon.start()
    after = node.daemon.states.load()
    assert after.generation == before.generation
    assert after.modules == before.modules
    assert 'hot.survivor.greet' in node.listed()
    # And it watches again.
    node.write('newcomer.py', GREET.format(greeting='hi'))
    node.wait_listed('hot.newcomer.greet')


def test_every_mistral_process_is_signalled(node):
    """The executor never looks actions up by name: only the daemon's
    oslo.messaging signal makes it load a new generation."""
    node.write('signalled.py', GREET.format(greeting='hey'))
    node.wait_listed('hot.signalled.greet')
    generation = node.daemon.generation()
    line = f'Serving hot action generation {generation} '
    for server in ('api', 'engine', 'executor'):
        log = node.harness.server_log(server)
        wait_for(lambda log=log: line in log.read_text(),
                 f'{server} to load generation {generation}')
