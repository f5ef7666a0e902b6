"""``doctor``'s checks of a node in a cluster (``mode = mirror``, or a
``cluster_key``); see :mod:`hotload.cli.doctor`.

``mode``
    A publisher has an actions directory (and, to serve mirrors, a
    transport); a mirror has a ``cluster_key`` and a transport, without
    which its daemon refuses to start.
``cluster_key``
    Set when ``mode = mirror``; long enough not to be guessed. Only its
    length is ever shown.
``publisher``
    The publisher answers ``current_generation`` within
    ``cluster_timeout``, and on a publisher node it is this node.
"""

import os

import oslo_messaging
from oslo_config import cfg

from hotload import cluster
from hotload import conf as hotload_conf
from hotload import publication
from hotload import signals
from hotload import store
from hotload.cli import cluster as cluster_cli
from hotload.cli.columns import short
from hotload.cli.diagnosis import FAIL
from hotload.cli.diagnosis import OK
from hotload.cli.diagnosis import SERVICE
from hotload.cli.diagnosis import WARNING
from hotload.cli.diagnosis import Row
from hotload.cli.diagnosis import quote

#: Shortest cluster_key without a warning: as many characters as the
#: hex digits of 128 bits.
MIN_KEY_LENGTH = 32
#: What makes a good key, in the fixes.
NEW_KEY = ('generate one, e.g. with `openssl rand -hex 32`, and set it as '
           '[hotload] cluster_key in mistral.conf on every node')
#: What every node must share with the publisher, in the fixes.
SHARED = ('the same broker ([DEFAULT] transport_url, control_exchange), '
          '[hotload] signal_topic and cluster_key as this node')


def in_cluster(conf: cfg.ConfigOpts) -> bool:
    """True when ``conf`` is a cluster node's: these checks apply.

    :param conf: The configuration, parsed.
    """
    return conf.hotload.mode == 'mirror' or bool(conf.hotload.cluster_key)


def check_mode(conf: cfg.ConfigOpts) -> Row:
    """The mode has what it needs."""
    name = 'mode'
    options = conf.hotload
    transport = signals.transport_configured(conf)
    topic = publication.publisher_topic(conf)
    if options.mode == 'mirror':
        missing = []
        if not options.cluster_key:
            missing.append('[hotload] cluster_key (the publisher\'s value)')
        if not transport:
            missing.append('[DEFAULT] transport_url (the broker the '
                           'publisher uses)')
        if missing:
            return Row(name, FAIL,
                       f'mode = mirror, but the daemon refuses to start '
                       f'without {" and ".join(missing)}; set '
                       f'{" and ".join(m.split(" (")[0] for m in missing)}')
        return Row(name, OK,
                   f'mirror: copies the publisher\'s signed generations '
                   f'(topic {topic}) into {options.state_dir}; no '
                   f'actions_dir is used')
    root = os.path.realpath(options.actions_dir)
    if not os.path.isdir(root):
        return Row(name, FAIL,
                   f'mode = publisher watches actions_dir, and {root} is '
                   f'not a directory: create it (install -d -m 0755 -o '
                   f'root {quote(root)}), or, if another node publishes, '
                   f'set [hotload] mode = mirror on this one')
    if not transport:
        return Row(name, WARNING,
                   'publisher with a cluster_key but no [DEFAULT] '
                   'transport_url: no mirror can reach it; set '
                   'transport_url to the mirrors\' broker (or, on a single '
                   'node, remove cluster_key)')
    return Row(name, OK, f'publisher: watches {root} and serves mirrors on '
                         f'topic {topic}')


def check_cluster_key(conf: cfg.ConfigOpts) -> Row:
    """The key is set (a mirror needs it) and long enough; never shown."""
    name = 'cluster_key'
    key = conf.hotload.cluster_key
    if not key:
        return Row(name, FAIL,
                   'not set: a mirror checks every generation with it and '
                   'refuses to start without it; set [hotload] cluster_key '
                   'to the publisher\'s value')
    if len(key) < MIN_KEY_LENGTH:
        return Row(name, WARNING,
                   f'set, but only {len(key)} characters (not shown): '
                   f'whoever guesses it can make every node run their '
                   f'code; use at least {MIN_KEY_LENGTH} random characters: '
                   f'{NEW_KEY}')
    return Row(name, OK, f'set ({len(key)} characters, not shown)')


def check_publisher(conf: cfg.ConfigOpts) -> Row:
    """The publisher answers within ``cluster_timeout``."""
    name = 'publisher'
    options = conf.hotload
    topic = publication.publisher_topic(conf)
    if not signals.transport_configured(conf):
        return Row(name, FAIL, 'cannot be asked without [DEFAULT] '
                               'transport_url; set it to the publisher\'s '
                               'broker')
    try:
        _driver, brokers = signals.broker_addresses(conf)
        unreachable = signals.unreachable_brokers(conf)
    except oslo_messaging.InvalidTransportURL as exc:
        return Row(name, FAIL, f'cannot be asked: transport_url cannot be '
                               f'parsed ({exc}); correct it in [DEFAULT]')
    if brokers and len(unreachable) == len(brokers):
        return Row(name, FAIL,
                   f'cannot be asked: broker {", ".join(unreachable)}; start '
                   f'the broker, or correct transport_url in [DEFAULT]')
    answer, why = cluster_cli.ask_publisher(conf, options.cluster_timeout)
    here = hotload_conf.node_name(conf)
    if answer is None:
        fix = (f'this node publishes: start its daemon (systemctl start '
               f'{SERVICE}) and read its log'
               if options.mode == 'publisher' else
               f'start the daemon of the publishing node (systemctl start '
               f'{SERVICE} there), and give it {SHARED}')
        return Row(name, FAIL, f'{why}; {fix}')
    served = cluster.served_facts(
        store.ManifestStore(options.state_dir))['generation']
    detail = (f'{answer["host"]} answers on topic {topic}: generation '
              f'{answer["generation"]} (digest {short(answer["digest"])}), '
              f'published at {answer["published_at"] or "-"}; this node '
              f'({here}) serves generation {served}')
    if options.mode == 'publisher' and answer['host'] != here:
        return Row(name, WARNING,
                   f'{detail}; but this node is a publisher too: a cluster '
                   f'has one; set [hotload] mode = mirror on every node '
                   f'but one')
    return Row(name, OK, detail)


def checks(conf: cfg.ConfigOpts) -> list[Row]:
    """The cluster's rows, in order; none for a single node.

    :param conf: The configuration, parsed.
    """
    if not in_cluster(conf):
        return []
    return [check_mode(conf), check_cluster_key(conf),
            check_publisher(conf)]
