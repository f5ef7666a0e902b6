"""Commands that operate the daemon and the Mistral processes of a node.

They read the state directory (``state_dir``): the current manifest and the
daemon's status file; they write requests to its ``control/`` directory,
which the daemon watches (so they work without a broker); and ``status``
asks every Mistral process over oslo.messaging what it serves.

``status`` answers within its ``--timeout`` and about a second more (to
close the connection), whatever the broker does: it first tries the broker
with a plain TCP connection, because oslo.messaging retries one that is
down forever, and stops waiting for the processes at the deadline.

Exit status of ``status``, for monitoring:

* 0: the daemon runs, every file is served, every process that answered
  serves the daemon's generation;
* 1: some file has an error (its last good version, if any, is served),
  or a hot action is not served because another action provider of a
  Mistral process serves its name (see :mod:`hotload.clashes`);
* 2: a process lags behind the daemon's generation, the daemon is not
  running or cannot publish (its last scan failed, or the state
  directory's file system is full), nothing was published yet, or no
  broker of ``transport_url`` accepts a connection (the processes could
  not be asked, so convergence cannot be confirmed; ``errors`` says which
  broker and why).

Without ``transport_url`` the processes are not asked (they still load new
generations by themselves) and the exit status depends on the daemon and
the files only; name clashes, which only the processes know, are then
not reported.

``status --cluster`` shows every node of a cluster instead, from any
node's configuration; it is :mod:`hotload.cli.cluster`, with its own
states and exit status.
"""

import os
import time

import oslo_messaging
from cliff import command
from cliff import lister
from cliff import show

from hotload import clashes
from hotload import conf as hotload_conf
from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import signals
from hotload import store
from hotload.cli import cluster
from hotload.cli import unanswered
from hotload.cli.columns import LinesColumn
from hotload.cli.columns import ProcessesColumn

EXIT_OK = 0
EXIT_FILE_ERRORS = 1
EXIT_LAGGING = 2
UNASKED = 'Mistral processes could not be asked'
MIN_BROKER_TIMEOUT = signals.MIN_BROKER_TIMEOUT


#: Room the daemon needs beside a manifest's size to publish the next.
MIN_FREE_BYTES = 1024 * 1024


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class CommandError(Exception):
    """Reported by cliff as the command's error, exit status 1."""


class _StateCommand:
    def states(self) -> store.ManifestStore:
        return store.ManifestStore(self.app.conf.hotload.state_dir)

    def current(self):
        try:
            return self.states().load()
        except exceptions.ManifestError as exc:
            raise CommandError(str(exc)) from None

    def served_names(self) -> set[str]:
        current = self.current()
        return {a.name for a, _ in current.all_actions()} if current \
            else set()


def mistral_processes(conf, generation: int, timeout: float,
                      all_hosts: bool) -> tuple[list[dict], str]:
    """The Mistral processes that answered, and why none could be asked.

    The brokers are tried first with a plain TCP connection, for half of
    ``timeout`` at most (``MIN_BROKER_TIMEOUT`` at least): oslo.messaging
    would retry one that is down forever. The answers are awaited until
    ``timeout`` is over, then a working transport is closed (about a
    second); one that hangs is abandoned (see
    :func:`signals.collect_statuses`).

    :param conf: Configuration with the transport and ``[hotload]``.
    :param generation: The daemon's generation; a process of this host
        serving another one is ``lagging``.
    :param timeout: Seconds to wait for the broker and the answers.
    :param all_hosts: Keep the processes of other hosts too.
    :returns: The processes, each with a ``state``, sorted; and '' or the
        reason (with the broker's host and port, never credentials) none
        was asked.
    """
    deadline = time.monotonic() + timeout
    try:
        _driver, brokers = signals.broker_addresses(conf)
        unreachable = signals.unreachable_brokers(
            conf, max(timeout / 2, MIN_BROKER_TIMEOUT))
    except oslo_messaging.InvalidTransportURL as exc:
        return [], f'transport_url cannot be parsed ({exc}): {UNASKED}'
    # The drivers fail over between brokers: one that answers is enough.
    if brokers and len(unreachable) == len(brokers):
        return [], f'broker {", ".join(unreachable)}: {UNASKED}'
    try:
        answers = signals.collect_statuses(
            conf, max(0.0, deadline - time.monotonic()))
    except signals.NotAsked as exc:
        return [], f'{exc}: {UNASKED}'
    host = hotload_conf.node_name(conf)
    found = []
    for status in answers:
        here = status.get('host') == host
        if not (here or all_hosts):
            continue
        # Another node's processes follow that node's daemon.
        if not here:
            state = 'other host'
        elif status.get('generation') != generation:
            state = 'lagging'
        else:
            state = 'ok'
        found.append(dict(status, state=state))
    found.sort(key=lambda p: (p['host'], p['service'], p['pid']))
    return found, ''


def _who(process: dict) -> str:
    return f'{process["service"]} pid {process["pid"]} on {process["host"]}'


def clash_errors(processes: list[dict],
                 current: manifest_mod.Manifest | None) -> list[str]:
    """A line per hot action that Mistral processes do not serve because
    another of their action providers serves its name: the hot action's
    file and line, the provider, the processes, and the fix.

    :param processes: The processes that answered, with their
        ``clashes`` (``{name: provider}``; absent from older providers).
    :param current: The manifest served, for the file and line of each
        hot action and how it was named.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for process in processes:
        for name, provider in sorted((process.get('clashes') or {}).items()):
            found.setdefault((name, str(provider)), []).append(_who(process))
    specs = {a.name: (a, m) for a, m in current.all_actions()} \
        if current else {}
    prefix = current.action_prefix if current else ''
    lines = []
    for (name, provider), who in sorted(found.items()):
        where, fix = name, clashes.fix(name, '', prefix, declared=None)
        if name in specs:
            action, module = specs[name]
            where = f'{module.path}:{action.line}: {name}'
            fix = clashes.fix(name, module.name, prefix,
                              declared=action.declared_name is not None)
        lines.append(f'{where} is not served: action provider {provider!r} '
                     f'serves that name too in {", ".join(who)}; {fix}')
    return lines


class Status(_StateCommand, show.ShowOne):
    """Show the daemon, what it serves, and every Mistral process.

    Exit status: 0 all served and converged, 1 some file or control file
    has an error, or a hot action is not served because another action
    provider of a Mistral process serves its name, 2 a process lags, the
    daemon is not running or cannot publish (a failing scan, a full
    disk), or the broker is unreachable (the processes could not be
    asked; see errors).

    With --cluster: every host of the cluster (from any node's
    configuration, a mirror's too: transport_url and cluster_key), its
    daemon and Mistral processes, each ok, converging, lagging, drifted
    (another digest, or above the publisher), unverified (a daemon status
    not signed with this cluster_key), error or unknown. Exit status: 0
    every node serves the publisher's generation; 1 otherwise converged,
    but the publisher has files with an error or a node is still
    converging within the grace period; 2 a node is lagging, drifted,
    unverified or in error, two publishers answer, the publisher is
    unreachable or no broker accepts a connection.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--timeout', type=float, default=2.0, metavar='SECONDS',
            help='How long to wait for the broker and the Mistral '
                 'processes (with --cluster: and the daemons and the '
                 'publisher) to answer (default: 2). An unreachable broker '
                 'is an error, exit status 2.')
        parser.add_argument(
            '--all-hosts', action='store_true',
            help='Also list the processes of other nodes (each follows '
                 'its own node\'s daemon, so they are never "lagging").')
        parser.add_argument(
            '--no-processes', action='store_true',
            help='Do not ask the Mistral processes (no broker needed).')
        parser.add_argument(
            '--cluster', action='store_true',
            help='Show every node of the cluster instead: the publisher, '
                 'each daemon and Mistral process per host, with their '
                 'generation, digest and state (needs transport_url and '
                 'cluster_key, no state_dir).')
        parser.add_argument(
            '--grace', type=float, metavar='SECONDS',
            help='With --cluster: how long after the publisher published '
                 'a node may still serve an older generation and be '
                 '"converging" (exit status 1) rather than "lagging" '
                 '(exit status 2). Default: [hotload] cluster_grace '
                 '(60).')
        return parser

    def take_action(self, parsed_args):
        if parsed_args.cluster:
            found = cluster.status(self.app.conf, parsed_args.timeout,
                                   parsed_args.grace)
            self.exit_status = found.exit_status
            return tuple(found.fields), tuple(found.fields.values())
        states = self.states()
        current = self.current()
        status = states.load_status()
        running = states.writer_running()
        generation = current.generation if current else 0
        daemon = 'running' if running else 'not running'
        if status.get('pid'):
            daemon += f' (pid {status["pid"]} on {status.get("host")})'
        # The daemon cannot publish: a failing scan, or no room to write.
        stuck = [status['error']] if status.get('error') and running \
            else []
        free = states.free_bytes()
        needed = MIN_FREE_BYTES + _size(states.current_path)
        if free is not None and free < needed:
            stuck.append(f'the file system of {states.state_dir} is full '
                         f'({free} bytes free): no new generation can be '
                         f'published')
        errors = stuck + list(status.get('warnings') or ())
        if current:
            errors += [f'{e.location()}: {e.kind}: {e.message}'
                       + ('' if m.good else ' (never served)')
                       for m, e in current.errors()]
        conf = self.app.conf
        processes, unasked = [], ''
        if parsed_args.no_processes:
            pass
        elif not signals.transport_configured(conf):
            self.app.stderr.write(
                'No transport_url configured: Mistral processes cannot be '
                'asked (they still load new generations by themselves).\n')
        else:
            processes, unasked = mistral_processes(
                conf, generation, parsed_args.timeout, parsed_args.all_hosts)
            if not unasked:
                processes += unanswered.unanswered(
                    processes, hotload_conf.node_name(conf))
        if unasked:
            errors.append(unasked)
        errors += clash_errors(processes, current)
        lagging = [p for p in processes if p['state'] == 'lagging']
        # Processes that could not be asked may lag: convergence is not
        # confirmed, which monitoring must not read as "only a file error".
        if not running or current is None or lagging or unasked or stuck:
            self.exit_status = EXIT_LAGGING
        elif errors:
            self.exit_status = EXIT_FILE_ERRORS
        else:
            self.exit_status = EXIT_OK
        fields = {
            'daemon': daemon,
            'actions_dir': status.get('actions_dir', ''),
            'state_dir': states.state_dir,
            'generation': generation,
            'published_at': current.created_at if current else '',
            'modules': len(current.modules) if current else 0,
            'actions': current.action_count() if current else 0,
            'disabled': LinesColumn(current.disabled if current else ()),
            'last_scan': (f'{status["last_scan_at"]}: '
                          f'{status.get("last_scan_probed", 0)} probed in '
                          f'{status.get("last_scan_seconds", 0)} s')
            if status.get('last_scan_at') else '',
            'errors': LinesColumn(errors),
            'processes': ProcessesColumn(processes),
        }
        return tuple(fields), tuple(fields.values())

    def run(self, parsed_args):
        super().run(parsed_args)
        return self.exit_status


class ActionList(_StateCommand, lister.Lister):
    """List the hot actions served now (the seed's action-list)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--long', action='store_true',
            help='Also show module, file, line, content key and generation.')
        parser.add_argument(
            '--all', action='store_true',
            help='Include disabled actions (column "enabled").')
        return parser

    def take_action(self, parsed_args):
        current = self.current()
        columns_ = ('name', 'description', 'input_str')
        if parsed_args.long:
            columns_ += ('module', 'file', 'line', 'content_key',
                         'generation')
        if parsed_args.all:
            columns_ += ('enabled',)
        rows = []
        found = current.all_actions() if current and parsed_args.all \
            else current.actions() if current else ()
        for action, module in found:
            row = (action.name, action.description, action.input)
            if parsed_args.long:
                row += (module.name, module.path, action.line,
                        module.good.content_key, current.generation)
            if parsed_args.all:
                row += (action.name not in current.disabled,)
            rows.append(row)
        return columns_, rows


class ActionShow(_StateCommand, show.ShowOne):
    """Show one hot action: parameters, file, version, who loaded it.

    ``clashes`` lists the Mistral processes that do not serve it because
    another of their action providers serves its name.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', metavar='NAME', help='Action name.')
        parser.add_argument(
            '--timeout', type=float, default=2.0, metavar='SECONDS',
            help='How long to wait for the broker and the Mistral '
                 'processes to say whether they loaded it (default: 2).')
        return parser

    def take_action(self, parsed_args):
        current = self.current()
        found = {a.name: (a, m) for a, m in current.all_actions()} \
            if current else {}
        if parsed_args.name not in found:
            raise CommandError(f'no hot action named {parsed_args.name}; '
                               f'see mistral-hotload action list')
        action, module = found[parsed_args.name]
        loaded_by, clashing = [], []
        if signals.transport_configured(self.app.conf):
            key = module.good.content_key
            processes, unasked = mistral_processes(
                self.app.conf, current.generation, parsed_args.timeout,
                all_hosts=True)
            if unasked:
                self.app.stderr.write(
                    f'{unasked} whether they loaded it.\n')
            loaded_by = [_who(p) for p in processes
                         if key in p.get('loaded', ())]
            clashing = [
                f'{_who(p)}: not served, action provider '
                f'{p["clashes"][action.name]!r} serves {action.name}'
                for p in processes
                if action.name in (p.get('clashes') or {})]
        fields = {
            'name': action.name,
            'description': action.description,
            'input': action.input,
            'enabled': action.name not in current.disabled,
            'class': action.class_name,
            'module': module.name,
            'file': module.path,
            'line': action.line,
            'sha256': module.good.sha256,
            'content_key': module.good.content_key,
            'imports': LinesColumn(
                sorted(name for name, sha in module.good.imports.items()
                       if sha)),
            'generation': current.generation,
            'error': (f'{module.error.location()}: {module.error.message} '
                      f'(this version is the last good one)'
                      if module.error else ''),
            'loaded_by': LinesColumn(loaded_by),
            'clashes': LinesColumn(clashing),
        }
        return tuple(fields), tuple(fields.values())


class _Toggle(_StateCommand, command.Command):
    enable = True

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('names', metavar='NAME', nargs='+',
                            help='Action name.')
        return parser

    def take_action(self, parsed_args):
        states = self.states()
        known = self.served_names()
        disabled = set(states.disabled())
        for name in parsed_args.names:
            if name not in known and name not in disabled:
                raise CommandError(f'no hot action named {name}; see '
                                   f'mistral-hotload action list --all')
        if self.enable:
            disabled -= set(parsed_args.names)
        else:
            disabled |= set(parsed_args.names)
        states.set_disabled(disabled)
        verb = 'enabled' if self.enable else 'disabled'
        for name in parsed_args.names:
            self.app.stdout.write(f'{name} {verb}\n')
        if not states.writer_running():
            self.app.stderr.write('The daemon is not running: this takes '
                                  'effect when it starts.\n')
        return 0


class Disable(_Toggle):
    """Hide actions from Mistral without deleting their files.

    Kept across daemon restarts; the seed's ``unregister`` and ``clear``.
    """

    enable = False


class Enable(_Toggle):
    """Serve disabled actions again."""


class Reload(_StateCommand, command.Command):
    """Ask the daemon for a full rescan: every module is probed again.

    Useful after installing a library that a module imports, which no file
    change announces.
    """

    def take_action(self, parsed_args):
        states = self.states()
        if not states.writer_running():
            raise CommandError('the daemon is not running; start it '
                               '(systemctl start mistral-hotload)')
        states.request_rescan()
        self.app.stdout.write('Full rescan requested; see mistral-hotload '
                              'status for the result.\n')
        return 0
