"""``status --cluster`` without a broker: the states of daemons and
processes, the exit status, and the publisher's check of its mirrors.

The gathering over a real RabbitMQ is in
tests/functional/test_cluster_daemons.py.
"""

import datetime
import os

import pytest
from oslo_config import cfg

from hotload import cluster
from hotload import conf as hotload_conf
from hotload import manifest
from hotload import signals
from hotload import store
from hotload.cli import cluster as cluster_cli

KEY = 'k' * 40
REQUEST = 'request-1'
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
DIGEST = 'a' * 64
OTHER = 'b' * 64


def ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).isoformat()


def publisher_answer(generation=5, published=10.0, host='node-a') -> dict:
    return {'host': host, 'generation': generation, 'digest': DIGEST,
            'published_at': ago(published)}


def daemon(host, role='mirror', generation=5, digest=DIGEST, key=KEY,
           request=REQUEST, **extra) -> dict:
    status = {'host': host, 'role': role, 'pid': 100, 'generation':
              generation, 'digest': digest, 'published_at': ago(10),
              'error': None, **extra}
    return cluster.sign_status(status, key, request) if key else status


def process(host, service='engine', generation=5, digest=DIGEST) -> dict:
    found = {'host': host, 'service': service, 'pid': 200,
             'generation': generation, 'actions': 3, 'errors': [],
             'loaded': [], 'loaded_at': 'x'}
    if digest is not None:
        found['digest'] = digest
    return found


def run(answers, publisher=None, key=KEY, grace=60.0, **gathered):
    found = cluster_cli.Gathered(
        publisher=publisher if publisher is not None
        else publisher_answer(), answers=answers, request_id=REQUEST,
        **gathered)
    return cluster_cli.report(found, key, grace, now=NOW)


def states(result) -> dict[str, str]:
    return {n['host']: n['state']
            for n in result.fields['nodes'].machine_readable()}


def converged_cluster() -> list[dict]:
    return [daemon('node-a', 'publisher', file_errors=0,
                   mirrors_seen=['node-b']),
            process('node-a'), process('node-a', 'executor'),
            daemon('node-b'), process('node-b', digest=None)]


@pytest.mark.parametrize('member, published, expected', [
    ({'generation': 5, 'digest': DIGEST}, 10, 'ok'),
    # A process that does not report its digest yet: its generation.
    ({'generation': 5}, 10, 'ok'),
    ({'generation': 4, 'digest': OTHER}, 10, 'converging'),
    ({'generation': 4, 'digest': OTHER}, 61, 'lagging'),
    ({'generation': 5, 'digest': OTHER}, 10, 'drifted'),
    ({'generation': 6, 'digest': OTHER}, 10, 'drifted'),
    ({'generation': 5, 'digest': DIGEST, 'error': 'x'}, 10, 'error'),
    # Behind with an error: behind is what it is; the error is shown.
    ({'generation': 4, 'error': 'x'}, 10, 'converging'),
    ({'generation': 5, 'verify_error': 'wrong signature'}, 10,
     'unverified'),
    ({'generation': 'five'}, 10, 'error'),
    ({'generation': True}, 10, 'error'),
])
def test_states(member, published, expected):
    reference = publisher_answer(published=published)
    assert cluster_cli.classify(member, reference, NOW, 60) == expected


def test_no_publisher_means_unknown_or_error():
    assert cluster_cli.classify({'generation': 5}, None, NOW, 60) == \
        'unknown'
    assert cluster_cli.classify({'generation': 5, 'error': 'e'}, None,
                                NOW, 60) == 'error'


def test_an_unreadable_publication_time_is_lagging_not_converging():
    reference = dict(publisher_answer(), published_at='yesterday')
    assert cluster_cli.classify({'generation': 4}, reference, NOW,
                                60) == 'lagging'


def test_a_converged_cluster_is_exit_0():
    result = run(converged_cluster())
    assert result.exit_status == 0
    assert states(result) == {'node-a': 'ok', 'node-b': 'ok'}
    fields = result.fields
    assert (fields['publisher'], fields['generation'], fields['digest']) \
        == ('node-a', 5, DIGEST)
    assert fields['errors'].machine_readable() == []
    nodes = {n['host']: n for n in fields['nodes'].machine_readable()}
    assert [p['service'] for p in nodes['node-a']['processes']] == \
        ['engine', 'executor']
    assert nodes['node-b']['daemons'][0]['verify_error'] is None
    # What is not shown is left out (a process's loaded contents).
    assert 'loaded' not in nodes['node-a']['processes'][0]


def test_file_errors_on_the_publisher_are_exit_1():
    answers = converged_cluster()
    answers[0] = daemon('node-a', 'publisher', file_errors=2)
    result = run(answers)
    assert result.exit_status == 1
    assert result.fields['errors'].machine_readable() == [
        'node-a: 2 modules have an error (the last good version, if any, '
        'is served); see mistral-hotload status on node-a']


@pytest.mark.parametrize('published, state, exit_status', [
    (10, 'converging', 1),
    (120, 'lagging', 2),
])
def test_a_node_behind_is_converging_then_lagging(published, state,
                                                  exit_status):
    answers = converged_cluster()
    answers[3] = daemon('node-b', generation=4, digest=OTHER)
    result = run(answers, publisher_answer(published=published))
    assert states(result)['node-b'] == state
    assert result.exit_status == exit_status


def test_the_grace_period_is_the_callers():
    answers = converged_cluster()
    answers[4] = process('node-b', generation=4)
    result = run(answers, publisher_answer(published=10), grace=5)
    assert states(result)['node-b'] == 'lagging'
    node_b = result.fields['nodes'].machine_readable()[1]
    assert [p['state'] for p in node_b['processes']] == ['lagging']
    assert node_b['daemons'][0]['state'] == 'ok'


@pytest.mark.parametrize('replace', [
    lambda: daemon('node-b', digest=OTHER),
    lambda: daemon('node-b', generation=6),
    lambda: process('node-a', digest=OTHER),
])
def test_drifted_is_exit_2(replace):
    answers = converged_cluster()
    answers.append(replace())
    result = run(answers)
    assert 'drifted' in states(result).values()
    assert result.exit_status == 2


@pytest.mark.parametrize('forge', [
    lambda: daemon('node-b', key='another key'),
    lambda: daemon('node-b', key=None),
    # Signed by the cluster's key, for another request: replayed.
    lambda: daemon('node-b', request='an earlier request'),
    lambda: dict(daemon('node-b', generation=4), generation=5),
])
def test_unverified_statuses_are_exit_2_and_say_why(forge):
    answers = converged_cluster()
    answers[3] = forge()
    result = run(answers)
    assert states(result)['node-b'] == 'unverified'
    assert result.exit_status == 2
    (error,) = result.fields['errors'].machine_readable()
    assert error.startswith('the status of node-b ')
    assert KEY not in error


def test_without_a_key_nothing_verifies():
    result = run(converged_cluster(), key=None)
    assert set(states(result).values()) == {'unverified'}
    assert result.exit_status == 2
    assert 'no [hotload] cluster_key is configured here' in \
        result.fields['errors'].machine_readable()[0]


def test_publisher_unreachable_is_exit_2():
    found = cluster_cli.Gathered(
        publisher_error='no answer on topic t_publisher within 2 s',
        answers=converged_cluster()[3:], request_id=REQUEST)
    result = cluster_cli.report(found, KEY, 60, now=NOW)
    assert result.exit_status == 2
    assert result.fields['publisher'] == \
        'unreachable: no answer on topic t_publisher within 2 s'
    assert result.fields['generation'] is None
    assert states(result) == {'node-b': 'unknown'}


def test_broker_unreachable_is_one_error_and_exit_2():
    why = 'broker 127.0.0.1:1 unreachable (Connection refused)'
    found = cluster_cli.Gathered(publisher_error=why, unasked=why)
    result = cluster_cli.report(found, KEY, 60, now=NOW)
    assert result.exit_status == 2
    assert result.fields['publisher'] == f'unreachable: {why}'
    assert result.fields['errors'].machine_readable() == [
        f'the publisher is unreachable: {why}']
    assert result.fields['nodes'].machine_readable() == []


def test_statuses_not_asked_is_exit_2():
    result = run([], unasked='the messaging transport failed (OSError)')
    assert result.exit_status == 2
    assert 'could not be asked: the messaging transport failed' in \
        result.fields['errors'].machine_readable()[0]


def test_a_host_without_its_daemon_is_an_error():
    answers = converged_cluster()
    answers.append(process('node-c', 'executor'))
    result = run(answers)
    assert states(result)['node-c'] == 'error'
    assert result.exit_status == 2
    assert any(e.startswith('node-c: no daemon answered')
               for e in result.fields['errors'].machine_readable())


def test_a_mirror_the_publisher_heard_but_silent_now_is_an_error():
    answers = converged_cluster()
    answers[0] = daemon('node-a', 'publisher', file_errors=0,
                        mirrors_seen=['node-b', 'node-c'])
    result = run(answers)
    assert states(result)['node-c'] == 'error'
    assert result.exit_status == 2


def test_two_publishers_are_exit_2():
    answers = converged_cluster()
    answers.append(daemon('node-x', 'publisher', file_errors=0))
    result = run(answers)
    assert result.exit_status == 2
    assert any(e.startswith('two publishers answer: node-a (pid 100), '
                            'node-x (pid 100)')
               for e in result.fields['errors'].machine_readable())


def test_the_table_has_a_line_per_host_and_member():
    answers = converged_cluster()
    answers[3] = daemon('node-b', generation=4, digest=OTHER,
                        error='the publisher is unreachable')
    table = run(answers).fields['nodes'].human_readable()
    assert table.splitlines() == [
        'node-a: ok',
        f'  publisher pid 100: generation 5, digest {DIGEST[:12]}',
        f'  engine pid 200: generation 5, digest {DIGEST[:12]}',
        f'  executor pid 200: generation 5, digest {DIGEST[:12]}',
        'node-b: converging',
        f'  mirror pid 100: generation 4, digest {OTHER[:12]} - CONVERGING',
        '    error: the publisher is unreachable',
        '  engine pid 200: generation 5, digest -',
    ]


def test_seconds_since_reads_manifest_times():
    assert cluster_cli.seconds_since(ago(30), NOW) == 30
    assert cluster_cli.seconds_since('2026-01-02T03:04:00', NOW) == 5
    assert cluster_cli.seconds_since(None, NOW) is None
    assert cluster_cli.seconds_since('', NOW) is None


# The publisher's check of its mirrors (moving the publisher).

@pytest.mark.parametrize('statuses, expected', [
    ([], None),
    # Behind or converged: nothing to do.
    ([{'role': 'mirror', 'host': 'b', 'generation': 3, 'digest': OTHER}],
     None),
    ([{'role': 'mirror', 'host': 'b', 'generation': 5, 'digest': DIGEST}],
     None),
    ([{'role': 'mirror', 'host': 'b', 'generation': 7, 'digest': OTHER}],
     cluster.Ahead('b', 7, 7, False)),
    # Generations on disk above what it serves count too.
    ([{'role': 'mirror', 'host': 'b', 'generation': 3, 'highest': 8}],
     cluster.Ahead('b', 8, 8, False)),
    ([{'role': 'mirror', 'host': 'b', 'generation': 5, 'digest': OTHER}],
     cluster.Ahead('b', 5, 5, True)),
    ([{'role': 'mirror', 'host': 'b', 'generation': 7},
      {'role': 'mirror', 'host': 'c', 'generation': 9}],
     cluster.Ahead('c', 9, 9, False)),
    # Only mirrors: two publishers would outbid each other.
    ([{'role': 'publisher', 'host': 'x', 'generation': 9}], None),
    ([{'role': 'mirror', 'host': 'b', 'generation': '9'}], None),
])
def test_ahead_of(statuses, expected):
    assert cluster.ahead_of(5, DIGEST, statuses) == expected


def test_nothing_is_ahead_of_an_empty_publisher_but_a_generation():
    assert cluster.ahead_of(0, None, [
        {'role': 'mirror', 'host': 'b', 'generation': 0,
         'digest': None}]) is None


def _publish(states: store.ManifestStore, generation: int) -> bytes:
    current = manifest.Manifest.build({}, 'hotload_actions', 'hot',
                                      generation)
    states.publish(current)
    return current.to_json()


def test_served_facts(tmp_path):
    states = store.ManifestStore(str(tmp_path / 'state'))
    assert cluster.served_facts(states) == {
        'generation': 0, 'digest': None, 'published_at': None,
        'file_errors': 0}
    data = _publish(states, 3)
    facts = cluster.served_facts(states)
    assert facts['generation'] == 3
    assert facts['digest'] == store.sha256_hex(data)
    assert facts['published_at'] == \
        manifest.Index.from_json(data).created_at
    with open(states.current_path, 'w') as stream:
        stream.write('{')
    assert 'error' in cluster.served_facts(states)


@pytest.fixture
def presence(tmp_path, monkeypatch):
    """A PublisherPresence whose broker exchange is replaced: the
    statuses it gets are the test's, signed for the request it makes."""
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    signals.register_transport_opts(conf)
    hotload_conf.register_host_opt(conf)
    conf(args=[], default_config_files=[])
    conf.set_override('cluster_key', KEY, 'hotload')
    conf.set_override('host', 'node-a')
    states = store.ManifestStore(str(tmp_path / 'state'))
    _publish(states, 2)
    lifts: list[int] = []
    answers: list[dict] = []

    def collect(conf, timeout, topics=None, request_id=None, **kwargs):
        assert topics == [cluster.cluster_topic(conf)]
        return [cluster.sign_status(a, KEY, request_id) if a.pop(
            'signed', True) else a for a in answers]

    monkeypatch.setattr(signals, 'unreachable_brokers', lambda *a: [])
    monkeypatch.setattr(signals, 'collect_statuses', collect)
    transport = cluster.oslo_messaging.get_rpc_transport(conf,
                                                         url='fake://')
    found = cluster.PublisherPresence(conf, transport, states,
                                      scan_error=lambda: None,
                                      continue_above=lifts.append)
    found.lifts, found.answers = lifts, answers
    yield found
    transport.cleanup()


def test_a_verified_mirror_ahead_makes_the_publisher_continue_above(
        presence):
    presence.answers += [
        {'host': 'node-b', 'role': 'mirror', 'generation': 7},
        {'host': 'node-c', 'role': 'mirror', 'generation': 1},
    ]
    assert presence.check() == cluster.Ahead('node-b', 7, 7, False)
    assert presence.lifts == [7]
    assert presence.mirrors_seen() == ['node-b', 'node-c']
    assert presence.describe()['mirrors_seen'] == ['node-b', 'node-c']


def test_an_unverified_mirror_ahead_is_ignored(presence):
    presence.answers.append({'host': 'rogue', 'role': 'mirror',
                             'generation': 99, 'signed': False})
    assert presence.check() is None
    assert presence.lifts == []
    assert presence.mirrors_seen() == []


def test_another_publisher_is_reported_and_stops_continuing_above(
        presence):
    presence.answers += [
        {'host': 'node-x', 'role': 'publisher', 'pid': 1,
         'generation': 9},
        {'host': 'node-b', 'role': 'mirror', 'generation': 9},
    ]
    assert presence.check() is None
    assert presence.lifts == []
    status = presence.describe()
    assert 'another publisher, node-x, answers status requests as a ' \
        'publisher' in status['error']
    assert status['role'] == 'publisher' and status['host'] == 'node-a'
    assert status['generation'] == 2


def test_its_own_status_and_announcements_are_not_a_rival(presence):
    presence.answers.append({'host': 'node-a', 'role': 'publisher',
                             'pid': os.getpid(), 'generation': 2})
    presence.check()
    endpoint = cluster._RivalEndpoint('node-a', presence.heard)
    endpoint.generation_announced({}, 3, host='node-a')
    assert presence.rivals() == []
    endpoint.generation_announced({}, 3, host='node-z')
    assert presence.rivals_hosts() == {'node-z'}
    assert 'another publisher, node-z, announces generation 3' in \
        presence.describe()['error']
