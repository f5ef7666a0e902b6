"""Mistral processes of this node that did not answer ``status``.

A Mistral process answers ``status`` from its hot action provider, and
its provider exists only once Mistral built its action providers: the API
and the executor do so at start, the engine at its first action lookup
(its first workflow). Right after a restart, the engine is then missing
from ``status`` without a word. The processes of this node are in
``/proc``: each ``mistral-server`` that did not answer is listed, with
why it may not have. Other nodes' processes cannot be seen from here.
"""

import configparser
import contextlib
import os
import socket
from collections.abc import Iterable

#: The program Mistral's services run as.
MISTRAL_SERVER = 'mistral-server'
#: Why a service may not have answered, by the name ``--server`` gives.
WHY = {
    'engine': "Mistral's engine loads action providers at its first action "
              "lookup (its first workflow)",
}
WHY_ANY = ('its action providers are not loaded yet, or it cannot reach '
           'the broker')


def services(argv: list[str]) -> str | None:
    """The ``--server`` of a ``mistral-server`` command line; None for
    another program.

    :param argv: The command line (``/proc/PID/cmdline``).
    """
    names = [os.path.basename(arg) for arg in argv[:2]]
    if names[:1] == [MISTRAL_SERVER]:
        program = 0
    elif names[0].startswith('python') and names[1:] == [MISTRAL_SERVER]:
        program = 1  # the script, run by an interpreter
    else:
        return None
    rest = argv[program + 1:]
    for index, arg in enumerate(rest):
        if arg == '--server' and index + 1 < len(rest):
            return rest[index + 1]
        if arg.startswith('--server='):
            return arg[len('--server='):]
    return 'all'  # mistral-server's default


def configured_host(argv: list[str], cwd: str) -> str | None:
    """The ``[DEFAULT] host`` a Mistral command line's configuration
    files give (the last that sets it), the machine's name when none
    does, or None when a file cannot be read.

    :param argv: The command line.
    :param cwd: The process's working directory (relative paths).
    """
    files = [value
             for option, value in zip(argv, argv[1:], strict=False)
             if option == '--config-file']
    files += [arg[len('--config-file='):] for arg in argv
              if arg.startswith('--config-file=')]
    host = None
    for path in files:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            with open(os.path.join(cwd, path), encoding='utf-8') as stream:
                parser.read_file(stream)
        except (OSError, UnicodeDecodeError, configparser.Error):
            return None
        host = parser.defaults().get('host', host)
    # Mistral's default, as oslo.config's [DEFAULT] host has it.
    return host or socket.gethostname()


def mistral_servers(host: str, proc: str = '/proc') -> dict[int, str]:
    """PID to ``--server`` of every ``mistral-server`` process visible
    that belongs to ``host``: its configuration names that host, or
    cannot be read (several simulated nodes may share one machine).

    :param host: This node's name.
    :param proc: Where the process file system is mounted.
    """
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        # Gone since the listing, or another user's: not ours to report.
        with contextlib.suppress(OSError):
            with open(os.path.join(proc, entry, 'cmdline'), 'rb') as stream:
                argv = stream.read().decode('utf-8', 'replace').split('\0')
            server = services(argv)
            if server is None:
                continue
            cwd = os.readlink(os.path.join(proc, entry, 'cwd'))
            if configured_host(argv, cwd) in (host, None):
                found[int(entry)] = server
    return found


def unanswered(processes: Iterable[dict], host: str,
               proc: str = '/proc') -> list[dict]:
    """Rows for the ``mistral-server`` processes of this node that are
    not among ``processes``, as ``status`` lists processes.

    A ``mistral-server`` that forks workers (the API's) answers from the
    workers: a parent is not listed when one of its children answered.

    :param processes: The processes that answered.
    :param host: This node's name (``[DEFAULT] host``).
    :param proc: Where the process file system is mounted.
    """
    answered = {p.get('pid') for p in processes if p.get('host') == host}
    servers = mistral_servers(host, proc)
    rows = []
    for pid, server in sorted(servers.items()):
        if pid in answered or _parent_of_any(pid, answered, proc):
            continue
        # 'all' (the default) runs the engine too.
        parts = ('engine',) if server == 'all' else server.split(',')
        why = '; '.join(WHY[part] for part in parts if part in WHY)
        rows.append({'host': host, 'service': server, 'pid': pid,
                     'state': 'not answered', 'generation': None,
                     'actions': None, 'errors': [],
                     'why': why or WHY_ANY})
    return rows


def _parent_of_any(pid: int, pids: set, proc: str) -> bool:
    for child in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(proc, str(child), 'stat')) as stream:
                text = stream.read()
            if int(text[text.rindex(')') + 2:].split()[1]) == pid:
                return True
    return False
