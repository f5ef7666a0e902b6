"""The command line: up, down, status, env, venv, prune.

Run through ``tools/mistral_harness.py``. ``up`` leaves Mistral running
after it returns: the servers are children of a small keeper process (see
``_cmd_up``), and ``down`` finds them again through the state file in the
work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import SCRIPT
from .common import HarnessError
from .common import ProjectInstallError
from .common import flock
from .common import rotate
from .database import prune_databases
from .mistral import STATE_FILE
from .mistral import MistralHarness
from .mistral import default_workdir
from .processes import become_subreaper
from .processes import is_alive
from .processes import proc_stat
from .servers import AUTH_ENV_VARS
from .servers import MISTRAL_ENV_VARS
from .venv import default_venv
from .venv import ensure_venv


def _parse_set(values: list[str]) -> dict[str, dict[str, str]]:
    conf: dict[str, dict[str, str]] = {}
    for item in values:
        key, sep, value = item.partition('=')
        section, dot, option = key.rpartition('.')
        if not sep or not dot or not section or not option:
            raise SystemExit(f'--set wants SECTION.KEY=VALUE, got {item!r}')
        conf.setdefault(section, {})[option] = value
    return conf


_READY = '\0mistral-harness-ready'
_FAILED = '\0mistral-harness-failed '


def _cmd_up(args: argparse.Namespace) -> int:
    """Start a keeper process that starts Mistral, and relay its output.

    The servers must outlive this command. Orphans are adopted by PID 1,
    which (in containers) may reap them late, leaving ``<defunct>`` entries
    after ``down``. So the servers are children of a keeper: a process of
    its own session, made a child subreaper, that starts the harness, then
    does nothing but reap until no child is left (after ``down``).
    """
    workdir = Path(args.workdir).absolute()
    with flock(workdir / '.lock'):
        if (workdir / STATE_FILE).exists():
            old = MistralHarness.from_state(workdir)
            alive = [s for s, pid in old.pids.items()
                     if is_alive(pid, old._starttimes[s])]
            if alive:
                print(f'already up in {workdir} ({old.mistral_url}, pids '
                      f'{old.pids}); run "down" first', file=sys.stderr)
                return 1
            old.log('cleaning up what a previous run left behind')
            old.stop()
        spec = {
            'venv': str(Path(args.venv).absolute()),
            'workdir': str(workdir),
            'install_project': not args.no_project,
            'extra_requirements': args.extra,
            'extra_config': _parse_set(args.set),
            'api_port': args.api_port,
            'timeout': args.timeout,
            'debug': args.debug,
        }
        (workdir / 'logs').mkdir(parents=True, exist_ok=True)
        rotate(workdir / 'logs' / 'keeper.log')
        with open(workdir / 'logs' / 'keeper.log', 'ab') as keeper_log:
            keeper = subprocess.Popen(
                [sys.executable, str(SCRIPT), '_keep',
                 json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=keeper_log, start_new_session=True, text=True)
        code = 1
        relay = _Relay(sys.stdout)
        keeper_out = keeper.stdout
        if keeper_out is None:  # cannot happen with stdout=PIPE
            raise HarnessError('no pipe from the keeper process')
        try:
            for line in keeper_out:
                if line.startswith(_READY):
                    code = 0
                    break
                if line.startswith(_FAILED):
                    code = int(line[len(_FAILED):])
                    break
                relay.write(line)
        except KeyboardInterrupt:
            # The keeper tears down what it started, then exits.
            relay.write('interrupted: tearing down\n')
            keeper.send_signal(signal.SIGTERM)
            for line in keeper_out:
                if not line.startswith(_FAILED):
                    relay.write(line)
            keeper.wait()
            return 130
        finally:
            keeper_out.close()
        if code != 0:
            keeper.wait()
            return code
    relay.write(f'\nTry it:\n  eval "$({_self_command()} env --workdir '
                f'{shlex.quote(str(workdir))})"\n  mistral action-list\n'
                f'Stop it:\n  {_self_command()} down --workdir '
                f'{shlex.quote(str(workdir))}\n')
    return 0


class _Relay:
    """Writes lines to a stream until its reader goes away (EPIPE).

    The keeper must finish (or tear down) what it started even when the
    ``up`` it reports to, or whoever reads ``up``, has gone: a broken pipe
    only ends the relaying, and the stream is pointed at /dev/null so that
    the interpreter's final flush does not fail either.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.alive = True

    def write(self, text: str) -> None:
        """Write and flush ``text``, unless the reader is gone."""
        if not self.alive:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:
            self.alive = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


class _Stop(Exception):
    """Raised by the keeper's SIGTERM handler."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def _cmd_keep(args: argparse.Namespace) -> int:
    """The keeper: start the harness, report, then reap until childless.

    Its stdout goes to ``up`` until the harness is ready, its stderr to
    logs/keeper.log. SIGTERM before ready aborts the start (tearing down);
    after, it stops the harness like ``down`` would.
    """
    spec = json.loads(args.spec)
    become_subreaper()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = _Relay(sys.stdout)

    def log(message: str) -> None:
        _stderr_log(message)
        relay.write(f'[mistral-harness] {message}\n')

    harness = MistralHarness(**spec, log=log)
    stat = proc_stat(os.getpid())
    harness.keeper = (os.getpid(), stat[3] if stat else 0)
    try:
        harness.start()
    except ProjectInstallError as exc:
        _stderr_log(f'ERROR: {exc}')
        relay.write(f'ERROR: {exc}\n{_FAILED}3\n')
        return 3
    except (HarnessError, _Stop) as exc:
        message = str(exc) or 'interrupted'
        _stderr_log(f'ERROR: {message}')
        relay.write(f'ERROR: {message}\n{_FAILED}1\n')
        return 1
    relay.write(_READY + '\n')
    relay.alive = False
    harness.log = _stderr_log
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
        except _Stop:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            harness.log('SIGTERM: stopping Mistral')
            with contextlib.suppress(HarnessError):
                harness.stop()
    _stderr_log('no child left, keeper exits')
    return 0


def _stderr_log(message: str) -> None:
    print(f'[mistral-harness keeper {os.getpid()}] {message}',
          file=sys.stderr, flush=True)


def _self_command() -> str:
    return f'python3 {shlex.quote(str(SCRIPT))}'


def _cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    with flock(workdir / '.lock'):
        try:
            harness = MistralHarness.from_state(workdir)
        except HarnessError as exc:
            print(exc)
            return 0
        try:
            harness.stop()
        except HarnessError as exc:
            print(f'ERROR: {exc}', file=sys.stderr)
            return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        harness = MistralHarness.from_state(args.workdir)
    except HarnessError as exc:
        print(exc)
        return 1
    status = harness.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f'Mistral API  {status["mistral_url"]}: {status["api"]}')
        for server, info in status['servers'].items():
            state = 'running' if info['alive'] else 'NOT RUNNING'
            print(f'  {server:<9} pid {info["pid"]:<7} {state}, workers '
                  f'{info["workers"]}')
        if status['keeper']:
            state = 'running' if status['keeper']['alive'] else 'gone'
            print(f'  keeper    pid {status["keeper"]["pid"]:<7} {state}')
        for key in ('database', 'config_file', 'log_dir', 'venv'):
            print(f'{key:<12} {status[key]}')
    up = all(i['alive'] for i in status['servers'].values())
    return 0 if up and status['api'] == 'HTTP 200' else 1


def _cmd_env(args: argparse.Namespace) -> int:
    try:
        harness = MistralHarness.from_state(args.workdir)
    except HarnessError as exc:
        print(f'echo {shlex.quote(str(exc))} >&2; false')
        return 1
    print(f'unset {" ".join(AUTH_ENV_VARS + MISTRAL_ENV_VARS)}')
    for key, value in harness.env_exports().items():
        print(f'export {key}={shlex.quote(value)}')
    print(f'export PATH={shlex.quote(str(harness.bin_dir))}:"$PATH"')
    return 0


def _cmd_venv(args: argparse.Namespace) -> int:
    try:
        ensure_venv(Path(args.venv), install_project=not args.no_project,
                    extra_requirements=tuple(args.extra))
    except ProjectInstallError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 3
    except HarnessError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 1
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    try:
        prune_databases(Path(args.venv), older_than=args.older_than,
                        dry_run=args.dry_run)
    except HarnessError as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (``--help`` tells the whole story)."""
    parser = argparse.ArgumentParser(
        prog='mistral_harness.py',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Run a real OpenStack Mistral 23 (API, engine and '
                    'executor as three processes) on this machine, against '
                    'the local RabbitMQ and PostgreSQL (start those with '
                    'tools/ensure-services).',
        epilog=f'''\
first time:
  tools/ensure-services
  python3 tools/mistral_harness.py up        # ~1 min the first time (pip)
  eval "$(python3 tools/mistral_harness.py env)"
  mistral action-list
  mistral workflow-create my.yaml && mistral execution-create my_wf '{{}}'
  python3 tools/mistral_harness.py status
  python3 tools/mistral_harness.py down

defaults:
  --venv     $MISTRAL_HARNESS_VENV or {default_venv()}
  --workdir  $MISTRAL_HARNESS_WORKDIR or {default_workdir()}

in the work directory: mistral.conf, logs/{{api,engine,executor}}.log
(Mistral's logs), logs/*.out (stdout/stderr), logs/db-manage.log and
{STATE_FILE} (PIDs, database, port; "down" reads it).

exit status: 0 fine, 1 failed, 3 "pip install -e" of the project failed
(retry with --no-project to run Mistral without it).''')
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='{up,down,status,env,venv,prune}')

    def add_workdir(p: argparse.ArgumentParser) -> None:
        p.add_argument('--workdir', default=str(default_workdir()),
                       help='work directory (default: %(default)s)')

    def add_venv(p: argparse.ArgumentParser) -> None:
        p.add_argument('--venv', default=str(default_venv()),
                       help='virtualenv to create or reuse '
                            '(default: %(default)s)')
        p.add_argument('--no-project', action='store_true',
                       help='do not pip install -e this project into it')
        p.add_argument('--extra', action='append', default=[],
                       metavar='REQUIREMENT',
                       help='one more requirement for the venv, e.g. '
                            'pytest (repeatable; part of what the venv '
                            'marker records)')

    up = sub.add_parser(
        'up', help='start Mistral (creating the venv if needed)',
        description='Create or reuse the venv, create a database, write '
                    'mistral.conf, start API, engine and executor, and wait '
                    'until a workflow runs. Tears down again on failure.')
    add_venv(up)
    add_workdir(up)
    up.add_argument('--api-port', type=int,
                    help='API port (default: a free one)')
    up.add_argument('--timeout', type=float, default=120.0,
                    help='seconds allowed for the servers to become ready '
                         '(default: %(default)s)')
    up.add_argument('--debug', action='store_true',
                    help='debug = true in mistral.conf (verbose logs)')
    up.add_argument('--set', action='append', default=[],
                    metavar='SECTION.KEY=VALUE',
                    help='extra mistral.conf option, e.g. '
                         'hotload.state_dir=/tmp/hl (repeatable)')
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser(
        'down', help='stop Mistral and drop its database',
        description='Kill the servers by PID (SIGTERM, then SIGKILL), '
                    'check that none is left, drop the database.')
    add_workdir(down)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser('status', help='show what runs',
                            description='Exit 0 when all three servers run '
                                        'and the API answers.')
    add_workdir(status)
    status.add_argument('--json', action='store_true', help='JSON output')
    status.set_defaults(func=_cmd_status)

    env = sub.add_parser(
        'env', help='print shell exports for the mistral CLI',
        description='Print shell code that points the mistral CLI and '
                    'python-mistralclient at this Mistral (auth off): '
                    'eval "$(python3 tools/mistral_harness.py env)"')
    add_workdir(env)
    env.set_defaults(func=_cmd_env)

    keep = sub.add_parser('_keep')
    keep.add_argument('spec')
    keep.set_defaults(func=_cmd_keep)

    prune = sub.add_parser(
        'prune', help='drop databases that killed harnesses left behind',
        description='Drop the databases this harness made that are older '
                    'than --older-than and that nothing is connected to. '
                    'Never touches any other database.')
    prune.add_argument('--venv', default=str(default_venv()),
                       help='virtualenv with psycopg2 (default: '
                            '%(default)s)')
    prune.add_argument('--older-than', type=float, default=3600.0,
                       metavar='SECONDS',
                       help='minimum age (default: %(default)s)')
    prune.add_argument('--dry-run', action='store_true',
                       help='only say what would be dropped')
    prune.set_defaults(func=_cmd_prune)

    venv = sub.add_parser(
        'venv', help='only create or update the virtualenv',
        description='Create or update the virtualenv (e.g. ahead of tests).')
    add_venv(venv)
    venv.set_defaults(func=_cmd_venv)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the command line tool."""
    args = build_parser().parse_args(argv)
    return args.func(args)
