"""``mistral-hotload doctor`` on broken setups, run as an operator runs it.

The good setup, a real Mistral node, is in tests/functional/test_doctor.py.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from oslo_config import cfg

from hotload import conf as hotload_conf
from hotload import trust
from hotload.cli import doctor
from hotload.cli import doctor_cluster
from hotload.cli import doctor_mistral

CHECKS = ['provider', 'allow/deny lists', 'actions_dir', 'state_dir',
          'broker', 'daemon']
CLUSTER_CHECKS = [*CHECKS, 'mode', 'cluster_key', 'publisher']


def write_conf(path, text: str) -> str:
    path = str(path)
    with open(path, 'w') as stream:
        stream.write(textwrap.dedent(text))
    return path


def run_doctor(config: str, *args: str,
               env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file', config,
         'doctor', *args],
        capture_output=True, text=True, timeout=180, env=env)


def rows_of(result: subprocess.CompletedProcess,
            checks: list[str] = CHECKS) -> dict[str, dict]:
    rows = json.loads(result.stdout)
    assert [r['Check'] for r in rows] == checks
    return {r['Check']: r for r in rows}


@pytest.fixture(scope='module')
def fresh_python(tmp_path_factory) -> str:
    """The Python of a new virtualenv without this project (or Mistral)."""
    venv = tmp_path_factory.mktemp('fresh') / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)],
                   check=True, timeout=120)
    return str(venv / 'bin' / 'python')


@pytest.fixture
def actions_dir(tmp_path) -> str:
    os.chmod(tmp_path, 0o755)
    root = tmp_path / 'actions'
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    return str(root)


def test_broken_setup_names_each_problem_and_its_fix(tmp_path, actions_dir,
                                                     fresh_python):
    os.chmod(actions_dir, 0o777)
    state_dir = str(tmp_path / 'state')
    config = write_conf(tmp_path / 'mistral.conf', f'''
        [DEFAULT]
        transport_url = rabbit://guest:secret-pw@127.0.0.1:1/
        [action_providers]
        denylist = legacy,hot*
        [hotload]
        actions_dir = {actions_dir}
        state_dir = {state_dir}
    ''')
    result = run_doctor(config, '--mistral-python', fresh_python,
                        '-f', 'json')
    assert result.returncode == 1, result.stderr
    rows = rows_of(result)
    prefix = os.path.dirname(os.path.dirname(fresh_python))

    provider = rows['provider']
    assert provider['Result'] == 'FAIL'
    assert f'pip install mistral-hotload into {prefix}' in provider['Detail']
    assert f'{fresh_python} -m pip install mistral-hotload' \
        in provider['Detail']

    lists = rows['allow/deny lists']
    assert lists['Result'] == 'FAIL'
    assert 'matched by hot*' in lists['Detail']
    assert 'denylist = legacy and restart' in lists['Detail']

    actions = rows['actions_dir']
    assert actions['Result'] == 'FAIL'
    assert 'writable by everyone' in actions['Detail']
    assert actions['Detail'].endswith(f'fix: chmod go-w {actions_dir}')

    assert rows['state_dir']['Result'] == 'warning'
    assert 'the daemon creates it' in rows['state_dir']['Detail']

    broker = rows['broker']
    assert broker['Result'] == 'FAIL'
    assert 'broker 127.0.0.1:1 unreachable (Connection refused)' \
        in broker['Detail']
    assert 'providers still pick up new generations' in broker['Detail']

    assert rows['daemon']['Result'] == 'FAIL'
    assert 'start it: systemctl start mistral-hotload' \
        in rows['daemon']['Detail']

    for secret in ('secret-pw', 'guest'):
        assert secret not in result.stdout + result.stderr


def test_mistral_python_is_found_from_mistral_server_on_path(
        tmp_path, actions_dir, fresh_python):
    config = write_conf(tmp_path / 'mistral.conf', f'''
        [hotload]
        actions_dir = {actions_dir}
        state_dir = {tmp_path / 'state'}
    ''')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    env = dict(os.environ, PATH=str(bin_dir))
    rows = rows_of(run_doctor(config, '-f', 'json', env=env))
    assert rows['provider']['Result'] == 'FAIL'
    assert 'no Mistral found: no mistral-server on PATH; pass ' \
        '--mistral-server PATH' in rows['provider']['Detail']

    server = bin_dir / 'mistral-server'
    server.write_text(f'#!{fresh_python}\nimport sys\n')
    server.chmod(0o755)
    rows = rows_of(run_doctor(config, '-f', 'json', env=env))
    assert rows['provider']['Result'] == 'FAIL'
    assert f'(from the #! line of {server})' in rows['provider']['Detail']
    assert 'pip install mistral-hotload into' in rows['provider']['Detail']


@pytest.mark.parametrize('head, expected', [
    ('#!/opt/mistral/bin/python3\n', '/opt/mistral/bin/python3'),
    ('#! /opt/mistral/bin/python -s\n', '/opt/mistral/bin/python'),
    ('#!/bin/sh\n\'\'\'exec\' "/opt/a b/bin/python" "$0" "$@"\n\' \'\'\'\n',
     '/opt/a b/bin/python'),
])
def test_interpreter_of_reads_shebangs(tmp_path, head, expected):
    script = tmp_path / 'mistral-server'
    script.write_text(head + 'import sys\n')
    assert doctor_mistral.interpreter_of(str(script)) == expected


def test_interpreter_of_a_shell_script_is_not_python(tmp_path):
    script = tmp_path / 'mistral-server'
    script.write_text('#!/bin/bash\nexec something\n')
    with pytest.raises(doctor_mistral.NotFound,
                       match='run by /bin/bash, not by'):
        doctor_mistral.interpreter_of(str(script))


@pytest.mark.parametrize('allowlist, denylist, expected', [
    ([], [], None),
    ([], ['legacy'], None),
    ([], ['legacy', 'hot*'], ['hot*']),
    (['legacy'], [], []),
    # Mistral ignores the denylist when there is an allowlist.
    (['hotload'], ['*'], None),
    (['HOTLOAD'], [], []),
])
def test_allow_deny_semantics_are_mistrals(allowlist, denylist, expected):
    assert doctor_mistral.filtered_by_allow_deny_list(
        allowlist, denylist, 'hotload') == expected


def test_allowlist_without_hotload_names_the_line_to_set(tmp_path):
    config = write_conf(tmp_path / 'mistral.conf', '''
        [action_providers]
        allowlist = legacy, adhoc
    ''')
    conf = hotload_conf.load([config])
    row = doctor_mistral.check_allow_deny(conf)
    assert row.result == 'FAIL'
    assert f'allowlist = legacy,adhoc in {config} does not include ' \
        'hotload' in row.detail
    assert 'set in [action_providers]: allowlist = legacy,adhoc,hotload' \
        in row.detail


def test_mistral_options_are_registered_once():
    conf = cfg.ConfigOpts()
    conf.register_opts(doctor_mistral.action_providers_opts,
                       group='action_providers')
    conf(args=[])
    doctor_mistral.register_mistral_opts(conf)
    assert conf.action_providers.allowlist == []


def test_refused_files_under_a_trusted_directory_are_a_warning(
        tmp_path, actions_dir):
    for name in ('a.py', 'b.py', 'c.py', 'd.py', '.hidden.py', 'notes.txt'):
        path = os.path.join(actions_dir, name)
        with open(path, 'w') as stream:
            stream.write('x = 1\n')
        os.chmod(path, 0o666)
    os.mkdir(os.path.join(actions_dir, 'sub'), 0o777)
    os.chmod(os.path.join(actions_dir, 'sub'), 0o777)
    with open(os.path.join(actions_dir, 'sub', 'e.py'), 'w') as stream:
        stream.write('x = 1\n')
    config = write_conf(tmp_path / 'c.conf', f'''
        [hotload]
        actions_dir = {actions_dir}
        state_dir = {tmp_path / 'state'}
    ''')
    row = doctor.check_actions_dir(hotload_conf.load([config]))
    assert row.result == 'warning'
    assert 'the daemon refuses 5 entries under it: a.py: file is ' \
        'writable by everyone' in row.detail
    assert 'c.py: file is writable by everyone' in row.detail
    assert '(and 2 more)' in row.detail
    refused = doctor.refused_under(actions_dir, trust.TrustPolicy([], 1000))
    assert 'sub/e.py: directory sub is writable by everyone (mode 0777)' \
        in refused
    assert f'fix: chmod -R go-w {actions_dir}' in row.detail


def test_a_file_refused_by_its_name_gets_a_rename_not_chmod(
        tmp_path, actions_dir):
    path = os.path.join(actions_dir, 'my-tool.py')
    with open(path, 'w') as stream:
        stream.write('x = 1\n')
    os.chmod(path, 0o644)
    config = write_conf(tmp_path / 'c.conf', f'''
        [hotload]
        actions_dir = {actions_dir}
        state_dir = {tmp_path / 'state'}
    ''')
    row = doctor.check_actions_dir(hotload_conf.load([config]))
    assert row.result == 'warning'
    assert 'my-tool.py: not a valid Python module name; rename the file ' \
        'to letters, digits and underscores' in row.detail
    assert 'chmod' not in row.detail and 'chown' not in row.detail


# A node of a cluster: mode, cluster_key, publisher.

SHORT_KEY = 'short-secret-key'
LONG_KEY = 'a-long-enough-secret-' + 'x' * 20


def cluster_conf(tmp_path, hotload: str, default: str = '') -> cfg.ConfigOpts:
    path = tmp_path / 'c.conf'
    path.write_text(f'[DEFAULT]\n{default}\n[hotload]\n'
                    f'state_dir = {tmp_path / "state"}\n'
                    f'actions_dir = {tmp_path / "no-such-dir"}\n'
                    f'{hotload}\n')
    return hotload_conf.load([str(path)])


def test_a_mirror_without_actions_dir_with_a_short_key(tmp_path,
                                                       fresh_python):
    config = write_conf(tmp_path / 'mistral.conf', f'''
        [DEFAULT]
        transport_url = rabbit://guest:secret-pw@127.0.0.1:1/
        [hotload]
        mode = mirror
        cluster_key = {SHORT_KEY}
        state_dir = {tmp_path / 'state'}
    ''')
    result = run_doctor(config, '--mistral-python', fresh_python,
                        '-f', 'json')
    assert result.returncode == 1, result.stderr
    rows = rows_of(result, CLUSTER_CHECKS)
    assert rows['actions_dir'] == {
        'Check': 'actions_dir', 'Result': 'ok',
        'Detail': 'none needed: mode = mirror serves the publisher\'s '
                  'generations'}
    assert rows['mode']['Result'] == 'ok'
    assert rows['mode']['Detail'].startswith('mirror: copies the '
                                             'publisher\'s signed')
    key = rows['cluster_key']
    assert key['Result'] == 'warning'
    assert f'only {len(SHORT_KEY)} characters' in key['Detail']
    assert 'openssl rand -hex 32' in key['Detail']
    publisher = rows['publisher']
    assert publisher['Result'] == 'FAIL'
    assert 'cannot be asked: broker 127.0.0.1:1 unreachable (Connection ' \
        'refused); start the broker' in publisher['Detail']
    for secret in (SHORT_KEY, 'secret-pw', 'guest'):
        assert secret not in result.stdout + result.stderr


def test_a_single_node_has_no_cluster_rows(tmp_path):
    conf = cluster_conf(tmp_path, '')
    assert doctor_cluster.checks(conf) == []


@pytest.mark.parametrize('hotload, default, result, says', [
    ('mode = mirror', '', 'FAIL',
     'mode = mirror, but the daemon refuses to start without [hotload] '
     'cluster_key (the publisher\'s value) and [DEFAULT] transport_url '
     '(the broker the publisher uses); set [hotload] cluster_key and '
     '[DEFAULT] transport_url'),
    (f'mode = mirror\ncluster_key = {LONG_KEY}', '', 'FAIL',
     'refuses to start without [DEFAULT] transport_url'),
    (f'cluster_key = {LONG_KEY}', 'transport_url = rabbit://h:1/', 'FAIL',
     'is not a directory: create it (install -d -m 0755 -o root '),
    (f'cluster_key = {LONG_KEY}', '', 'FAIL',
     'or, if another node publishes, set [hotload] mode = mirror on '
     'this one'),
])
def test_mode_names_what_is_missing(tmp_path, hotload, default, result,
                                    says):
    row = doctor_cluster.check_mode(cluster_conf(tmp_path, hotload,
                                                 default))
    assert (row.check, row.result) == ('mode', result)
    assert says in row.detail
    assert LONG_KEY not in row.detail


def test_a_publisher_without_transport_cannot_serve_mirrors(tmp_path):
    actions = tmp_path / 'actions'
    actions.mkdir()
    row = doctor_cluster.check_mode(cluster_conf(
        tmp_path, f'cluster_key = {LONG_KEY}\nactions_dir = {actions}'))
    assert row.result == 'warning'
    assert 'no mirror can reach it' in row.detail


@pytest.mark.parametrize('hotload, result, says', [
    ('mode = mirror', 'FAIL', 'not set: a mirror checks every generation '
                              'with it and refuses to start without it'),
    (f'cluster_key = {SHORT_KEY}', 'warning', 'use at least 32 random'),
    (f'cluster_key = {LONG_KEY}', 'ok',
     f'set ({len(LONG_KEY)} characters, not shown)'),
])
def test_cluster_key_is_checked_and_never_shown(tmp_path, hotload, result,
                                                says):
    row = doctor_cluster.check_cluster_key(cluster_conf(tmp_path, hotload))
    assert row.result == result
    assert says in row.detail
    assert SHORT_KEY not in row.detail and LONG_KEY not in row.detail


def test_publisher_cannot_be_asked_without_transport(tmp_path):
    row = doctor_cluster.check_publisher(cluster_conf(
        tmp_path, f'mode = mirror\ncluster_key = {LONG_KEY}'))
    assert row.result == 'FAIL'
    assert 'cannot be asked without [DEFAULT] transport_url' in row.detail
