"""hotload.sdk: the OpenStack connection and run_action().

No OpenStack cloud is reachable from the tests: requests-mock stands in
for one, as in openstacksdk's own unit tests. Keystone answers the token
validation with a realistic v3 token body and catalog, and Nova answers
its version document and ``GET /servers/<id>``.

run_action() runs with real mistral-lib contexts and real providers: the
hot provider over a test tree the scanner published (the fixtures of
tests/unit/conftest.py), and a mistral-lib provider serving ``std.echo``
(Mistral, whose provider serves the real one, is not installed here;
:class:`Echo` has its input and result).
"""

import datetime
import importlib.metadata
import json
import logging
import subprocess
import sys
import types

import pytest
import requests_mock
from keystoneauth1 import exceptions as ks_exceptions
from mistral_lib import actions as ml_actions
from mistral_lib.actions import context as ml_context
from mistral_lib.exceptions import ActionException
from oslo_config import cfg

from hotload import _sdk_actions
from hotload import _sdk_openstack
from hotload import conf as hotload_conf
from hotload import sdk

# --------------------------------------------------------------------------
# A cloud, from requests-mock
# --------------------------------------------------------------------------

TOKEN = 'gAAAAABsdk-unit-test-token-never-logged'
PROJECT_ID = '0c4e939acacf4376bdcd1129f1a054ad'
AUTH_URL = 'https://identity.example.com/v3'
COMPUTE = 'https://compute.example.com/v2.1'
INTERNAL_COMPUTE = 'https://compute.internal.example.com/v2.1'
SERVER_ID = '9d2e4f6a-1b3c-4d5e-8f90-a1b2c3d4e5f6'


def _catalog(compute_region='RegionOne'):
    return [
        {'id': 'k1', 'type': 'identity', 'name': 'keystone',
         'endpoints': [{'id': 'k1p', 'interface': 'public',
                        'region': 'RegionOne', 'region_id': 'RegionOne',
                        'url': 'https://identity.example.com'}]},
        {'id': 'n1', 'type': 'compute', 'name': 'nova',
         'endpoints': [
             {'id': 'n1p', 'interface': 'public', 'region': compute_region,
              'region_id': compute_region, 'url': COMPUTE},
             {'id': 'n1i', 'interface': 'internal',
              'region': compute_region, 'region_id': compute_region,
              'url': INTERNAL_COMPUTE}]},
    ]


def token_data(expires_at='2099-01-01T00:00:00.000000Z', **extra):
    """The inner "token" of Keystone's GET /v3/auth/tokens answer (what
    Mistral also stores as the context's service_catalog)."""
    data = {
        'methods': ['token'],
        'user': {'id': 'u1', 'name': 'alice',
                 'domain': {'id': 'default', 'name': 'Default'}},
        'audit_ids': ['mAjXQhiYRyKwkB4qygdLVg'],
        'expires_at': expires_at,
        'issued_at': '2024-05-01T08:00:00.000000Z',
        'project': {'id': PROJECT_ID, 'name': 'demo',
                    'domain': {'id': 'default', 'name': 'Default'}},
        'roles': [{'id': 'r1', 'name': 'member'}],
        'catalog': _catalog(),
    }
    data.update(extra)
    return data


NOVA_VERSION = {'version': {
    'id': 'v2.1', 'status': 'CURRENT', 'version': '2.96',
    'min_version': '2.1', 'updated': '2013-07-23T11:33:21Z',
    'links': [{'href': f'{COMPUTE}/', 'rel': 'self'}]}}


def server_body(name='web-1'):
    return {'server': {'id': SERVER_ID, 'name': name, 'status': 'ACTIVE',
                       'tenant_id': PROJECT_ID, 'links': []}}


class Cloud:
    """Keystone and Nova on requests-mock."""

    def __init__(self, mocker):
        self.mock = mocker
        self.keystone = mocker.get(
            f'{AUTH_URL}/auth/tokens', json={'token': token_data()},
            headers={'X-Subject-Token': TOKEN})
        self.rescope = mocker.post(f'{AUTH_URL}/auth/tokens',
                                   status_code=403)
        for url in (COMPUTE, INTERNAL_COMPUTE):
            mocker.get(url, json=NOVA_VERSION)
            mocker.get(f'{url}/servers/{SERVER_ID}', json=server_body())

    def calls(self, prefix):
        return [r for r in self.mock.request_history
                if r.url.startswith(prefix)]


@pytest.fixture
def cloud():
    _sdk_openstack.VALIDATIONS.clear()
    with requests_mock.Mocker() as mocker:
        yield Cloud(mocker)
    _sdk_openstack.VALIDATIONS.clear()


def context(token=TOKEN, **security):
    """A real mistral-lib ActionContext, as Mistral's executor builds one
    for a workflow a user started (no catalog unless given)."""
    values = {'auth_token': token, 'auth_uri': AUTH_URL,
              'project_id': PROJECT_ID, 'project_name': 'demo',
              'user_name': 'alice', 'region_name': 'RegionOne',
              'insecure': False, 'auth_cacert': None,
              'service_catalog': None}
    values.update(security)
    return ml_context.ActionContext(
        security_ctx=ml_context.SecurityContext(**values),
        execution_ctx=ml_context.ExecutionContext(
            workflow_execution_id='wf-1', task_execution_id='task-1',
            action_execution_id='action-1', workflow_name='wf'))


def server_name(ctx, **kwargs):
    with sdk.openstack_connection(ctx, **kwargs) as conn:
        return conn.compute.get_server(SERVER_ID).name


# --------------------------------------------------------------------------
# openstack_connection()
# --------------------------------------------------------------------------


@pytest.mark.parametrize('shape', ['inner-token', 'whole-response',
                                   'catalog-list'])
def test_catalog_in_the_context_needs_no_keystone(cloud, shape):
    data = token_data()
    catalog = {'inner-token': data, 'whole-response': {'token': data},
               'catalog-list': data['catalog']}[shape]
    assert server_name(context(service_catalog=catalog)) == 'web-1'
    assert not cloud.calls(AUTH_URL)
    (call,) = cloud.calls(f'{COMPUTE}/servers')
    assert call.headers['X-Auth-Token'] == TOKEN


def test_catalog_from_keystone_once(cloud):
    """No catalog in the context: Keystone validates the token once, for
    itself (no new token), and later connections with that token reuse
    the answer; another token is validated in its turn."""
    for _ in range(3):
        assert server_name(context()) == 'web-1'
    (validation,) = cloud.calls(AUTH_URL)
    assert (validation.method, validation.path) == ('GET', '/v3/auth/tokens')
    assert validation.headers['X-Auth-Token'] == TOKEN
    assert validation.headers['X-Subject-Token'] == TOKEN
    assert [c.headers['X-Auth-Token']
            for c in cloud.calls(f'{COMPUTE}/servers')] == [TOKEN] * 3
    server_name(context(token='another-token'))
    assert cloud.keystone.call_count == 2


def test_a_validation_is_not_kept_past_the_token_expiry(cloud):
    soon = (datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(seconds=1)).isoformat()
    cloud.mock.get(f'{AUTH_URL}/auth/tokens',
                   json={'token': token_data(expires_at=soon)})
    server_name(context())
    server_name(context())
    assert len(cloud.calls(AUTH_URL)) == 2


def test_a_validation_is_kept_a_bounded_time(cloud, monkeypatch):
    server_name(context())
    monkeypatch.setattr(_sdk_openstack, 'CATALOG_TTL', 0.0)
    _sdk_openstack.VALIDATIONS.clear()
    server_name(context())
    server_name(context())
    assert len(cloud.calls(AUTH_URL)) == 3


def test_trust_scoped_token_is_never_rescoped(cloud, monkeypatch):
    """A cron trigger's execution: trust-scoped token, no catalog, no
    auth_uri (Mistral's own Keystone URL is used). The token is used as
    it is: validated with GET, never exchanged (POST /v3/auth/tokens,
    which Keystone refuses for a trust-scoped token)."""
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt('www_authenticate_uri'),
                      group='keystone_authtoken')
    conf([], project='test')
    conf.set_override('www_authenticate_uri',
                      'https://identity.example.com',
                      group='keystone_authtoken')
    monkeypatch.setattr(cfg, 'CONF', conf)
    cloud.mock.get(f'{AUTH_URL}/auth/tokens', json={'token': token_data(
        methods=['token'], **{'OS-TRUST:trust': {
            'id': 't-1', 'impersonation': True,
            'trustee_user': {'id': 'mistral'},
            'trustor_user': {'id': 'u1'}}})})

    ctx = context(auth_uri=None, is_trust_scoped=True, trust_id='t-1')
    assert server_name(ctx) == 'web-1'

    assert [(c.method, c.path) for c in cloud.calls(AUTH_URL)] == [
        ('GET', '/v3/auth/tokens')]
    assert cloud.rescope.call_count == 0
    (call,) = cloud.calls(f'{COMPUTE}/servers')
    assert call.headers['X-Auth-Token'] == TOKEN


def test_mistral_keystone_url_absent_outside_mistral(monkeypatch):
    monkeypatch.setattr(cfg, 'CONF', cfg.ConfigOpts())
    assert _sdk_openstack.mistral_auth_uri() is None


def test_interface_and_region_can_be_chosen(cloud):
    data = token_data()
    data['catalog'] = _catalog('RegionTwo')
    ctx = context(service_catalog=data)
    assert server_name(ctx, interface='internal',
                       region_name='RegionTwo') == 'web-1'
    assert cloud.calls(f'{INTERNAL_COMPUTE}/servers')
    assert not cloud.calls(f'{COMPUTE}/servers')


def test_the_token_is_never_in_a_log_record(cloud, caplog):
    """Whatever is logged, at any level, by us, keystoneauth or the SDK,
    on success and on failure, never holds the token."""
    with caplog.at_level(logging.DEBUG):
        server_name(context())
        cloud.mock.get(f'{AUTH_URL}/auth/tokens', status_code=401,
                       json={'error': {'code': 401}})
        with pytest.raises(sdk.CredentialsError) as failed:
            server_name(context(token=TOKEN + '-revoked'))
    assert 'auth/tokens' in caplog.text  # keystoneauth did log requests
    assert cloud.calls(f'{COMPUTE}/servers')
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(record.args)
    assert TOKEN not in str(failed.value)


def test_without_token_fails_clearly():
    with pytest.raises(sdk.CredentialsError, match='no auth token') as exc:
        sdk.openstack_connection(types.SimpleNamespace(security=None))
    # Every sdk error is the exception actions fail with.
    assert isinstance(exc.value, ActionException)


def test_without_catalog_or_keystone_url_fails(cloud, monkeypatch):
    monkeypatch.setattr(_sdk_openstack, 'mistral_auth_uri', lambda: None)
    with pytest.raises(sdk.CredentialsError,
                       match='neither a service catalog'):
        server_name(context(auth_uri=None))
    assert not cloud.mock.request_history


@pytest.mark.parametrize('status', [401, 404])
def test_a_rejected_token_is_reported(cloud, status):
    cloud.mock.get(f'{AUTH_URL}/auth/tokens', status_code=status,
                   json={'error': {'code': status}})
    with pytest.raises(sdk.CredentialsError) as exc:
        server_name(context())
    assert str(exc.value) == (
        f"Keystone at {AUTH_URL} refused the workflow's token (HTTP "
        f"{status}); it may have expired or been revoked")
    # Not kept: the next connection asks again.
    with pytest.raises(sdk.CredentialsError):
        server_name(context())
    assert cloud.keystone.call_count == 0


def test_keystone_failures_are_reported(cloud):
    cloud.mock.get(f'{AUTH_URL}/auth/tokens', status_code=503)
    with pytest.raises(sdk.CredentialsError, match='answered HTTP 503'):
        server_name(context())
    cloud.mock.get(f'{AUTH_URL}/auth/tokens',
                   exc=ks_exceptions.ConnectFailure('Connection refused'))
    with pytest.raises(sdk.CredentialsError, match='cannot reach Keystone'):
        server_name(context())
    cloud.mock.get(f'{AUTH_URL}/auth/tokens', json=['not', 'a', 'token'])
    with pytest.raises(sdk.CredentialsError, match='other than a v3 token'):
        server_name(context())


@pytest.mark.parametrize(('url', 'expected'), [
    ('https://id.example.com', 'https://id.example.com/v3'),
    ('https://id.example.com/', 'https://id.example.com/v3'),
    ('https://id.example.com/v3', 'https://id.example.com/v3'),
    ('https://id.example.com/identity/v3/',
     'https://id.example.com/identity/v3'),
])
def test_v3_url(url, expected):
    assert _sdk_openstack.v3_url(url) == expected


@pytest.mark.parametrize(('insecure', 'cacert', 'expected'), [
    (False, None, True),
    (None, None, True),
    (True, '/etc/ssl/ca.pem', False),
    ('True', None, False),
    (False, '/etc/ssl/ca.pem', '/etc/ssl/ca.pem'),
])
def test_verify_setting(insecure, cacert, expected):
    sec = types.SimpleNamespace(insecure=insecure, auth_cacert=cacert)
    assert _sdk_openstack.verify_setting(sec) == expected


def test_token_body_fills_project_from_context():
    sec = types.SimpleNamespace(
        service_catalog=[{'type': 'compute', 'endpoints': []}],
        project_id='p-1', project_name='demo')
    body = _sdk_openstack.token_body(sec)
    assert body['token']['project'] == {'id': 'p-1', 'name': 'demo'}


@pytest.mark.parametrize('catalog', [None, {}, [], {'catalog': []}, 'x'])
def test_token_body_ignores_unusable_catalogs(catalog):
    sec = types.SimpleNamespace(service_catalog=catalog, project_id='p')
    assert _sdk_openstack.token_body(sec) is None


def test_importing_the_sdk_imports_no_openstack_library():
    """The probe imports every module; most never connect."""
    code = ('import sys, hotload.sdk; print(sorted(m for m in sys.modules '
            'if m.split(".")[0] in ("openstack", "keystoneauth1", '
            '"mistral")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == '[]'


# --------------------------------------------------------------------------
# run_action()
# --------------------------------------------------------------------------


class Echo(ml_actions.Action):
    """Stands in for Mistral's std.echo: same input, same result."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def run(self, context):
        return self.output


class OldStyle:
    """An action class older than mistral-lib (run() gets no context)."""

    def __init__(self):
        pass

    def run(self, context):
        return {'context': repr(context)}


class Provider(ml_actions.ActionProvider):
    """A mistral-lib provider of Python classes, as Mistral's legacy
    provider serves std.*."""

    def __init__(self, name='std', classes=None):
        super().__init__(name)
        self.descriptors = {
            action: ml_actions.PythonActionDescriptor(action, cls,
                                                      namespace='')
            for action, cls in (classes or {
                'std.echo': Echo, 'legacy.old': OldStyle}).items()}

    def find(self, action_name, namespace=None):
        return self.descriptors.get(action_name)

    def find_all(self, namespace=None, limit=None, sort_fields=None,
                 sort_dirs=None, **filters):
        return list(self.descriptors.values())


class Failing(ml_actions.ActionProvider):
    """A provider whose lookups fail, as Mistral's ad-hoc one in an
    executor that cannot reach the database."""

    def __init__(self):
        super().__init__('adhoc')
        self.asked = 0

    def find(self, action_name, namespace=None):
        self.asked += 1
        raise RuntimeError('database unreachable')

    def find_all(self, *args, **kwargs):
        return []


@pytest.fixture
def providers(provider):
    """std.echo and the hot provider, in that order, set for run_action."""
    found = [Provider(), provider]
    previous = sdk.set_providers(found)
    yield found
    sdk.set_providers(previous)


OUTER = '''
from mistral_lib import actions

from hotload import sdk


class Outer(actions.Action):
    """Run an action by name, and std.echo."""

    def __init__(self, inner, params=None):
        super().__init__()
        self.inner = inner
        self.params = params or {}

    def run(self, context):
        return {
            "echo": sdk.run_action(context, "std.echo", output="echoed"),
            "inner": sdk.run_action(context, self.inner, **self.params),
        }
'''

INNER = '''
from mistral_lib import actions
from mistral_lib import exceptions

VERSION = "{version}"


class Version(actions.Action):
    """Say the version, the module and what the context holds."""

    def __init__(self, who):
        super().__init__()
        self.who = who

    def run(self, context):
        return {{
            "version": VERSION, "who": self.who, "module": __name__,
            "project": context.security.project_id,
            "action_execution": context.execution.action_execution_id,
        }}


class Fails(actions.Action):
    def run(self, context):
        raise exceptions.ActionException("the disk is full")


class Crashes(actions.Action):
    def run(self, context):
        return 1 / 0


class Errs(actions.Action):
    def run(self, context):
        return actions.Result(error={{"code": 42}})


class Cancels(actions.Action):
    def run(self, context):
        return actions.Result(cancel=True)


class Later(actions.Action):
    def is_sync(self):
        return False

    def run(self, context):
        raise AssertionError("an asynchronous action must not be run")


class Itself(actions.Action):
    def run(self, context):
        from hotload import sdk
        return sdk.run_action(context, "hot.inner.itself")


class Seed:
    """A seed-style action: run() takes no context."""

    __export__ = True

    def run(self):
        return "seed"
'''


def run_hot(provider, name, ctx=None, **params):
    """Run a hot action as Mistral's engine and executor would."""
    action = provider.find(name).instantiate(params, {})
    return action.run(ctx or context())


def publish(tree, scan, version='v1'):
    tree.write('outer.py', OUTER)
    tree.write('inner.py', INNER.format(version=version))
    return scan()


def test_std_and_hot_actions_run_by_name(tree, scan, provider, providers):
    published = publish(tree, scan)
    result = run_hot(provider, 'hot.outer.outer', inner='hot.inner.version',
                     params={'who': 'ann'})
    key = published.modules['inner'].good.content_key
    assert result == {'echo': 'echoed', 'inner': {
        'version': 'v1', 'who': 'ann', 'module': f'_hotload_{key}.inner',
        # The same security and execution context as the caller's.
        'project': PROJECT_ID, 'action_execution': 'action-1'}}


def test_the_inner_hot_action_is_the_version_the_generation_names(
        tree, scan, provider, providers):
    publish(tree, scan)
    outer = provider.find('hot.outer.outer').instantiate(
        {'inner': 'hot.inner.version', 'params': {'who': 'b'}}, {})
    assert outer.run(context())['inner']['version'] == 'v1'
    published = publish(tree, scan, 'v2')
    # No signal, no refresh by anyone: run_action reads the generation
    # just published before it looks the name up, and the outer action
    # (chosen before the edit) calls the inner one of the new generation.
    inner = outer.run(context())['inner']
    key = published.modules['inner'].good.content_key
    assert (inner['version'], inner['module']) == (
        'v2', f'_hotload_{key}.inner')
    assert provider.generation == published.generation


@pytest.mark.parametrize(('name', 'message', 'error'), [
    ('hot.inner.fails', 'action hot.inner.fails failed: the disk is full',
     'the disk is full'),
    ('hot.inner.crashes', 'action hot.inner.crashes failed: '
     'ZeroDivisionError: division by zero',
     'ZeroDivisionError: division by zero'),
    ('hot.inner.errs', 'action hot.inner.errs failed: {"code": 42}',
     {'code': 42}),
    ('hot.inner.cancels', 'action hot.inner.cancels was cancelled', None),
])
def test_an_inner_failure_fails_the_caller_with_its_error(
        tree, scan, provider, providers, name, message, error):
    publish(tree, scan)
    with pytest.raises(sdk.InnerActionError) as failed:
        run_hot(provider, 'hot.outer.outer', inner=name)
    assert str(failed.value) == message
    assert failed.value.error == error
    assert failed.value.action_name == name
    assert isinstance(failed.value, ActionException)


def test_an_inner_failure_goes_up_every_level(tree, scan, provider,
                                              providers):
    publish(tree, scan)
    with pytest.raises(sdk.InnerActionError) as failed:
        sdk.run_action(context(), 'hot.outer.outer', inner='hot.inner.fails')
    assert str(failed.value) == (
        'action hot.outer.outer failed: action hot.inner.fails failed: the '
        'disk is full')


def test_an_asynchronous_action_is_refused(tree, scan, provider, providers):
    publish(tree, scan)
    with pytest.raises(sdk.AsyncActionError,
                       match='hot.inner.later is asynchronous'):
        sdk.run_action(context(), 'hot.inner.later')


def test_an_unknown_name_says_where_it_was_looked_for(tree, scan, providers):
    publish(tree, scan)
    with pytest.raises(sdk.ActionNotFoundError) as failed:
        sdk.run_action(context(), 'hot.inner.nope')
    assert str(failed.value) == (
        "no action named 'hot.inner.nope' in the action providers set by "
        "this program (asked: std, hotload)")
    assert isinstance(failed.value, ActionException)


def test_wrong_input_is_named_and_never_shown(tree, scan, providers):
    publish(tree, scan)
    with pytest.raises(sdk.RunActionError, match=r'missing=\[.who.\]'):
        sdk.run_action(context(), 'hot.inner.version')
    with pytest.raises(sdk.RunActionError,
                       match=r'unexpected=\[.password.\]') as failed:
        sdk.run_action(context(), 'hot.inner.version', who='x',
                       password='s3cret')
    assert 's3cret' not in str(failed.value)


def test_seed_style_and_pre_mistral_lib_classes(tree, scan, providers):
    publish(tree, scan)
    assert sdk.run_action(context(), 'hot.inner.seed') == 'seed'
    # As Mistral's executor: a class that is not a mistral-lib Action
    # gets no context.
    assert sdk.run_action(context(), 'legacy.old') == {'context': 'None'}


def test_params_may_be_named_context_or_name(provider):
    previous = sdk.set_providers([Provider(classes={'x.odd': Odd})])
    try:
        assert sdk.run_action(None, 'x.odd', context=1, name=2) == [1, 2]
    finally:
        sdk.set_providers(previous)


class Odd(ml_actions.Action):
    def __init__(self, context, name):
        super().__init__()
        self.values = [context, name]

    def run(self, context):
        return self.values


def test_an_action_running_itself_is_stopped(tree, scan, providers):
    publish(tree, scan)
    with pytest.raises(sdk.RunActionError, match='nested 16 deep'):
        sdk.run_action(context(), 'hot.inner.itself')


def test_a_provider_that_fails_is_passed_over(tree, scan, provider,
                                               monkeypatch):
    publish(tree, scan)
    failing = Failing()
    previous = sdk.set_providers([failing, Provider(), provider])
    try:
        # The first provider cannot answer: the next ones still do.
        assert sdk.run_action(context(), 'std.echo', output=1) == 1
        assert sdk.run_action(context(), 'hot.inner.seed') == 'seed'
        assert failing.asked == 1  # not asked again for a while
        with pytest.raises(sdk.ActionNotFoundError) as failed:
            sdk.run_action(context(), 'some.adhoc')
        assert 'passed over: adhoc: its lookup failed a moment ago' in \
            str(failed.value)
        # RETRY_AFTER seconds later, it is asked again.
        monkeypatch.setattr(_sdk_actions, '_failed_until', {})
        with pytest.raises(sdk.ActionNotFoundError,
                           match='passed over: adhoc: RuntimeError: '
                                 'database unreachable'):
            sdk.run_action(context(), 'some.adhoc')
        assert failing.asked == 2
    finally:
        sdk.set_providers(previous)


def test_in_mistral_its_system_provider_is_asked(tree, scan, provider,
                                                  monkeypatch):
    """Inside Mistral: the delegates of its system provider (a
    mistral-lib composite), in its order."""
    publish(tree, scan)
    system = ml_actions.CompositeActionProvider(
        'system', [Provider(classes={'hot.inner.seed': Echo}), provider])
    module = types.ModuleType(_sdk_actions.MISTRAL_ACTIONS)
    module.get_system_action_provider = lambda: system
    monkeypatch.setitem(sys.modules, _sdk_actions.MISTRAL_ACTIONS, module)
    found, source, _ = _sdk_actions.providers()
    assert found == system._delegates
    assert source == 'the action providers of Mistral'
    # The first provider that serves the name wins, as for the engine.
    assert sdk.run_action(context(), 'hot.inner.seed', output='std') == 'std'


class Broken(Provider):
    """As Mistral's legacy provider outside Mistral: its options are not
    registered."""

    def __init__(self, name):
        raise cfg.NoSuchOptError('legacy_action_provider')


def test_without_mistral_the_entry_points_are_used(provider, monkeypatch):
    entries = [
        importlib.metadata.EntryPoint(
            'adhoc', 'mistral.actions.adhoc:AdHocActionProvider',
            _sdk_actions.PROVIDERS_GROUP),
        importlib.metadata.EntryPoint(
            'legacy', f'{__name__}:Broken', _sdk_actions.PROVIDERS_GROUP),
        importlib.metadata.EntryPoint(
            'std', f'{__name__}:Provider', _sdk_actions.PROVIDERS_GROUP),
        importlib.metadata.EntryPoint(
            'hotload', _sdk_actions.HOT_PROVIDER,
            _sdk_actions.PROVIDERS_GROUP),
    ]
    monkeypatch.setattr(importlib.metadata, 'entry_points',
                        lambda group: entries)
    found, left_out = _sdk_actions.entry_point_providers(hot=provider)
    assert [p.name for p in found] == ['std', 'hotload']
    assert found[1] is provider
    assert left_out['adhoc'].endswith('which only Mistral reaches')
    assert left_out['legacy'].startswith('cannot be built outside Mistral: '
                                         'NoSuchOptError')

    monkeypatch.setattr(_sdk_actions, '_built', None)
    monkeypatch.setattr(_sdk_actions, '_left_out', {})
    monkeypatch.setattr(_sdk_actions, 'entry_point_providers',
                        lambda hot: (found, left_out))
    with pytest.raises(sdk.ActionNotFoundError) as failed:
        sdk.run_action(context(), 'std.http')
    assert str(failed.value).startswith(
        "no action named 'std.http' in the mistral.action.providers entry "
        "points (no Mistral in this process) (asked: std, hotload); left "
        "out: adhoc: its actions live")
    assert sdk.run_action(context(), 'std.echo', output=3) == 3


def test_a_hot_provider_built_from_the_entry_point_does_not_listen(
        tree, scan, monkeypatch):
    """The entry point's hot provider, where nothing else built one:
    on the process's configuration, without a signal listener."""
    publish(tree, scan)
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    hotload_conf.register_opts(conf)
    conf.set_override('state_dir', scan.states.state_dir, 'hotload')
    conf.set_override('actions_dir', tree.root, 'hotload')
    conf.set_override('action_prefix', 'hot', 'hotload')
    monkeypatch.setattr(cfg, 'CONF', conf)
    monkeypatch.setattr(importlib.metadata, 'entry_points', lambda group: [
        importlib.metadata.EntryPoint('hotload', _sdk_actions.HOT_PROVIDER,
                                      group)])
    (hot,), _ = _sdk_actions.entry_point_providers()
    assert hot._listen is False
    assert hot.find('hot.inner.seed') is not None


def test_set_providers_returns_the_previous_setting(provider):
    first = [Provider()]
    assert sdk.set_providers(first) is None
    assert sdk.set_providers(None) == first


CALLER = '''
from mistral_lib import actions

from hotload import sdk


class Caller(actions.Action):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def run(self, context):
        return sdk.run_action(context, self.inner, who="cli")
'''


def test_mistral_hotload_run_finds_hot_actions_without_mistral(
        tree, scan, tmp_path):
    """``mistral-hotload run``: no Mistral, so the entry points' providers;
    the inner hot action is served, Mistral's std.* are not there."""
    tree.write('caller.py', CALLER)
    publish(tree, scan)
    conf = tmp_path / 'hotload.conf'
    conf.write_text(f'[hotload]\nactions_dir = {tree.root}\n'
                    f'state_dir = {scan.states.state_dir}\n'
                    f'action_prefix = hot\n')

    def run(inner):
        result = subprocess.run(
            [sys.executable, '-m', 'hotload.cli.main', '--config-file',
             str(conf), 'run', 'hot.caller.caller', '--input',
             json.dumps({'inner': inner}), '-f', 'json'],
            capture_output=True, text=True, timeout=120)
        return json.loads(result.stdout)

    shown = run('hot.inner.version')
    assert shown['state'] == 'SUCCESS', shown
    assert shown['result']['version'] == 'v1'
    shown = run('std.echo')
    assert shown['state'] == 'ERROR'
    assert shown['error'] == (
        "no action named 'std.echo' in the mistral.action.providers entry "
        "points (no Mistral in this process) (asked: hotload)")


def test_a_program_s_own_hot_provider_is_the_one_asked(tree, scan, provider,
                                                        monkeypatch):
    """``mistral-hotload run`` builds a hot provider: without Mistral,
    run_action asks that one, not a second instance."""
    publish(tree, scan)
    monkeypatch.setattr(importlib.metadata, 'entry_points', lambda group: [
        importlib.metadata.EntryPoint('hotload', _sdk_actions.HOT_PROVIDER,
                                      group)])
    _sdk_actions.use_hot_provider(provider)
    try:
        found, _, _ = _sdk_actions.providers()
        assert found == [provider]
        assert sdk.run_action(context(), 'hot.inner.seed') == 'seed'
    finally:
        _sdk_actions.use_hot_provider(None)
