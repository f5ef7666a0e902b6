"""One drop, every node: hot actions across three simulated Mistral nodes.

Node A runs Mistral's API, engine and executor and the publisher daemon
(it watches the actions directory); node B an engine, an executor and a
mirror daemon; node C an executor without a database and a mirror
daemon (see ``Cluster`` in conftest.py). They share one RabbitMQ and one
PostgreSQL and nothing else: no file system, no state directory.

Which executor ran an action is what the action itself says: it returns
``cfg.CONF.host`` of the process it runs in, Mistral's ``[DEFAULT] host``
of that node. Which engines took part is what their logs say (Mistral's
workflow trace, "Starting workflow"); which processes loaded which
version is what their providers say (``mistral-hotload status
--all-hosts``).
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import uuid

from hotload import manifest as manifest_mod
from hotload import store
from tests.polling import wait_for

WHERE = textwrap.dedent('''
    from mistral_lib import actions
    from oslo_config import cfg


    class Where(actions.Action):
        """Say which version ran, and on which node."""

        def __init__(self, marker):
            super().__init__()
            self.marker = marker

        def run(self, context):
            return {{'version': {version!r}, 'host': cfg.CONF.host,
                    'marker': self.marker}}
''')

EVIL = textwrap.dedent('''
    from mistral_lib import actions


    class Where(actions.Action):
        """Not what the publisher signed."""

        def __init__(self, marker):
            super().__init__()

        def run(self, context):
            return {'version': 'rogue'}
''')


def where_workflow(name: str, action: str) -> str:
    return textwrap.dedent(f'''
        ---
        version: '2.0'
        {name}:
          input: [marker]
          tasks:
            call:
              action: {action} marker=<% $.marker %>
              publish:
                said: <% task().result %>
          output:
            said: <% $.said %>
    ''')


def hotload(config_file, *args) -> subprocess.CompletedProcess:
    """The mistral-hotload CLI with one node's ``mistral.conf``."""
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', '--config-file',
         str(config_file), *args], capture_output=True, text=True,
        timeout=120)


def cluster_status(config_file, *args) -> tuple[int, dict]:
    result = hotload(config_file, 'status', '--cluster', '-f', 'json',
                     *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def all_ok(node) -> tuple[int, dict] | None:
    """``status --cluster`` once every node it lists is ``ok``."""
    code, found = cluster_status(node.harness.config_file)
    ok = found['nodes'] and all(n['state'] == 'ok' for n in found['nodes'])
    return (code, found) if ok else None


def content_key(daemon, module: str) -> str:
    """The content key the node's daemon serves for ``module``."""
    return daemon.states.load().modules[module].good.content_key


def start(node, workflow: str, markers: list[str]) -> list[str]:
    """Start one execution per marker, one after another; their ids."""
    return [node.client.executions.create(
        workflow, workflow_input={'marker': marker}).id
        for marker in markers]


def results(node, ids: list[str]) -> list[dict]:
    """What each execution said; every one must have succeeded."""
    said = []
    for execution_id in ids:
        execution = node.wait_execution(execution_id, timeout=120)
        assert execution.state == 'SUCCESS', execution.state_info
        said.append(json.loads(execution.output)['said'])
    return said


def loaded_by(node, key: str) -> set[tuple[str, str]]:
    """``{(host, service)}`` of the Mistral processes that loaded ``key``."""
    result = node.hotload('status', '--all-hosts', '-f', 'json')
    assert result.stdout, result.stderr
    return {(p['host'], p['service'])
            for p in json.loads(result.stdout)['processes']
            if any(key in mount for mount in p.get('loaded', ()))}


def engines_that_started(cluster, workflow: str, token: str) -> set[str]:
    """Hosts whose engine log says it started ``workflow`` for ``token``."""
    line = f"Starting workflow [name={workflow}, input={{'marker': '{token}-"
    return {host for host, log in cluster.server_logs('engine').items()
            if line in log.read_text()}


def test_one_drop_runs_on_every_engine_and_executor(cluster):
    node = cluster.node
    node.client.workflows.create(where_workflow('where_wf', 'hot.where.where'))
    node.write('where.py', WHERE.format(version=1))
    node.wait_listed('hot.where.where')
    key = content_key(node.daemon, 'where')

    token = uuid.uuid4().hex[:8]
    markers = [f'{token}-{i}' for i in range(50)]
    said = results(node, start(node, 'where_wf', markers))
    # RabbitMQ hands each start to whichever engine takes it first, and
    # on a busy machine one engine can take a whole burst: keep starting
    # until both engines' logs say they started some (they must, soon).
    engines = set(cluster.server_logs('engine'))

    def every_engine_started():
        if engines_that_started(cluster, 'where_wf', token) == engines:
            return True
        more = [f'{token}-{len(markers) + i}' for i in range(10)]
        said.extend(results(node, start(node, 'where_wf', more)))
        markers.extend(more)
        return False

    try:
        wait_for(every_engine_started, 'both engines to start where_wf',
                 deadline=120)
    except AssertionError as exc:
        started = engines_that_started(cluster, 'where_wf', token)
        raise AssertionError(f'{exc}: after {len(markers)} executions only '
                             f'{sorted(started)} did') from None

    assert [s['marker'] for s in said] == markers
    assert {s['version'] for s in said} == {1}
    hosts = {member.host for member in cluster.nodes.values()}
    assert {s['host'] for s in said} == hosts
    # Every executor loaded exactly that version (the providers' status).
    expected = {(m.host, 'executor') for m in cluster.nodes.values()}
    seen: set = set()

    def all_loaded():
        seen.update(loaded_by(node, key))
        return expected <= seen and any(
            service == 'engine' for _, service in seen)

    try:
        wait_for(all_loaded, f'every executor and an engine to report '
                             f'content {key} loaded')
    except AssertionError as exc:
        raise AssertionError(f'{exc}; only {sorted(seen)} did') from None

    cluster.wait_converged()
    code, found = wait_for(lambda: all_ok(node), 'status --cluster: all ok')
    assert found['generation'] == node.daemon.generation()
    assert {n['host'] for n in found['nodes']} >= hosts
    # Earlier tests may have left a broken file on A: exit status 1.
    assert code == (1 if found['errors'] else 0), found


def test_edit_while_it_propagates_never_fails(cluster):
    node = cluster.node
    node.client.workflows.create(where_workflow('edit_wf', 'hot.edit.where'))
    node.write('edit.py', WHERE.format(version='old'))
    node.wait_listed('hot.edit.where')
    old = cluster.wait_converged()

    token = uuid.uuid4().hex[:8]
    node.write('edit.py', WHERE.format(version='new'))
    ids, count = [], 0
    # Workflows start continuously until every node has the edit.
    while not (node.daemon.generation() > old and cluster.converged()):
        ids += start(node, 'edit_wf', [f'{token}-{count}'])
        count += 1
    ids += start(node, 'edit_wf', [f'{token}-{count + i}' for i in range(5)])
    during = results(node, ids)
    assert {s['version'] for s in during} <= {'old', 'new'}

    # Converged: every process serves the new generation, and only the
    # new version runs, wherever.
    wait_for(lambda: all_ok(node), 'status --cluster to say converged')
    after = results(node, start(node, 'edit_wf',
                                [f'{token}-after-{i}' for i in range(15)]))
    assert {s['version'] for s in after} == {'new'}
    assert len({s['host'] for s in after}) >= 2


def test_executor_fetches_content_its_mirror_lacks(cluster):
    node = cluster.node
    mirror_c = cluster.daemons['c']
    mirror_c.kill()
    try:
        node.client.workflows.create(
            where_workflow('fetch_wf', 'hot.fetched.where'))
        node.write('fetched.py', WHERE.format(version='fetched'))
        node.wait_listed('hot.fetched.where')
        key = content_key(node.daemon, 'fetched')
        wait_for(lambda: cluster.daemons['b'].digest()
                 == node.daemon.digest(), 'the mirror of node B')
        # Node C's state directory never gets it while its mirror is down.
        assert not os.path.exists(mirror_c.states.blobs.path(
            node.daemon.states.load().modules['fetched'].good.sha256))

        token = uuid.uuid4().hex[:8]
        count = 0

        def ran_on_c():
            nonlocal count
            count += 1
            said = results(node, start(node, 'fetch_wf',
                                       [f'{token}-{count}']))[0]
            assert said['version'] == 'fetched'
            return said['host'] == cluster.c.host

        wait_for(ran_on_c, 'an execution on node C', deadline=120)
        # Its executor fetched exactly that content from the publisher.
        log = cluster.c.server_log('executor').read_text()
        assert key in log, 'no fetch of the content in node C\'s log'
    finally:
        mirror_c.start()
    cluster.wait_converged('node C\'s mirror to catch up')
    assert mirror_c.generation() == node.daemon.generation()


def test_publisher_down_every_node_serves_then_catches_up(cluster):
    node = cluster.node
    node.client.workflows.create(where_workflow('down_wf', 'hot.down.where'))
    node.write('down.py', WHERE.format(version='before'))
    node.wait_listed('hot.down.where')
    cluster.wait_converged()

    node.daemon.kill()
    try:
        token = uuid.uuid4().hex[:8]
        said = results(node, start(node, 'down_wf',
                                   [f'{token}-{i}' for i in range(12)]))
        assert {s['version'] for s in said} == {'before'}
        assert len({s['host'] for s in said}) >= 2
        code, found = cluster_status(cluster.b.config_file)
        assert code == 2, found
        assert 'unreachable' in str(found['publisher'])
    finally:
        node.daemon.start()
    node.write('after.py', WHERE.format(version='after'))
    node.wait_listed('hot.after.where')
    generation = cluster.wait_converged()
    assert set(cluster.generations().values()) == {generation}


#: A rogue publisher: node A's broker and topics, another key and host.
#: It serves the forged state directory it is given and announces its
#: generation until its standard input closes.
ROGUE = textwrap.dedent('''
    import sys, threading
    from hotload import conf as hotload_conf, publication, store
    conf = hotload_conf.load([sys.argv[1]])
    hotload_conf.register_host_opt(conf)
    conf.set_override('host', 'rogue-node')
    conf.set_override('cluster_key', 'not-the-cluster-key', 'hotload')
    conf.set_override('state_dir', sys.argv[2], 'hotload')
    states = store.ManifestStore(sys.argv[2])
    rogue = publication.Publication(conf, states)
    rogue.start()
    rogue.server.started.wait(30)
    print('serving', flush=True)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()),
                     daemon=True).start()
    while not closed.wait(0.3):
        rogue.announce(states.load())
    rogue.close()
''')


def test_rogue_publisher_is_refused_by_every_mirror(cluster, tmp_path):
    node = cluster.node
    node.write('guarded.py', WHERE.format(version='signed'))
    node.wait_listed('hot.guarded.where')
    generation = cluster.wait_converged()
    digest = node.daemon.digest()

    # The rogue serves a later generation in which hot.guarded.where is
    # other code, signed with another key.
    rogue = store.ManifestStore(str(tmp_path / 'rogue-state'))
    rogue.ensure()
    current = node.daemon.states.load()
    record = current.modules['guarded']
    evil_sha = rogue.blobs.put(EVIL.encode())
    good = dataclasses.replace(
        record.good, sha256=evil_sha, content_key=manifest_mod.content_key(
            'guarded', evil_sha, record.good.imports))
    forged = dataclasses.replace(
        current, generation=generation + 1000,
        modules={**current.modules,
                 'guarded': dataclasses.replace(record, good=good)})
    rogue.publish(forged)
    mirrors = {letter: cluster.daemons[letter] for letter in ('b', 'c')}
    with subprocess.Popen(
            [sys.executable, '-c', ROGUE, str(cluster.a.config_file),
             rogue.state_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) as server:
        try:
            assert server.stdout.readline() == 'serving\n'

            # Each mirror says why, in its log (and in its status file,
            # until its next exchange with the real publisher).
            def refused_everywhere():
                return all('has a wrong signature' in m.log_path.read_text()
                           for m in mirrors.values())

            wait_for(refused_everywhere, 'every mirror to refuse the rogue')
            for letter, mirror in mirrors.items():
                assert mirror.digest() == digest, letter
                assert mirror.generation() == generation, letter
                assert not os.path.exists(mirror.states.blobs.path(evil_sha))
        finally:
            server.stdin.close()
            server.wait(timeout=30)
    node.client.workflows.create(
        where_workflow('guarded_wf', 'hot.guarded.where'))
    said = results(node, start(node, 'guarded_wf',
                               [f'after-rogue-{i}' for i in range(6)]))
    assert {s['version'] for s in said} == {'signed'}
    assert cluster.converged()
    # The publisher's next generation clears the mirrors' report of the
    # rogue (and leaves them as the next test expects them); the
    # publisher's status still names the other publisher it heard, for a
    # while (RIVAL_MEMORY checks).
    node.write('after_rogue.py', WHERE.format(version='after'))
    node.wait_listed('hot.after_rogue.where')
    cluster.wait_converged()
    mirrors = {cluster.b.host, cluster.c.host}
    seen: dict = {}

    def mirrors_ok():
        seen.update(cluster_status(node.harness.config_file)[1])
        states = {n['host']: n['state'] for n in seen['nodes']}
        return all(states.get(host) == 'ok' for host in mirrors)

    try:
        wait_for(mirrors_ok, 'status --cluster: both mirrors ok again')
    except AssertionError as exc:
        raise AssertionError(f'{exc}: {json.dumps(seen, indent=1)}') \
            from None
    publisher = next(n for n in seen['nodes'] if n['host'] == cluster.a.host)
    assert 'another publisher, rogue-node' in json.dumps(publisher), seen
