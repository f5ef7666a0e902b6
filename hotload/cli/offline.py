"""Commands that work on a directory, without the daemon or Mistral.

``check`` is meant for action authors' own CI: it validates files exactly
as the daemon would (same probe, same trust and naming rules) and exits 1
on any error. A file is checked within its actions directory, so that its
module name, action names and in-tree imports are the daemon's: ``--root
DIR`` names that directory; without it, the configured ``actions_dir``
when the file is in it, else the directory found by :func:`tree_root`.
``discover`` and ``catalog`` are the seed tool's ``discover`` and
``markdown-dump``.
"""

import argparse
import contextlib
import os
import tempfile

from cliff import command
from cliff import lister

from hotload import exceptions
from hotload import manifest
from hotload import probe as probe_mod
from hotload import scanner as scanner_mod
from hotload import store
from hotload import trust


def tree_root(path: str) -> str:
    """The actions directory a file or directory belongs to, as a guess.

    Walks up while the directory is a package (has ``__init__.py``), the
    way Python finds where a package starts. Actions directories need no
    ``__init__.py``, so this stops too low in a tree without them: it is
    only the last resort of :func:`check_root`.
    """
    path = os.path.abspath(path)
    root = path if os.path.isdir(path) else os.path.dirname(path)
    while os.path.exists(os.path.join(root, '__init__.py')):
        parent = os.path.dirname(root)
        if parent == root:
            break
        root = parent
    return root


def _resolved(path: str) -> str:
    """``path`` absolute, with the symlinks of its directories resolved.

    Its last component is kept: a symlinked module is checked under its
    own name, as the scanner reports it.
    """
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)),
                        os.path.basename(path))


def _contains(directory: str, path: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


def check_root(path: str, root: str | None = None,
               actions_dir: str | None = None) -> tuple[str, str]:
    """The actions directory to check ``path`` in, and ``path`` itself.

    :param path: The file or directory to check.
    :param root: The actions directory given by the operator
        (``--root``); it must contain ``path``.
    :param actions_dir: The configured ``actions_dir``, used when it
        contains ``path``.
    :returns: The directory and ``path``, both absolute with their
        directories' symlinks resolved, so that they compare.
    :raises SystemExitError: when ``path`` is not in ``root``.
    """
    path = _resolved(path)
    if root is not None:
        directory = os.path.realpath(root)
        if not _contains(directory, path):
            raise SystemExitError(f'{path}: not in --root {root}')
        return directory, path
    if actions_dir:
        directory = os.path.realpath(actions_dir)
        if _contains(directory, path):
            return directory, path
    return tree_root(path), path


def scan_offline(root: str, conf, parsed_args) -> manifest.Manifest:
    """Scan ``root`` into a throwaway state directory.

    :raises UntrustedRootError: when the directory is refused.
    """
    options = conf.hotload
    package_name = parsed_args.package_name or options.package_name
    prefix = (options.action_prefix if parsed_args.prefix is None
              else parsed_args.prefix)
    policy = trust.TrustPolicy(
        options.trusted_owners, options.max_file_size,
        check_ownership=not parsed_args.skip_ownership)
    with contextlib.ExitStack() as stack:
        state_dir = stack.enter_context(
            tempfile.TemporaryDirectory(prefix='hotload-check-'))
        states = store.ManifestStore(state_dir)
        states.ensure()
        probe = stack.enter_context(probe_mod.Probe(
            root, package_name, states.blobs.root, options.probe_timeout,
            options.probe_memory_limit))
        scanner = scanner_mod.Scanner(
            root, states.blobs, probe, policy, package_name, prefix,
            options.reserved_prefixes, options.probe_workers)
        result = scanner.scan(manifest.Manifest.empty(package_name, prefix))
        return manifest.Manifest.build(result.modules, package_name,
                                       prefix, 1)


class _OfflineCommand:
    """Options shared by the offline commands."""

    def add_scan_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            '--prefix', metavar='PREFIX', default=None,
            help='Action name prefix (default: action_prefix from the '
                 'configuration).')
        parser.add_argument(
            '--package-name', metavar='NAME', default=None,
            help='Import name the directory is mounted as (default: '
                 'package_name from the configuration).')
        parser.add_argument(
            '--skip-ownership', action='store_true',
            help='Do not check owners and modes, e.g. in a CI checkout; '
                 'the daemon always checks them.')

    def scan_dir(self, directory: str, parsed_args) -> manifest.Manifest:
        if not os.path.isdir(directory):
            raise SystemExitError(f'{directory}: not a directory')
        try:
            return scan_offline(os.path.abspath(directory), self.app.conf,
                                parsed_args)
        except exceptions.UntrustedRootError as exc:
            raise SystemExitError(str(exc)) from None

    def report_errors(self, directory: str, found: manifest.Manifest) -> int:
        """Write every error to stderr as ``file:line: kind: message``."""
        errors = found.errors()
        for _module, error in errors:
            where = os.path.relpath(os.path.join(directory, error.path))
            if error.line:
                where += f':{error.line}'
            self.app.stderr.write(f'{where}: {error.kind}: {error.message}\n')
        return len(errors)


class SystemExitError(Exception):
    """Reported by cliff as the command's error message, exit status 1."""


class Check(_OfflineCommand, lister.Lister):
    """Validate action modules as the daemon would; exit 1 on any error.

    PATH may be a file or a directory; a file is checked together with the
    rest of its actions directory, so its name and in-tree imports are the
    daemon's. That directory is --root DIR when given; else actions_dir
    from the configuration when PATH is in it; else found by walking up
    from PATH while directories have __init__.py (pass --root when they
    have none).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('paths', metavar='PATH', nargs='+',
                            help='Module file or actions directory.')
        parser.add_argument(
            '--root', metavar='DIR', default=None,
            help='The actions directory the PATHs belong to (module and '
                 'action names are relative to it). Default: actions_dir '
                 'from the configuration when it contains PATH, else the '
                 'directory found by walking up from PATH while '
                 'directories have __init__.py.')
        self.add_scan_arguments(parser)
        return parser

    def take_action(self, parsed_args):
        self.failed = False
        rows = []
        by_root: dict[str, list[str]] = {}
        for path in parsed_args.paths:
            if not os.path.exists(path) and not os.path.islink(path):
                raise SystemExitError(f'{path}: no such file or directory')
            root, absolute = check_root(
                path, parsed_args.root, self.app.conf.hotload.actions_dir)
            by_root.setdefault(root, []).append(absolute)
        for root, paths in sorted(by_root.items()):
            found = self.scan_dir(root, parsed_args)
            for record in sorted(found.modules.values(),
                                 key=lambda r: r.path):
                absolute = os.path.join(root, record.path)
                if not any(absolute == p or absolute.startswith(p + os.sep)
                           for p in paths):
                    continue
                rows.append(self._row(root, record))
        self.failed = any(row[2] != 'ok' for row in rows)
        return ('File', 'Line', 'Status', 'Detail'), rows

    @staticmethod
    def _row(root: str, record: manifest.ModuleRecord):
        path = os.path.relpath(os.path.join(root, record.path))
        error = record.error
        if error:
            where = os.path.relpath(os.path.join(root, error.path))
            detail = error.message if where == path else \
                f'{where}:{error.line or "?"}: {error.message}'
            line = error.line if where == path else None
            return (path, line or '', error.kind, detail)
        names = ', '.join(a.name for a in record.actions)
        return (path, '', 'ok', names or 'no actions')

    def run(self, parsed_args):
        status = super().run(parsed_args)
        return 1 if self.failed else status


class Discover(_OfflineCommand, lister.Lister):
    """List the actions a directory exports (default: actions_dir).

    Files with errors are reported on stderr and make the exit status 1.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('directory', metavar='DIR', nargs='?',
                            help='Actions directory (default: actions_dir '
                                 'from the configuration).')
        parser.add_argument('--long', action='store_true',
                            help='Also show module, file and line.')
        self.add_scan_arguments(parser)
        return parser

    def take_action(self, parsed_args):
        directory = parsed_args.directory or self.app.conf.hotload.actions_dir
        found = self.scan_dir(directory, parsed_args)
        self.failed = bool(self.report_errors(directory, found))
        columns = ('name', 'description', 'input_str')
        if parsed_args.long:
            columns += ('module', 'file', 'line')
        rows = []
        for action, module in found.actions():
            row = (action.name, action.description, action.input)
            if parsed_args.long:
                row += (module.name, module.path, action.line)
            rows.append(row)
        return columns, rows

    def run(self, parsed_args):
        status = super().run(parsed_args)
        return 1 if self.failed else status


class Catalog(_OfflineCommand, command.Command):
    """Print the actions of a directory as a markdown table.

    The seed tool's ``markdown-dump``: paste it into a README. Files with
    errors are reported on stderr and make the exit status 1.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('directory', metavar='DIR', nargs='?',
                            help='Actions directory (default: actions_dir '
                                 'from the configuration).')
        self.add_scan_arguments(parser)
        return parser

    def take_action(self, parsed_args):
        directory = parsed_args.directory or self.app.conf.hotload.actions_dir
        found = self.scan_dir(directory, parsed_args)
        out = self.app.stdout
        out.write('|name|input_str|description|\n|---|---|---|\n')
        for action, _module in found.actions():
            cells = (action.name, action.input, action.description)
            out.write('|' + '|'.join(_cell(c) for c in cells) + '|\n')
        return 1 if self.report_errors(directory, found) else 0


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')

