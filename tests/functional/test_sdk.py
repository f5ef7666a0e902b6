"""hotload.sdk's run_action() inside a real Mistral's executor.

A hot action runs Mistral's own ``std.echo`` and another hot action by
name, in a workflow: both results come back, the inner hot action is the
version the generation just published names (checked by its content key,
which names the module it ran from), it gets the caller's execution
context, and an inner failure fails the outer action with the inner
error.
"""

import json
import textwrap

from tests.functional.conftest import PREFIX
from tests.functional.conftest import wait_for

OUTER = textwrap.dedent('''
    from mistral_lib import actions

    from hotload import sdk


    class Outer(actions.Action):
        """Run std.echo and the action named inner."""

        def __init__(self, inner, who):
            super().__init__()
            self.inner = inner
            self.who = who

        def run(self, context):
            return {
                "echo": sdk.run_action(context, "std.echo",
                                       output="echo " + self.who),
                "inner": sdk.run_action(context, self.inner, who=self.who),
                "action_execution": context.execution.action_execution_id,
            }
''')

INNER = textwrap.dedent('''
    from mistral_lib import actions
    from mistral_lib import exceptions

    VERSION = "{version}"


    class Version(actions.Action):
        """Say the version and the module it runs from."""

        def __init__(self, who):
            super().__init__()
            self.who = who

        def run(self, context):
            return {{
                "version": VERSION,
                "who": self.who,
                "module": __name__,
                "action_execution": context.execution.action_execution_id,
            }}


    class Broken(actions.Action):
        """Fail as an action fails on purpose."""

        def __init__(self, who):
            super().__init__()
            self.who = who

        def run(self, context):
            raise exceptions.ActionException("no disk left for " + self.who)
''')



def workflow(name: str) -> str:
    """A workflow ``name`` of one task: the outer action, its result
    published as ``said``."""
    return textwrap.dedent(f'''
        ---
        version: '2.0'
        {name}:
          input: [inner, who]
          tasks:
            call:
              action: {PREFIX}.sdk_outer.outer
              input:
                inner: <% $.inner %>
                who: <% $.who %>
              publish:
                said: <% task().result %>
          output:
            said: <% $.said %>
    ''')


def content_key(node, module: str) -> str:
    """The content key the current generation names for ``module``."""
    return node.daemon.states.load().modules[module].good.content_key


def test_run_action_calls_std_and_hot_actions_in_a_workflow(node):
    node.client.workflows.create(workflow('sdk_wf'))
    node.write('sdk_inner.py', INNER.format(version='v1'))
    node.write('sdk_outer.py', OUTER)
    node.wait_listed(f'{PREFIX}.sdk_outer.outer')
    node.wait_listed(f'{PREFIX}.sdk_inner.version')

    execution = node.run('sdk_wf', inner=f'{PREFIX}.sdk_inner.version',
                         who='ann')
    assert execution.state == 'SUCCESS', execution.state_info
    said = json.loads(execution.output)['said']
    key = content_key(node, 'sdk_inner')
    (action_ex,) = node.client.action_executions.list(
        node.client.tasks.list(execution.id)[0].id)
    assert said == {
        'echo': 'echo ann',
        'inner': {'version': 'v1', 'who': 'ann',
                  'module': f'_hotload_{key}.sdk_inner',
                  # The caller's execution context, passed on.
                  'action_execution': action_ex.id},
        'action_execution': action_ex.id,
    }

    # A new version of the inner module only: the first workflow after
    # its generation is published runs it, whatever the executor's
    # provider had heard of (run_action reads the newest generation).
    generation = node.daemon.generation()
    node.write('sdk_inner.py', INNER.format(version='v2'))
    wait_for(lambda: node.daemon.generation() > generation,
             'the new inner module to be published')
    new_key = content_key(node, 'sdk_inner')
    assert new_key != key
    execution = node.run('sdk_wf', inner=f'{PREFIX}.sdk_inner.version',
                         who='bob')
    assert execution.state == 'SUCCESS', execution.state_info
    inner = json.loads(execution.output)['said']['inner']
    assert (inner['version'], inner['module']) == (
        'v2', f'_hotload_{new_key}.sdk_inner')


def failure(node, action_ex_id: str) -> str:
    """The error an action execution ended with."""
    output = node.client.action_executions.get(action_ex_id).output
    return json.loads(output)['result']


def test_an_inner_failure_fails_the_outer_action(node):
    node.client.workflows.create(workflow('sdk_failing_wf'))
    node.write('sdk_inner.py', INNER.format(version='v3'))
    node.write('sdk_outer.py', OUTER)
    node.wait_listed(f'{PREFIX}.sdk_inner.broken')

    execution = node.run('sdk_failing_wf',
                         inner=f'{PREFIX}.sdk_inner.broken',
                         who='carol')
    assert execution.state == 'ERROR'
    (task,) = node.client.tasks.list(execution.id)
    assert task.state == 'ERROR'
    (action_ex,) = node.client.action_executions.list(task.id)
    assert action_ex.name == f'{PREFIX}.sdk_outer.outer'
    assert action_ex.state == 'ERROR'
    error = failure(node, action_ex.id)
    assert f'action {PREFIX}.sdk_inner.broken failed: no disk left for ' \
           f'carol' in error

    # And a name nothing serves says so.
    execution = node.run('sdk_failing_wf',
                         inner=f'{PREFIX}.sdk_inner.nowhere',
                         who='dan')
    assert execution.state == 'ERROR'
    (task,) = node.client.tasks.list(execution.id)
    (action_ex,) = node.client.action_executions.list(task.id)
    error = failure(node, action_ex.id)
    assert f"no action named '{PREFIX}.sdk_inner.nowhere' in the action " \
           f"providers of Mistral" in error
