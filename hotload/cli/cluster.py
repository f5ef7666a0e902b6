"""``mistral-hotload status --cluster``: every node, and whether it
follows the publisher.

It asks three things at once, within ``--timeout``, after a plain TCP
check of the broker (oslo.messaging would retry one that is down
forever): the publisher (``current_generation`` on
``<signal_topic>_publisher``), every daemon (their signed statuses on the
cluster topic, see :mod:`hotload.cluster`) and every Mistral process (on
``signal_topic``). It needs ``transport_url`` and, to verify the daemons,
``cluster_key``, nothing else: it works from any node, a mirror's too.

The state of each daemon and Mistral process, against the publisher's
answer (a host has the worst state of its daemon and processes):

``ok``
    The publisher's generation and digest (a process that reports no
    digest: its generation).
``converging``
    An older generation, and the publisher published its own less than
    the grace period ago (``--grace``, default ``[hotload]
    cluster_grace``, 60 s), measured from its ``published_at`` with this
    machine's clock.
``lagging``
    An older generation for longer than that.
``drifted``
    The same generation with another digest, or a generation above the
    publisher's.
``unverified``
    A daemon status whose signature is missing or wrong (another key, a
    rogue on the broker, no ``cluster_key`` here).
``error``
    A daemon reports an error (a mirror's last refusal, the publisher's
    failed scan or another publisher heard), or no daemon answered for a
    host whose processes did or whose mirror the publisher heard lately
    (its ``mirrors_seen``: so a mirror that stopped is not simply
    missing from the list).
``unknown``
    The publisher did not answer: nothing to compare with.

Exit status, for monitoring:

* 0: the publisher answered, and every daemon and process is ``ok``;
* 1: otherwise converged, but the publisher has files with an error, or
  some node is still ``converging`` (within the grace period);
* 2: a node is ``lagging``, ``drifted``, ``unverified`` or in ``error``,
  two publishers answer, the publisher is unreachable, or no broker of
  ``transport_url`` accepts a connection (``errors`` says which and why).

The data gathering (:func:`gather`) and the classification
(:func:`classify`, :func:`report`) are separate plain functions, so the
latter are tested without a broker.
"""

import dataclasses
import datetime
import threading
import time
import uuid

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from hotload import cluster
from hotload import exceptions
from hotload import publication
from hotload import signals
from hotload.cli.columns import LinesColumn
from hotload.cli.columns import NodesColumn

LOG = logging.getLogger(__name__)
OK = 'ok'
CONVERGING = 'converging'
LAGGING = 'lagging'
DRIFTED = 'drifted'
UNVERIFIED = 'unverified'
ERROR = 'error'
UNKNOWN = 'unknown'
#: From best to worst: a host has the worst of its members' states.
SEVERITY = (OK, CONVERGING, UNKNOWN, ERROR, LAGGING, DRIFTED, UNVERIFIED)
#: States that make the exit status 2.
ALARMS = frozenset({LAGGING, DRIFTED, UNVERIFIED, ERROR, UNKNOWN})

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ALARM = 2
#: Seconds a transport that answered gets to close after the deadline;
#: one that hangs is abandoned (a daemon thread).
CLOSE_TIMEOUT = 3.0
#: Seconds past a call's timeout before its thread is abandoned.
CALL_MARGIN = 0.5
_UNREACHABLE = 'the publisher is unreachable: '


@dataclasses.dataclass
class Gathered:
    """What :func:`gather` collected: plain data, no broker objects."""

    #: The publisher's answer (host, generation, digest, published_at).
    publisher: dict | None = None
    #: Why there is none.
    publisher_error: str = ''
    #: Statuses of daemons (with ``role``) and processes (``service``).
    answers: list = dataclasses.field(default_factory=list)
    #: Why the statuses could not be asked, or ''.
    unasked: str = ''
    #: The request's id, which daemons signed with their status.
    request_id: str = ''


@dataclasses.dataclass
class Report:
    """The command's output fields and exit status."""

    fields: dict
    exit_status: int


def ask_publisher(conf: cfg.ConfigOpts,
                  timeout: float) -> tuple[dict | None, str]:
    """The publisher's ``current_generation``, or why there is none.

    The call runs in a daemon thread, abandoned if oslo.messaging hangs
    in it past ``timeout`` (a broker that accepts TCP but never speaks
    AMQP); the broker is not checked here (see
    :func:`signals.unreachable_brokers`).

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds the call may take.
    :returns: ``(answer, '')`` or ``(None, reason)``; the reason never
        names the transport URL.
    """
    result: list = [None, f'no answer within {timeout:g} s (the messaging '
                          f'transport did not connect in time)']
    answered = threading.Event()

    def call() -> None:
        try:
            transport = oslo_messaging.get_rpc_transport(conf)
        except Exception as exc:
            result[1] = f'the messaging transport failed ' \
                        f'({type(exc).__name__})'
            LOG.debug('No transport', exc_info=True)
            answered.set()
            return
        try:
            client = publication.PublisherClient(conf, transport,
                                                 max(timeout, 0.1))
            result[0], result[1] = client.describe_current(), ''
        except exceptions.ClusterError as exc:
            result[1] = str(exc).removeprefix(_UNREACHABLE)
        except Exception as exc:
            # Its message may quote the transport URL: only its type.
            result[1] = f'the call failed ({type(exc).__name__})'
            LOG.debug('The call to the publisher failed', exc_info=True)
        finally:
            answered.set()
            transport.cleanup()

    worker = threading.Thread(target=call, name='hotload-publisher-call',
                              daemon=True)
    worker.start()
    # oslo.messaging ends a call at its timeout; the margin is for the
    # thread to say so.
    if answered.wait(timeout + CALL_MARGIN):
        # A transport that worked closes cleanly, for the broker's sake.
        worker.join(CLOSE_TIMEOUT)
    return result[0], result[1]


def gather(conf: cfg.ConfigOpts, timeout: float) -> Gathered:
    """Ask the publisher, the daemons and the processes at once.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds for all of it (and about a second to close).
    """
    deadline = time.monotonic() + timeout
    if not signals.transport_configured(conf):
        why = ('no transport_url is configured: the cluster cannot be '
               'asked; use a node\'s mistral.conf')
        return Gathered(publisher_error=why, unasked=why)
    try:
        _driver, brokers = signals.broker_addresses(conf)
        unreachable = signals.unreachable_brokers(
            conf, max(timeout / 2, signals.MIN_BROKER_TIMEOUT))
    except oslo_messaging.InvalidTransportURL as exc:
        why = f'transport_url cannot be parsed ({exc})'
        return Gathered(publisher_error=why, unasked=why)
    # The drivers fail over between brokers: one that answers is enough.
    if brokers and len(unreachable) == len(brokers):
        why = f'broker {", ".join(unreachable)}'
        return Gathered(publisher_error=why, unasked=why)
    gathered = Gathered(request_id=uuid.uuid4().hex)
    answer: list = [None, '']
    caller = threading.Thread(
        target=lambda: answer.__setitem__(slice(None), ask_publisher(
            conf, round(max(deadline - time.monotonic(), 0.1), 1))),
        name='hotload-ask-publisher', daemon=True)
    caller.start()
    try:
        gathered.answers = signals.collect_statuses(
            conf, max(deadline - time.monotonic(), 0.0),
            topics=[conf.hotload.signal_topic, cluster.cluster_topic(conf)],
            request_id=gathered.request_id)
    except signals.NotAsked as exc:
        gathered.unasked = str(exc)
    caller.join(max(deadline - time.monotonic(), 0.0) + CALL_MARGIN
                + CLOSE_TIMEOUT)
    gathered.publisher, gathered.publisher_error = answer
    if gathered.publisher is None and not gathered.publisher_error:
        gathered.publisher_error = f'no answer within {timeout:g} s'
    return gathered


def seconds_since(timestamp: object, now: datetime.datetime) -> float | None:
    """Seconds from an ISO 8601 ``timestamp`` to ``now``; None if it
    cannot be read.

    :param timestamp: A manifest's ``created_at``.
    :param now: An aware datetime.
    """
    try:
        then = datetime.datetime.fromisoformat(str(timestamp))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.timezone.utc)
    return (now - then).total_seconds()


def classify(member: dict, reference: dict | None,
             now: datetime.datetime, grace: float) -> str:
    """The state of one daemon or process; see the module's docstring.

    :param member: A daemon's status (with ``verify_error`` when its
        signature did not verify) or a process's.
    :param reference: The publisher's answer, or None.
    :param now: An aware datetime, for the grace period.
    :param grace: Seconds a node may be behind and still converging.
    """
    if member.get('verify_error'):
        return UNVERIFIED
    generation = member.get('generation')
    if not isinstance(generation, int) or isinstance(generation, bool):
        return ERROR
    if reference is None:
        return ERROR if member.get('error') else UNKNOWN
    if generation > reference['generation']:
        return DRIFTED
    if generation < reference['generation']:
        age = seconds_since(reference.get('published_at'), now)
        return CONVERGING if age is not None and age < grace else LAGGING
    digest, expected = member.get('digest'), reference.get('digest')
    if digest and expected and digest != expected:
        return DRIFTED
    return ERROR if member.get('error') else OK


def worst(states: list[str]) -> str:
    """The worst of ``states`` (:data:`SEVERITY`); ``ok`` for none.

    :param states: States of :func:`classify`.
    """
    return max(states, key=SEVERITY.index, default=OK)


_DAEMON_KEYS = ('role', 'pid', 'generation', 'digest', 'published_at',
                'error', 'file_errors', 'mirrors_seen',
                'publisher_generation', 'highest')
_PROCESS_KEYS = ('service', 'pid', 'generation', 'digest', 'actions',
                 'errors')


def _members(gathered: Gathered, key: str | None
             ) -> tuple[dict[str, list], dict[str, list]]:
    """``{host: [daemon]}`` and ``{host: [process]}``, only the fields
    shown, each daemon with ``verify_error`` (or None)."""
    daemons: dict[str, list] = {}
    processes: dict[str, list] = {}
    for answer in gathered.answers:
        if not isinstance(answer, dict):
            continue
        host = str(answer.get('host'))[:200]
        if 'role' in answer:
            member = {k: answer.get(k) for k in _DAEMON_KEYS
                      if k in answer}
            member['verify_error'] = cluster.unverified_reason(
                answer, key, gathered.request_id)
            daemons.setdefault(host, []).append(member)
        else:
            member = {k: answer.get(k) for k in _PROCESS_KEYS}
            member['errors'] = list(member['errors'] or ())
            processes.setdefault(host, []).append(member)
    return daemons, processes


def _seen_by_publisher(daemons: dict[str, list],
                       reference: dict | None) -> set[str]:
    """Hosts whose mirror the publisher heard lately (its verified
    ``mirrors_seen``): one that does not answer now is not forgotten."""
    if reference is None:
        return set()
    seen: set[str] = set()
    for member in daemons.get(reference['host'], []):
        if member.get('role') == cluster.PUBLISHER and \
                not member.get('verify_error') and \
                isinstance(member.get('mirrors_seen'), list):
            seen.update(str(h)[:200] for h in member['mirrors_seen'])
    return seen


def _process_order(member: dict) -> tuple:
    pid = member.get('pid')
    return str(member.get('service')), pid if isinstance(pid, int) else -1


def report(gathered: Gathered, key: str | None, grace: float,
           now: datetime.datetime | None = None,
           cluster_topic: str = 'the cluster topic') -> Report:
    """The output fields and exit status of what was gathered.

    :param gathered: See :func:`gather`.
    :param key: ``cluster_key``, to verify the daemons' statuses.
    :param grace: Seconds a node may be behind and still converging.
    :param now: The time to measure the grace period to; default: now.
    :param cluster_topic: The topic daemons answer on, for messages.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    reference = gathered.publisher
    errors: list[str] = []
    alarm = reference is None or bool(gathered.unasked)
    if reference is None:
        errors.append(f'the publisher is unreachable: '
                      f'{gathered.publisher_error}')
    if gathered.unasked and gathered.unasked != gathered.publisher_error:
        errors.append(f'the daemons and Mistral processes could not be '
                      f'asked: {gathered.unasked}')
    if not key:
        errors.append('no [hotload] cluster_key is configured here: the '
                      'daemons\' statuses cannot be verified; use the '
                      'configuration of a node of the cluster')
    daemons, processes = _members(gathered, key)
    hosts = sorted(set(daemons) | set(processes)
                   | ({reference['host']} if reference else set())
                   | _seen_by_publisher(daemons, reference))
    nodes = []
    publishers = set()
    warning = False
    for host in hosts:
        members = daemons.get(host, []) + processes.get(host, [])
        for member in members:
            member['state'] = classify(member, reference, now, grace)
            if member.get('verify_error'):
                # The reason names the host.
                errors.append(member['verify_error'])
                continue
            if member.get('role') == cluster.PUBLISHER:
                publishers.add((host, member.get('pid')))
                if reference and host == reference['host'] and \
                        member.get('file_errors'):
                    warning = True
                    count = member['file_errors']
                    errors.append(
                        f'{host}: {count} module'
                        f'{" has" if count == 1 else "s have"} an error '
                        f'(the last good version, if any, is served); see '
                        f'mistral-hotload status on {host}')
        state = worst([m['state'] for m in members])
        if not daemons.get(host):
            state = worst([state, ERROR])
            errors.append(f'{host}: no daemon answered on {cluster_topic}; '
                          f'is mistral-hotload-daemon running there, with '
                          f'the same signal_topic?')
        nodes.append({'host': host, 'state': state,
                      'daemons': daemons.get(host, []),
                      'processes': sorted(processes.get(host, []),
                                          key=_process_order)})
    if len(publishers) > 1:
        alarm = True
        errors.append('two publishers answer: ' + ', '.join(
            f'{h} (pid {p})' for h, p in sorted(publishers, key=str))
            + '; set [hotload] mode = mirror on every node but one')
    states = {n['state'] for n in nodes}
    if alarm or states & ALARMS:
        exit_status = EXIT_ALARM
    elif warning or CONVERGING in states:
        exit_status = EXIT_WARNING
    else:
        exit_status = EXIT_OK
    fields = {
        'publisher': reference['host'] if reference
        else f'unreachable: {gathered.publisher_error}',
        'generation': reference['generation'] if reference else None,
        'digest': reference.get('digest') if reference else None,
        'published_at': reference.get('published_at') if reference
        else None,
        'grace': grace,
        'nodes': NodesColumn(nodes),
        'errors': LinesColumn(errors),
    }
    return Report(fields, exit_status)


def status(conf: cfg.ConfigOpts, timeout: float,
           grace: float | None = None) -> Report:
    """``status --cluster``: gather, then classify.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds to wait for every answer.
    :param grace: Seconds a node may be behind and still converging;
        default: ``[hotload] cluster_grace``.
    """
    gathered = gather(conf, timeout)
    return report(gathered, conf.hotload.cluster_key,
                  conf.hotload.cluster_grace if grace is None else grace,
                  cluster_topic=f'topic {cluster.cluster_topic(conf)}')
