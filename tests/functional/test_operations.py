"""Operating a node: status of every process, disable/enable, SIGHUP."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

from tests.functional.conftest import wait_for
from tests.functional.test_hot_actions import GREET
from tests.functional.test_hot_actions import said
from tests.functional.test_hot_actions import workflow


def status(node, *args):
    result = node.hotload('status', '-f', 'json', *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_lists_every_mistral_process(node):
    node.write('seen.py', GREET.format(greeting='seen'))
    node.wait_listed('hot.seen.greet')
    generation = node.daemon.generation()

    def converged():
        code, found = status(node)
        services = {p['service']: p for p in found['processes']}
        ready = {'api', 'engine', 'executor'} <= set(services) and all(
            p['generation'] == generation for p in services.values())
        return (code, found, services) if ready else None

    code, found, services = wait_for(converged, 'every process to answer')
    assert found['generation'] == generation
    assert found['daemon'].startswith('running')
    workers = {pid for _, (_, children) in node.server_pids().items()
               for pid in children}
    for name in ('api', 'engine', 'executor'):
        assert services[name]['pid'] in workers
        assert services[name]['state'] == 'ok'
    # Earlier tests may have left a broken file: that is exit status 1.
    assert code == (1 if found['errors'] else 0)


LAGGARD = textwrap.dedent('''
    import sys
    from oslo_config import cfg
    from hotload import conf, provider
    conf.register_opts(cfg.CONF)
    cfg.CONF(['--config-file', sys.argv[1]])
    cfg.CONF.set_override('state_dir', sys.argv[2], 'hotload')
    p = provider.HotloadActionProvider('hotload')
    print(p.generation, flush=True)
    sys.stdin.read()
''')


def test_status_shows_a_lagging_process_and_exits_2(node, tmp_path):
    node.write('before.py', GREET.format(greeting='before'))
    node.wait_listed('hot.before.greet')
    # A provider frozen on a copy of the state directory: a process that
    # serves an old generation, as one with a stale state_dir would.
    frozen = tmp_path / 'frozen-state'
    shutil.copytree(node.daemon.states.state_dir, frozen,
                    ignore=shutil.ignore_patterns('lock'))
    laggard = subprocess.Popen(
        [sys.executable, '-c', LAGGARD, str(node.harness.config_file),
         str(frozen)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        old = int(laggard.stdout.readline())
        node.write('after.py', GREET.format(greeting='after'))
        node.wait_listed('hot.after.greet')
        assert node.daemon.generation() > old

        def lagging():
            code, found = status(node)
            late = [p for p in found['processes']
                    if p['pid'] == laggard.pid and p['state'] == 'lagging']
            return (code, late) if late else None

        code, late = wait_for(lagging, 'the laggard to be reported')
        assert code == 2
        assert late[0]['generation'] == old
        table = node.hotload('status')
        assert table.returncode == 2
        assert f'pid {laggard.pid}' in table.stdout
        assert 'LAGGING' in table.stdout
    finally:
        laggard.stdin.close()
        laggard.wait(timeout=30)


def test_disable_and_enable_reach_mistral_and_survive_restart(node):
    node.write('toggled.py', GREET.format(greeting='on'))
    node.wait_listed('hot.toggled.greet')
    result = node.hotload('disable', 'hot.toggled.greet')
    assert result.returncode == 0, result.stderr
    node.wait_unlisted('hot.toggled.greet')

    node.daemon.kill(signal.SIGTERM)
    node.daemon.start()
    assert 'hot.toggled.greet' not in node.listed()
    listed = node.hotload('action', 'list', '--all', '-f', 'json')
    assert {'name': 'hot.toggled.greet', 'enabled': False}.items() <= {
        k: v for row in json.loads(listed.stdout)
        if row['name'] == 'hot.toggled.greet' for k, v in row.items()
    }.items()

    assert node.hotload('enable', 'hot.toggled.greet').returncode == 0
    node.wait_listed('hot.toggled.greet')
    unknown = node.hotload('disable', 'hot.no.such')
    assert unknown.returncode == 1
    assert 'no hot action named hot.no.such' in unknown.stderr


def test_sighup_with_a_new_prefix_renames_everywhere(node, tmp_path):
    node.write('renamed.py', GREET.format(greeting='named'))
    node.wait_listed('hot.renamed.greet')
    extra = tmp_path / 'prefix.conf'
    extra.write_text('[hotload]\naction_prefix = fresh\n')
    node.daemon.kill(signal.SIGTERM)
    # Start with an extra config file, then change it and send SIGHUP.
    node.daemon.extra_args = ['--config-file', str(extra)]
    node.daemon.start()
    extra.write_text('[hotload]\naction_prefix = renamed\n')
    os.kill(node.daemon.process.pid, signal.SIGHUP)
    node.wait_listed('renamed.renamed.greet')
    assert not any(name.startswith('hot.') for name in node.listed())
    extra.write_text('[hotload]\naction_prefix = hot\n')
    os.kill(node.daemon.process.pid, signal.SIGHUP)
    node.wait_listed('hot.renamed.greet')


def test_action_show_names_version_and_who_loaded_it(node):
    node.client.workflows.create(workflow('shown_wf', 'hot.shown.greet',
                                          ['who']))
    path = node.write('shown.py', GREET.format(greeting='shown'))
    node.wait_listed('hot.shown.greet')
    assert said(node.run('shown_wf', who='x')) == 'shown x'
    result = node.hotload('action', 'show', 'hot.shown.greet', '-f', 'json')
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown['file'] == 'shown.py'
    assert shown['line'] == GREET.format(greeting='').splitlines().index(
        'class Greet(actions.Action):') + 1
    assert shown['input'] == 'who'
    assert shown['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The engine instantiated it and the executor ran it; the API only
    # listed it, from the manifest, without importing the module.
    services = {line.split()[0] for line in shown['loaded_by']}
    assert services == {'engine', 'executor'}, shown['loaded_by']
    missing = node.hotload('action', 'show', 'hot.not.there')
    assert missing.returncode == 1
    assert 'no hot action named hot.not.there' in missing.stderr
