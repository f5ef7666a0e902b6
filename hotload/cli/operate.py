"""Commands that read what the daemon published on this node.

They read the state directory (``state_dir``): the current manifest and the
daemon's status file. Exit status of ``status``: 0 when the daemon runs and
every file is served, 1 when some file has an error, 2 when the daemon is
not running or nothing was published.
"""

from cliff import columns
from cliff import lister
from cliff import show

from hotload import exceptions
from hotload import store

EXIT_OK = 0
EXIT_FILE_ERRORS = 1
EXIT_DAEMON_DOWN = 2


class LinesColumn(columns.FormattableColumn):
    """A list shown one item per line in tables, as a list in json/yaml."""

    def human_readable(self) -> str:
        return '\n'.join(self._value)

    def machine_readable(self):
        return list(self._value)


class _StateCommand:
    def states(self) -> store.ManifestStore:
        return store.ManifestStore(self.app.conf.hotload.state_dir)

    def current(self):
        states = self.states()
        try:
            return states.load()
        except exceptions.ManifestError as exc:
            raise RuntimeError(str(exc)) from None


class Status(_StateCommand, show.ShowOne):
    """Show the daemon and what it serves: generation, actions, errors.

    Exit status: 0 all served, 1 some file has an error, 2 the daemon is
    not running (or has published nothing).
    """

    def take_action(self, parsed_args):
        states = self.states()
        current = self.current()
        status = states.load_status()
        running = states.writer_running()
        daemon = 'running' if running else 'not running'
        if status.get('pid'):
            daemon += f' (pid {status["pid"]} on {status.get("host")})'
        errors = []
        if status.get('error'):
            errors.append(status['error'])
        if current:
            errors += [f'{e.location()}: {e.kind}: {e.message}'
                       + ('' if m.good else ' (never served)')
                       for m, e in current.errors()]
        if not running or current is None:
            self.exit_status = EXIT_DAEMON_DOWN
        elif errors:
            self.exit_status = EXIT_FILE_ERRORS
        else:
            self.exit_status = EXIT_OK
        fields = {
            'daemon': daemon,
            'actions_dir': status.get('actions_dir', ''),
            'state_dir': states.state_dir,
            'generation': current.generation if current else 0,
            'published_at': current.created_at if current else '',
            'modules': len(current.modules) if current else 0,
            'actions': len(current.actions()) if current else 0,
            'last_scan': (f'{status["last_scan_at"]}: '
                          f'{status.get("last_scan_probed", 0)} probed in '
                          f'{status.get("last_scan_seconds", 0)} s')
            if status.get('last_scan_at') else '',
            'errors': LinesColumn(errors),
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
        return parser

    def take_action(self, parsed_args):
        current = self.current()
        columns_ = ('name', 'description', 'input_str')
        if parsed_args.long:
            columns_ += ('module', 'file', 'line', 'content_key',
                         'generation')
        rows = []
        for action, module in current.actions() if current else ():
            row = (action.name, action.description, action.input)
            if parsed_args.long:
                row += (module.name, module.path, action.line,
                        module.good.content_key, current.generation)
            rows.append(row)
        return columns_, rows
