"""Three simulated Mistral nodes share one database and one broker.

Node A (the session's node: API, engine, executor), node B (engine and
executor) and node C (an executor whose ``mistral.conf`` has no reachable
database) serve the same workflows; RabbitMQ hands each action to the
executor of whichever node is next.

Which executor ran an action is not in Mistral's API (an action
execution records no host), so it is read from the executors' logs:
``std.echo`` logs ``Running echo action [output=...]`` where it runs.

Mistral 23's executor needs no database to start, nor to run a Python
action (``std.echo``) or an ad-hoc action (sent with its base action).
It would need one for Mistral's own dynamic actions (code sources in the
database): their deserializer loads the code from the database on the
executor, so they cannot run on node C.
"""

import json
import re
import uuid

from tests.polling import wait_for

ADHOC = """---
version: '2.0'
cluster_nodes.echo:
  base: std.echo
  base-input:
    output: <% $.text %>
  input:
    - text
"""

WORKFLOW = """---
version: '2.0'
cluster_nodes_wf:
  input:
    - marker
  tasks:
    plain:
      action: std.echo output=<% $.marker + '-plain' %>
      publish:
        plain: <% task().result %>
      on-success: adhoc
    adhoc:
      action: cluster_nodes.echo text=<% $.marker + '-adhoc' %>
      publish:
        adhoc: <% task().result %>
  output:
    plain: <% $.plain %>
    adhoc: <% $.adhoc %>
"""

RUNS = 20
ECHOED = re.compile(r'Running echo action \[output=(\S+?), delay=')


def echoed_by(cluster, token: str) -> dict[str, str]:
    """``{echoed text: host of the executor}``, for texts from ``token``."""
    found = {}
    for host, log in cluster.server_logs('executor').items():
        for text in ECHOED.findall(log.read_text()):
            if text.startswith(token):
                assert text not in found, \
                    f'{text} ran on {found[text]} and on {host}'
                found[text] = host
    return found


def test_workflows_run_on_the_executors_of_every_node(cluster):
    node = cluster.node
    client = node.client
    c_conf = cluster.c.config_file.read_text()
    assert 'connection = postgresql+psycopg2://postgres@127.0.0.1:1/' \
        in c_conf
    assert cluster.c.servers == ('executor',)
    assert cluster.b.servers == ('engine', 'executor')
    assert len({m.host for m in cluster.nodes.values()}) == 3

    client.actions.create(ADHOC)
    client.workflows.create(WORKFLOW)
    token = uuid.uuid4().hex[:8]
    markers = [f'{token}-{i}' for i in range(RUNS)]
    for marker in markers:
        execution = node.run('cluster_nodes_wf', marker=marker)
        assert execution.state == 'SUCCESS', execution.state_info
        assert json.loads(execution.output) == {
            'plain': f'{marker}-plain', 'adhoc': f'{marker}-adhoc'}

    expected = {f'{m}-{kind}' for m in markers for kind in ('plain', 'adhoc')}

    def all_logged():
        found = echoed_by(cluster, token)
        return found if set(found) == expected else None

    ran = wait_for(all_logged, 'every action in an executor log')
    hosts = set(ran.values())
    assert len(hosts) >= 2, hosts
    # Node C ran Python and ad-hoc actions without a database, and never
    # tried to reach one.
    on_c = {text.rsplit('-', 1)[1] for text, host in ran.items()
            if host == cluster.c.host}
    assert on_c == {'plain', 'adhoc'}, ran
    c_log = cluster.c.server_log('executor').read_text()
    for sign in ('OperationalError', 'DBConnectionError', ' ERROR '):
        assert sign not in c_log
    # None of the servers of any node restarted.
    assert cluster.server_pids() == cluster.started_pids
