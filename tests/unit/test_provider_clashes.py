"""Hot action names another action provider of the process serves.

Mistral combines its providers into a ``CompositeActionProvider`` in
entry point order, which is not sorted: a hot action named like an
installed one must not win by that order. These tests put the hot
provider beside others in a real composite, in both orders; the
functional tests do it in a real Mistral with an installed plug-in.
"""

import sys
import types

import pytest
from mistral_lib import actions as ml_actions
from oslo_config import cfg

from hotload import clashes as clashes_mod
from hotload import conf as hotload_conf
from hotload import provider as provider_mod
from hotload.cli import doctor_names
from hotload.cli import operate
from hotload.cli.diagnosis import FAIL
from tests.unit.conftest import GREET

#: A module with an action named like the installed one, and one not.
CLASHING = '''
    from mistral_lib import actions


    class Echo(actions.Action):
        """Say it, as the hot module."""

        __action_name__ = "plugin.echo"

        def __init__(self, output):
            super().__init__()
            self.output = output

        def run(self, context):
            return "hot: " + self.output
'''
CLASHING_LINE = 5


class InstalledEcho(ml_actions.Action):
    """Say it, as the installed plug-in."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def run(self, context):
        return 'installed: ' + self.output


class Installed(ml_actions.ActionProvider):
    """A provider of installed actions, as Mistral's ``legacy`` one: a
    table filled once; counts the names it is asked for."""

    def __init__(self, name: str = 'legacy', names=('plugin.echo',)):
        super().__init__(name)
        self.descriptors = {n: ml_actions.PythonActionDescriptor(
            n, InstalledEcho, namespace='') for n in names}
        self.asked: list[str] = []

    def find(self, action_name, namespace=None):
        self.asked.append(action_name)
        return self.descriptors.get(action_name)

    def find_all(self, namespace=None, limit=None, sort_fields=None,
                 sort_dirs=None, **filters):
        return list(self.descriptors.values())


class Broken(ml_actions.ActionProvider):
    """A provider whose find() fails; counts the names it is asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asked: list[str] = []

    def find(self, action_name, namespace=None):
        self.asked.append(action_name)
        raise RuntimeError('database unreachable')

    def find_all(self, namespace=None, **kwargs):
        return []


def conf_of(tree, scan) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('state_dir', scan.states.state_dir, 'hotload')
    conf.set_override('actions_dir', tree.root, 'hotload')
    return conf


@pytest.fixture
def installed() -> Installed:
    return Installed()


@pytest.fixture
def system(tree, scan, installed):
    """The hot provider and ``installed`` in one process, as Mistral
    builds them: ``system.providers`` is filled once the hot provider is
    built (Mistral builds every provider, then combines them)."""
    providers: list = []
    hot = provider_mod.HotloadActionProvider(
        'hotload', conf=conf_of(tree, scan),
        others=lambda: providers or None)
    return types.SimpleNamespace(hot=hot, providers=providers)


@pytest.mark.parametrize('hot_first', [True, False])
def test_the_installed_action_answers_whatever_the_order(
        tree, scan, system, installed, hot_first):
    tree.write('clash.py', CLASHING)
    tree.write('greet.py', GREET)
    scan()
    system.hot.refresh()
    order = [system.hot, installed] if hot_first else [installed,
                                                       system.hot]
    system.providers[:] = order
    composite = ml_actions.CompositeActionProvider('system', list(order))

    found = composite.find('plugin.echo')
    assert found.action_class is InstalledEcho
    assert system.hot.find('plugin.echo') is None
    assert composite.find('hot.greet.greet') is \
        system.hot.find('hot.greet.greet') is not None
    names = [d.name for d in composite.find_all()]
    assert sorted(names) == ['hot.greet.greet', 'plugin.echo']
    assert [d.name for d in system.hot.find_all()] == ['hot.greet.greet']


def test_status_names_both_sides_and_the_fix(tree, scan, system, installed):
    tree.write('clash.py', CLASHING)
    tree.write('greet.py', GREET)
    scan()
    system.hot.refresh()
    system.providers[:] = [system.hot, installed]
    status = system.hot.describe()
    assert status['clashes'] == {'plugin.echo': 'legacy'}
    assert status['actions'] == 1
    assert status['errors'] == [
        "hot action plugin.echo (class Echo in module clash) is not "
        "served: the action provider 'legacy' of this process serves "
        "plugin.echo too (tests.unit.test_provider_clashes.InstalledEcho); "
        "rename the action (its __action_name__) to a name no other "
        "provider serves"]


def test_the_first_table_is_checked_at_the_first_lookup(
        tree, scan, system, installed):
    # Mistral builds the hot provider (which loads the table) before it
    # has built the others: nothing is known to clash yet.
    tree.write('clash.py', CLASHING)
    scan()
    system.hot.refresh()
    assert system.hot._table.clashes is None
    system.providers[:] = [system.hot, installed]
    assert system.hot.find('plugin.echo') is None
    assert system.hot._table.clashes.keys() == {'plugin.echo'}


def test_each_name_is_asked_once_and_lookups_ask_nothing(
        tree, scan, system, installed):
    system.providers[:] = [system.hot, installed]
    tree.write('greet.py', GREET)
    tree.write('clash.py', CLASHING)
    scan()
    system.hot.refresh()
    assert sorted(installed.asked) == ['hot.greet.greet', 'plugin.echo']
    installed.asked.clear()
    for _ in range(3):
        system.hot.find('hot.greet.greet')
        system.hot.find('plugin.echo')
        system.hot.find_all()
        system.hot.describe()
    assert installed.asked == []
    # A new generation asks only for the names it adds.
    tree.write('other.py', GREET)
    scan()
    system.hot.refresh()
    assert installed.asked == ['hot.other.greet']
    assert system.hot.find('hot.other.greet') is not None


def test_a_clash_renamed_away_is_served(tree, scan, system, installed):
    system.providers[:] = [system.hot, installed]
    tree.write('clash.py', CLASHING)
    scan()
    system.hot.refresh()
    assert system.hot.find('plugin.echo') is None
    tree.write('clash.py', CLASHING.replace('"plugin.echo"',
                                            '"mine.echo"'))
    scan()
    system.hot.refresh()
    assert system.hot.find('mine.echo') is not None
    assert system.hot.describe()['clashes'] == {}


def test_a_provider_that_fails_is_reported_and_not_asked_again(
        tree, scan, system, installed):
    broken = Broken('flaky')
    system.providers[:] = [system.hot, broken, installed]
    tree.write('greet.py', GREET)
    tree.write('clash.py', CLASHING)
    scan()
    system.hot.refresh()
    assert system.hot.find('hot.greet.greet') is not None
    assert system.hot.find('plugin.echo') is None  # the next one has it
    errors = system.hot.describe()['errors']
    assert ('action provider flaky could not be asked whether it serves '
            'hot action names: RuntimeError: database unreachable'
            in errors)
    # It could fail slowly, once per name: one failure is enough.
    tree.write('other.py', GREET)
    scan()
    system.hot.refresh()
    assert len(broken.asked) == 1
    assert system.hot.find('hot.other.greet') is not None


@pytest.fixture
def mistral_module(monkeypatch):
    """``mistral.services.actions`` as Mistral has it while it builds its
    providers: no system provider yet."""
    module = types.ModuleType(clashes_mod.MISTRAL_ACTIONS)
    module._SYSTEM_PROVIDER = None
    monkeypatch.setitem(sys.modules, clashes_mod.MISTRAL_ACTIONS, module)
    return module


def database_provider(name: str, module: str, cls: str):
    """A provider of Mistral's database (ad-hoc, dynamic actions), which
    has every name, and counts those it is asked for."""
    provider_cls = type(cls, (Installed,), {'__module__': module})
    return provider_cls(name, names=('plugin.echo', 'hot.greet.greet'))


def test_in_mistral_its_system_provider_is_asked(
        tree, scan, installed, mistral_module):
    tree.write('clash.py', CLASHING)
    tree.write('greet.py', GREET)
    scan()
    hot = provider_mod.HotloadActionProvider('hotload',
                                             conf=conf_of(tree, scan))
    assert hot.describe()['clashes'] is None  # not known yet
    database = [
        database_provider('adhoc', 'mistral.actions.adhoc',
                          'AdHocActionProvider'),
        database_provider('dynamic', 'mistral.actions.dynamic_action',
                          'DynamicActionProvider')]
    mistral_module._SYSTEM_PROVIDER = ml_actions.CompositeActionProvider(
        'system', [*database, hot, installed])
    assert hot.find('plugin.echo') is None
    assert hot.find('hot.greet.greet') is not None
    assert hot.describe()['clashes'] == {'plugin.echo': 'legacy'}
    assert sorted(installed.asked) == ['hot.greet.greet', 'plugin.echo']
    # Their actions come and go at run time: never asked.
    assert [p.asked for p in database] == [[], []]


def test_outside_mistral_nothing_clashes(tree, scan, provider):
    assert clashes_mod.MISTRAL_ACTIONS not in sys.modules
    tree.write('clash.py', CLASHING)
    scan()
    provider.refresh()
    assert provider.find('plugin.echo') is not None
    assert provider.describe()['clashes'] == {}


@pytest.mark.parametrize('name, module, prefix, declared, says', [
    ('nova.servers.get', 'nova.servers', '', None,
     'set [hotload] action_prefix'),
    ('hot.servers.get', 'servers', 'hot', None,
     'rename the class or module, or change [hotload] action_prefix'),
    ('nova.servers_get', 'servers', 'hot', None, 'its __action_name__'),
    ('hot.servers.get', 'servers', 'hot', True, 'its __action_name__'),
])
def test_the_fix_follows_how_the_name_was_made(name, module, prefix,
                                               declared, says):
    assert says in clashes_mod.fix(name, module, prefix, declared)


def processes_with(clashes: dict) -> list[dict]:
    return [{'service': service, 'pid': pid, 'host': 'node-a',
             'generation': 1, 'actions': 1, 'errors': [],
             'clashes': clashes, 'state': 'ok'}
            for service, pid in (('api', 11), ('engine', 12))]


def test_status_has_a_line_per_clash_with_file_and_line(tree, scan):
    tree.write('clash.py', CLASHING)
    current = scan()
    processes = processes_with({'plugin.echo': 'legacy'})
    # A process that does not report clashes (an older provider).
    processes.append({'service': 'executor', 'pid': 13, 'host': 'node-a'})
    assert operate.clash_errors(processes, current) == [
        f"clash.py:{CLASHING_LINE}: plugin.echo is not served: action "
        f"provider 'legacy' serves that name too in api pid 11 on node-a, "
        f"engine pid 12 on node-a; rename the action (its __action_name__) "
        f"to a name no other provider serves"]
    assert operate.clash_errors(processes_with({}), current) == []


def test_doctor_has_a_names_row_only_for_a_clash(tree, scan, monkeypatch):
    tree.write('clash.py', CLASHING)
    scan()
    conf = conf_of(tree, scan)
    answers: list = []
    monkeypatch.setattr(operate, 'mistral_processes',
                        lambda *args, **kwargs: (answers, ''))
    assert doctor_names.check_names(conf) is None
    answers += processes_with({'plugin.echo': 'legacy'})
    row = doctor_names.check_names(conf)
    assert row.check == 'names'
    assert row.result == FAIL
    assert f'clash.py:{CLASHING_LINE}: plugin.echo is not served' \
        in row.detail
    assert "'legacy'" in row.detail
    assert 'its __action_name__' in row.detail
