"""Mistral's configuration files: what every node of a session shares.

A session (one database, one set of RabbitMQ topics) may have several
nodes; each gets its own ``mistral.conf`` built from ``session_config``
plus what is its own (``[DEFAULT] host``, the API port, ``[hotload]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``{section: {option: value}}``, as written into ``mistral.conf``.
Config = dict[str, dict[str, Any]]

#: A port of 127.0.0.1 where no PostgreSQL listens (tcpmux, never served
#: on a test machine): the database of a node that must not reach one.
#: Connecting there is refused at once, so a use shows up as an error
#: in the logs rather than as a hang.
UNREACHABLE_DB_PORT = 1

#: The topics of a session, by user; see ``topics``.
TOPIC_USERS: tuple[str, ...] = (
    'engine', 'executor', 'notifier', 'event_engine', 'hotload_signal')


def topics(tag: str) -> dict[str, str]:
    """The RabbitMQ topics of the session ``tag``, by user.

    ``engine``, ``executor``, ``notifier``, ``event_engine`` (Mistral's)
    and ``hotload_signal`` (``[hotload] signal_topic``).
    """
    return {name: f'{tag}_{name}' for name in TOPIC_USERS}


def session_config(tag: str, *, transport_url: str, database_url: str,
                   api_port: int | None = None,
                   debug: bool = False) -> Config:
    """The options every node of the session ``tag`` has.

    :param api_port: adds ``[api]`` on 127.0.0.1 (nodes that run the API).
    """
    names = topics(tag)
    conf: Config = {
        'DEFAULT': {
            'transport_url': transport_url,
            # Exchange and topics of our own: queue names are global to
            # the broker, so distinct topics are what keeps two
            # harnesses apart; the exchange keeps the bindings apart.
            'control_exchange': tag,
            'debug': debug,
            'use_stderr': False,
        },
        'database': {'connection': database_url},
        'pecan': {'auth_enable': False},
    }
    if api_port is not None:
        conf['api'] = {'host': '127.0.0.1', 'port': api_port}
    conf.update({
        'engine': {'topic': names['engine']},
        'executor': {'topic': names['executor']},
        'notifier': {'topic': names['notifier']},
        'event_engine': {'topic': names['event_engine']},
        # mistral-hotload's provider and daemon signal each other with
        # a fanout on this topic; the fanout exchange is named after
        # the topic alone (not scoped by control_exchange), so it must
        # be ours too. Mistral ignores the section without the project.
        'hotload': {'signal_topic': names['hotload_signal']},
        # With run_in_api, the API master process (not its worker)
        # runs the cron trigger loop in a non-daemon thread, and then
        # ignores SIGTERM forever.
        'cron_trigger': {'run_in_api': False},
        # Queues and exchanges go away with their last consumer, and
        # the transient (fanout, reply) ones a minute after it, so
        # nothing piles up in the shared broker.
        'oslo_messaging_rabbit': {'amqp_auto_delete': True,
                                  'rabbit_transient_queues_ttl': 60},
    })
    return conf


def merge(conf: Config,
          *extras: Mapping[str, Mapping[str, Any]] | None) -> Config:
    """``conf`` with each of ``extras`` applied in turn (later ones win)."""
    merged = {section: dict(options) for section, options in conf.items()}
    for extra in extras:
        for section, options in (extra or {}).items():
            merged.setdefault(section, {}).update(options)
    return merged


def write_config(path: Path, conf: Config, header: str) -> None:
    """Write ``conf`` as an ini file, ``header`` as its first comment."""
    lines = [f'# {header}']
    for section, options in conf.items():
        lines.append(f'\n[{section}]')
        for key, value in options.items():
            if isinstance(value, bool):
                value = str(value).lower()
            lines.append(f'{key} = {value}')
    path.write_text('\n'.join(lines) + '\n')
