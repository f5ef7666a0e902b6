"""A hot action named like an installed action: the installed one answers.

The harness's Mistral has a plug-in installed (``tools/harness/plugin``:
the action ``harness_plugin.echo`` of the ``mistral.actions`` entry point,
which Mistral's ``legacy`` provider serves, as it serves mistral-extra's
actions and ``std.*``). A hot module here declares the same name. Every
Mistral process must leave the name to the plug-in and say so: ``status``
(each process's errors, and a line with the file, exit status 1),
``action show`` and ``doctor``.

Here the hot provider comes last in Mistral's provider order, so a lookup
by name would reach the plug-in first anyway; ``GET /v2/actions`` (every
provider's ``find_all()``) is what shows the hot provider leaving the
name out. The unit tests (tests/unit/test_provider_clashes.py) put it
first too.
"""

import json
import textwrap

from tests.functional.conftest import wait_for
from tests.functional.test_hot_actions import said
from tests.functional.test_hot_actions import workflow

NAME = 'harness_plugin.echo'
INSTALLED = 'installed plug-in: '
HOT_DESCRIPTION = 'Say it, as the hot module.'
CLASHING = textwrap.dedent(f'''
    from mistral_lib import actions


    class Echo(actions.Action):
        """{HOT_DESCRIPTION}"""

        __action_name__ = "{NAME}"

        def __init__(self, output):
            super().__init__()
            self.output = output

        def run(self, context):
            return "hot module: " + self.output


    class Fine(actions.Action):
        """Say it, under a name of its own."""

        def __init__(self, output):
            super().__init__()
            self.output = output

        def run(self, context):
            return "hot module: " + self.output
''')
LINE = CLASHING.splitlines().index('class Echo(actions.Action):') + 1
SERVICES = {'api', 'engine', 'executor'}


def reported(node):
    """``status`` once every Mistral process reports the clash."""
    result = node.hotload('status', '-f', 'json')
    found = json.loads(result.stdout)
    clashing = {p['service']: p for p in found['processes']
                if NAME in (p.get('clashes') or {})}
    return (result, found, clashing) if set(clashing) >= SERVICES else None


def listed(node, name: str) -> list:
    return [a for a in node.client.actions.list(limit=-1) if a.name == name]


def test_installed_action_keeps_its_name(node):
    node.client.workflows.create(workflow('plugin_echo_wf', NAME,
                                          ['output']))
    assert said(node.run('plugin_echo_wf', output='before')) == \
        INSTALLED + 'before'
    node.write('clash.py', CLASHING)
    try:
        # The module's other action is served: the clash costs one name.
        node.wait_listed('hot.clash.fine')
        result, found, clashing = wait_for(
            lambda: reported(node), 'every Mistral process to report '
            'the clash in status')
        assert result.returncode == 1, result.stdout + result.stderr
        for process in clashing.values():
            assert process['clashes'] == {NAME: 'legacy'}
            assert (f"hot action {NAME} (class Echo in module clash) is "
                    f"not served: the action provider 'legacy' of this "
                    f"process serves {NAME} too "
                    f"(hotload_harness_plugin.EchoAction); rename the "
                    f"action (its __action_name__)") in \
                '\n'.join(process['errors'])
        line = [e for e in found['errors'] if NAME in e]
        assert len(line) == 1, found['errors']
        assert line[0].startswith(
            f"clash.py:{LINE}: {NAME} is not served: action provider "
            f"'legacy' serves that name too in "), line
        assert all(f'{s} pid ' in line[0] for s in SERVICES), line

        # The installed action answers, and is listed once, as itself.
        assert said(node.run('plugin_echo_wf', output='after')) == \
            INSTALLED + 'after'
        [action] = listed(node, NAME)
        assert action.description != HOT_DESCRIPTION
        assert listed(node, 'hot.clash.fine')

        shown = node.hotload('action', 'show', NAME, '-f', 'json')
        clashes = json.loads(shown.stdout)['clashes']
        assert {c.split()[0] for c in clashes} >= SERVICES, clashes
        assert all(c.endswith(f": not served, action provider 'legacy' "
                              f"serves {NAME}") for c in clashes), clashes

        doctor = node.hotload('doctor', '--mistral-python',
                              str(node.harness.python), '-f', 'json')
        rows = {row['Check']: row for row in json.loads(doctor.stdout)}
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert rows['names']['Result'] == 'FAIL'
        assert f'clash.py:{LINE}: {NAME} is not served' in \
            rows['names']['Detail']
        assert 'its __action_name__' in rows['names']['Detail']
    finally:
        (node.actions_dir / 'clash.py').unlink()
        node.wait_unlisted('hot.clash.fine')
    wait_for(lambda: not any(NAME in e for e in json.loads(
        node.hotload('status', '-f', 'json').stdout)['errors']),
        'the clash to leave status')
    assert said(node.run('plugin_echo_wf', output='again')) == \
        INSTALLED + 'again'
