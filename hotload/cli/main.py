"""``mistral-hotload``: inspect and operate hot-loaded Mistral actions."""

import logging
import sys
import warnings

import importlib_metadata
from cliff import app
from cliff import commandmanager
from oslo_service import backend

from hotload import conf as hotload_conf

# Commands reach oslo.service through oslo.messaging; choose its threading
# backend before they are loaded (eventlet is deprecated), and keep the
# warning that merely importing an installed eventlet prints off an
# operator's terminal.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
backend.init_backend(backend.BackendType.THREADING)

DESCRIPTION = """\
Inspect and operate mistral-hotload: check action modules before you deploy
them, list what a directory exports and print its catalog, show the status
of the daemon and of every Mistral process, disable, enable and reload
actions, and check the installation.

Exit status: 0 when all is well; 1 when a checked or served file has an
error (or a doctor check fails); 2 from status when the daemon is not
running or cannot publish, a process lags or the broker is unreachable
(with --cluster: a node lags, drifted, is unverified or in error, or the
publisher is unreachable). See "mistral-hotload help COMMAND".
"""


class HotloadApp(app.App):
    """The cliff application; commands come from ``mistral_hotload.cli``."""

    def __init__(self) -> None:
        super().__init__(
            description=DESCRIPTION,
            version=_version(),
            command_manager=commandmanager.CommandManager(
                'mistral_hotload.cli'),
            deferred_help=True)
        self.conf = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument(
            '--config-file', action='append', dest='config_files',
            metavar='PATH',
            help='Configuration file with a [hotload] section; repeat to '
                 'read several (later ones win). Default: those of '
                 + ', '.join(hotload_conf.DEFAULT_CONFIG_FILES)
                 + ' that exist, in that order (what the shipped systemd '
                 'unit\'s daemon reads).')
        return parser

    def initialize_app(self, argv) -> None:
        self.conf = hotload_conf.load(self.options.config_files)
        # py-amqp warns about frames that arrive while ``status`` closes
        # its reply channel; harmless, and not for an operator's terminal.
        logging.getLogger('amqp').setLevel(logging.ERROR)

    def run(self, argv: list[str]) -> int:
        # Scripts and monitoring call this tool; an interactive shell on
        # an empty command line would hang them.
        return super().run(argv or ['help'])


def _version() -> str:
    try:
        return importlib_metadata.version('mistral-hotload')
    except importlib_metadata.PackageNotFoundError:
        return 'unknown'


def main(argv: list[str] | None = None) -> int:
    return HotloadApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())
