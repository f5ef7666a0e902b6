"""``mistral-hotload doctor``: check the installation on a Mistral node.

Each check is one small function returning a :class:`Row`: what was found
and, when it is not ok, the command or configuration line that fixes it.
The checks, in order:

``provider``
    The Python that runs Mistral sees the ``hotload`` entry point in
    ``mistral.action.providers`` and can import it. That Python is asked
    directly (a child process, no shell), because the CLI often runs from
    another environment than Mistral.
``allow/deny lists``
    Mistral's ``[action_providers] allowlist`` and ``denylist`` do not
    exclude ``hotload`` (Mistral's own rules: fnmatch patterns; a non-empty
    allowlist wins and the denylist is then ignored).
``actions_dir``
    The directory exists and passes the trust rules, and nothing under it
    is refused for its owner or mode.
``state_dir``
    Writable by this user (run ``doctor`` as the daemon's user), readable,
    with a manifest the providers can read.
``broker``
    Each host of ``transport_url`` accepts a TCP connection. Only host and
    port are ever shown: the URL carries credentials.
``daemon``
    The daemon holds the state directory's lock.

Exit status: 1 when any check FAILs, else 0 (warnings included).
"""

import fnmatch
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import typing

import oslo_messaging
from cliff import lister
from oslo_config import cfg

from hotload import exceptions
from hotload import scanner
from hotload import signals
from hotload import store
from hotload import trust

OK = 'ok'
WARNING = 'warning'
FAIL = 'FAIL'

EXIT_OK = 0
EXIT_FAILED = 1

PROVIDER_GROUP = 'mistral.action.providers'
PROVIDER_NAME = 'hotload'
MISTRAL_SERVER = 'mistral-server'
SERVICE = 'mistral-hotload'
RESTART_MISTRAL = ('restart mistral-api, mistral-engine and '
                   'mistral-executor once')
# Importing the provider imports Mistral's libraries: a few seconds warm,
# more on a cold page cache.
PYTHON_TIMEOUT = 60.0
# Refused files listed by name; the rest are counted.
SHOWN_PROBLEMS = 3

ACTION_PROVIDERS_GROUP = 'action_providers'
# Mistral's own options (mistral/config.py), registered here so that
# mistral.conf can be read without importing Mistral.
action_providers_opts = [
    cfg.ListOpt('allowlist', default=[],
                help='Action providers Mistral loads; empty: all.'),
    cfg.ListOpt('denylist', default=[],
                help='Action providers Mistral does not load, when '
                     'allowlist is empty.'),
]

# Run by the Mistral Python with ``-I`` (isolated: no current directory,
# PYTHONPATH or user site on sys.path, as under systemd). Written for any
# Python 3.8+, which has no entry_points(group=...).
_PROVIDER_PROGRAM = r'''
import json
import sys
import importlib.metadata as md

group, name = sys.argv[1:3]
found = md.entry_points()
found = (found.select(group=group) if hasattr(found, 'select')
         else found.get(group, []))
report = {'prefix': sys.prefix, 'providers': sorted({e.name for e in found}),
          'value': None, 'error': None, 'versions': {}}
for dist in ('mistral', 'mistral-hotload'):
    try:
        report['versions'][dist] = md.version(dist)
    except md.PackageNotFoundError:
        pass
for entry in found:
    if entry.name == name:
        report['value'] = entry.value
        try:
            entry.load()
        except BaseException as exc:
            report['error'] = '%s: %s' % (type(exc).__name__, exc)
        break
print('\nHOTLOAD-DOCTOR ' + json.dumps(report))
'''
_REPORT_MARK = 'HOTLOAD-DOCTOR '

# pip writes this two-line launcher instead of a plain "#!python" line when
# the interpreter's path is too long or has spaces.
_SH_LAUNCHER = re.compile(r"""^'''exec' ("[^"]+"|\S+) "\$0" "\$@"$""")


class Row(typing.NamedTuple):
    """One line of the report."""

    check: str
    result: str
    detail: str


class NotFound(Exception):
    """The Python that runs Mistral could not be found."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _quote(path: str) -> str:
    return shlex.quote(path)


def interpreter_of(script: str) -> str:
    """The Python that runs ``script``, read from its ``#!`` line.

    Understands ``#!/usr/bin/env python3`` and pip's ``/bin/sh`` launcher
    for long paths.

    :raises NotFound: when the script is not run by a Python we can name.
    """
    try:
        with open(script, 'rb') as stream:
            head = stream.read(4096).decode('utf-8', 'replace')
    except OSError as exc:
        raise NotFound(f'cannot read {script} ({exc.strerror})') from None
    lines = head.splitlines() or ['']
    if not lines[0].startswith('#!'):
        raise NotFound(f'{script} has no #! line')
    words = lines[0][2:].split()
    if not words:
        raise NotFound(f'{script} has an empty #! line')
    program = words[0]
    if os.path.basename(program) == 'env':
        names = [w for w in words[1:] if not w.startswith('-')]
        if not names:
            raise NotFound(f'{script}: cannot read its #! line')
        program = shutil.which(names[0]) or names[0]
    elif os.path.basename(program) == 'sh' and len(lines) > 1:
        launcher = _SH_LAUNCHER.match(lines[1])
        if launcher:
            program = launcher.group(1).strip('"')
    if not os.path.basename(program).startswith('python'):
        raise NotFound(f'{script} is run by {program}, not by Python')
    return program


def find_mistral_python(mistral_python: str | None,
                        mistral_server: str | None) -> tuple[str, str]:
    """The Python that runs Mistral, and how it was found.

    :param mistral_python: Given by the operator; used as is.
    :param mistral_server: The ``mistral-server`` script to read the
        interpreter of; default: the one on PATH.
    :raises NotFound: when there is no Mistral to ask.
    """
    if mistral_python:
        return mistral_python, '--mistral-python'
    server = mistral_server or shutil.which(MISTRAL_SERVER)
    if not server:
        raise NotFound(f'no {MISTRAL_SERVER} on PATH')
    return interpreter_of(server), f'the #! line of {server}'


def check_provider(mistral_python: str | None,
                   mistral_server: str | None) -> Row:
    """Mistral's Python sees the ``hotload`` provider and can import it."""
    name = 'provider'
    try:
        python, how = find_mistral_python(mistral_python, mistral_server)
    except NotFound as exc:
        return Row(name, FAIL,
                   f'no Mistral found: {exc}; pass --mistral-server PATH '
                   f'(the {MISTRAL_SERVER} that systemd runs) or '
                   f'--mistral-python PATH (the Python of its environment, '
                   f'e.g. /opt/mistral/bin/python)')
    command = [python, '-I', '-c', _PROVIDER_PROGRAM,
               PROVIDER_GROUP, PROVIDER_NAME]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=PYTHON_TIMEOUT, cwd='/',
                              check=False)
    except OSError as exc:
        return Row(name, FAIL, f'cannot run {python} (from {how}): '
                               f'{exc.strerror}; pass --mistral-python PATH')
    except subprocess.TimeoutExpired:
        return Row(name, FAIL, f'{python} did not answer within '
                               f'{PYTHON_TIMEOUT:.0f} s')
    reports = [line[len(_REPORT_MARK):] for line in done.stdout.splitlines()
               if line.startswith(_REPORT_MARK)]
    if done.returncode or not reports:
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        return Row(name, FAIL, f'{python} (from {how}) failed: {last}; '
                               f'pass --mistral-python PATH')
    report = json.loads(reports[-1])
    prefix = report['prefix']
    install = (f'{_quote(python)} -m pip install mistral-hotload, then '
               f'{RESTART_MISTRAL}')
    mistral = report['versions'].get('mistral')
    where = f'{python} (from {how})'
    if report['value'] is None:
        others = ', '.join(report['providers']) or 'none'
        detail = (f'{where} has no {PROVIDER_NAME!r} provider (it has: '
                  f'{others}); pip install mistral-hotload into {prefix}: '
                  f'{install}')
        if not mistral:
            detail += (f'. No Mistral is installed there either: is it the '
                       f'Python of {MISTRAL_SERVER}?')
        return Row(name, FAIL, detail)
    if report['error']:
        return Row(name, FAIL,
                   f'{where}: {PROVIDER_NAME} = {report["value"]} cannot '
                   f'be imported: {report["error"]}; reinstall it: '
                   f'{_quote(python)} -m pip install --force-reinstall '
                   f'mistral-hotload')
    version = report['versions'].get('mistral-hotload', 'unknown version')
    if not mistral:
        return Row(name, WARNING,
                   f'{where} loads {report["value"]} (mistral-hotload '
                   f'{version}), but has no Mistral installed: is this the '
                   f'Python that runs {MISTRAL_SERVER}?')
    return Row(name, OK, f'{where} loads {report["value"]} (mistral-hotload '
                         f'{version}, Mistral {mistral})')


def register_mistral_opts(conf: cfg.ConfigOpts) -> None:
    """Register Mistral's ``[action_providers]`` lists, unless they are."""
    try:
        conf[ACTION_PROVIDERS_GROUP].allowlist  # noqa: B018
        conf[ACTION_PROVIDERS_GROUP].denylist  # noqa: B018
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError, KeyError):
        conf.register_opts(action_providers_opts,
                           group=ACTION_PROVIDERS_GROUP)


def filtered_by_allow_deny_list(allowlist: list[str], denylist: list[str],
                                value: str) -> list[str] | None:
    """Mistral's ``filtered_by_allow_deny_list``, saying why.

    :returns: None when ``value`` passes; else the denylist patterns that
        match it, or ``[]`` when a non-empty allowlist lacks it.
    """
    if allowlist:
        return (None if any(fnmatch.fnmatchcase(value, p) for p in allowlist)
                else [])
    matching = [p for p in denylist if fnmatch.fnmatchcase(value, p)]
    return matching or None


def _where(conf: cfg.ConfigOpts, option: str) -> str:
    location = conf.get_location(option, ACTION_PROVIDERS_GROUP)
    if location is not None and location.detail:
        return f' in {location.detail}'
    return ''


def check_allow_deny(conf: cfg.ConfigOpts) -> Row:
    """Mistral's allow and deny lists let it load ``hotload``."""
    name = 'allow/deny lists'
    register_mistral_opts(conf)
    options = conf[ACTION_PROVIDERS_GROUP]
    allowlist, denylist = list(options.allowlist), list(options.denylist)
    matching = filtered_by_allow_deny_list(allowlist, denylist,
                                           PROVIDER_NAME)
    section = f'[{ACTION_PROVIDERS_GROUP}]'
    if matching is None:
        if allowlist:
            why = f'allowlist = {",".join(allowlist)} includes it'
        elif denylist:
            why = f'denylist = {",".join(denylist)} does not match it'
        else:
            why = 'allowlist and denylist are empty'
        return Row(name, OK, f'{PROVIDER_NAME} is allowed ({section} {why})')
    if not matching:
        return Row(name, FAIL,
                   f'{section} allowlist = {",".join(allowlist)}'
                   f'{_where(conf, "allowlist")} does not include '
                   f'{PROVIDER_NAME}, so Mistral never loads the provider; '
                   f'set in {section}: allowlist = '
                   f'{",".join([*allowlist, PROVIDER_NAME])} and '
                   f'{RESTART_MISTRAL}')
    rest = [p for p in denylist if p not in matching]
    return Row(name, FAIL,
               f'{section} denylist = {",".join(denylist)}'
               f'{_where(conf, "denylist")} excludes {PROVIDER_NAME} '
               f'(matched by {", ".join(matching)}); set in {section}: '
               f'denylist = {",".join(rest)} and {RESTART_MISTRAL}')


def daemon_uid(states: store.ManifestStore) -> int | None:
    """The user the daemon runs (or ran) as, when it can be told.

    The running daemon's process, else the owner of the state directory,
    which the daemon created or must be able to write.
    """
    pid = states.load_status().get('pid')
    try:
        if pid and states.writer_running():
            return os.stat(f'/proc/{int(pid)}').st_uid
    except (OSError, ValueError):
        pass
    try:
        return os.stat(states.state_dir).st_uid
    except OSError:
        return None


def _trust_fixes(path: str, st: os.stat_result,
                 policy: trust.TrustPolicy, owner: str,
                 recursive: bool = False) -> list[str]:
    flag = '-R ' if recursive else ''
    fixes = []
    if st.st_uid not in policy.trusted_uids:
        fixes.append(f'chown {flag}{owner} {_quote(path)}')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        fixes.append(f'chmod {flag}go-w {_quote(path)}')
    return fixes


def _ancestor_fixes(root: str, policy: trust.TrustPolicy,
                    owner: str) -> list[str]:
    fixes = []
    path = os.path.dirname(root)
    while True:
        st = os.stat(path)
        if not st.st_mode & stat.S_ISVTX and policy.check_dir(path, st):
            fixes += _trust_fixes(path, st, policy, owner)
        parent = os.path.dirname(path)
        if parent == path:
            return fixes
        path = parent


def refused_under(root: str, policy: trust.TrustPolicy) -> list[str]:
    """What under ``root`` the daemon refuses, as ``path: reason``.

    The scanner's own walk decides, on a throwaway blob store, so doctor
    and the daemon cannot disagree.
    """
    with tempfile.TemporaryDirectory(prefix='hotload-doctor-') as blobs:
        snapshot = scanner.snapshot_tree(root, policy,
                                         store.BlobStore(blobs))
    return [f'{error.path}: {_with_fix(error.message)}'
            for _, error in sorted(snapshot.refused.items())]


#: Refusals whose message names no fix, and what fixes them.
_FIXES = {
    'not a valid Python module name': 'rename the file to letters, digits '
    'and underscores (not starting with a digit) and .py',
    'not a valid Python package name': 'rename the directory to letters, '
    'digits and underscores (not starting with a digit)',
}


def _with_fix(message: str) -> str:
    """The refusal with the fix for its own kind.

    Owner and mode refusals end in a generic hint, which the row replaces
    by the exact commands (:func:`_is_ownership`); the others keep the
    fix their message gives, or get one from :data:`_FIXES`.
    """
    if _is_ownership(message):
        return message.split(';')[0]
    for cause, fix in _FIXES.items():
        if message.startswith(cause) and ';' not in message:
            return f'{message}; {fix}'
    return message


def _is_ownership(message: str) -> bool:
    return 'which is not a trusted owner' in message or \
        ' is writable by ' in message


def check_actions_dir(conf: cfg.ConfigOpts) -> Row:
    """The actions directory exists and passes the trust rules."""
    name = 'actions_dir'
    options = conf.hotload
    root = os.path.realpath(options.actions_dir)
    owners = list(options.trusted_owners)
    states = store.ManifestStore(options.state_dir)
    uid = daemon_uid(states)
    # The daemon trusts its own user; TrustPolicy adds this process's.
    policy = trust.TrustPolicy(
        owners + ([str(uid)] if uid is not None else []),
        options.max_file_size)
    owner = next((o for o in owners if _known_user(o)), 'root')
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return Row(name, FAIL, f'{root} does not exist; create it: '
                               f'install -d -m 0755 -o {owner} {_quote(root)}')
    except OSError as exc:
        return Row(name, FAIL, f'{root}: {exc.strerror}')
    if not stat.S_ISDIR(st.st_mode):
        return Row(name, FAIL, f'{root} is not a directory; set '
                               f'[hotload] actions_dir to a directory')
    try:
        problem = (policy.check_ancestors(root)
                   or policy.check_dir(root, st))
        fixes = (_ancestor_fixes(root, policy, owner)
                 + _trust_fixes(root, st, policy, owner))
    except OSError as exc:
        return Row(name, FAIL, f'{root}: cannot check ({exc})')
    if problem:
        # The policy's message ends in a generic hint; the fix named here
        # is the exact command.
        return Row(name, FAIL,
                   f'{problem.split(";")[0]}, so the daemon loads nothing '
                   f'from it; fix: ' + '; '.join(fixes))
    try:
        refused = refused_under(root, policy)
    except OSError as exc:
        return Row(name, FAIL, f'cannot walk {root} ({exc})')
    unknown = (f'; trusted_owners names unknown users: '
               f'{", ".join(policy.unknown_owners)}'
               if policy.unknown_owners else '')
    trusted = ', '.join(sorted(_user(u) for u in policy.trusted_uids))
    if refused:
        shown = '; '.join(refused[:SHOWN_PROBLEMS])
        more = (f' (and {len(refused) - SHOWN_PROBLEMS} more)'
                if len(refused) > SHOWN_PROBLEMS else '')
        # Only owners and modes are fixed by chmod and chown; the other
        # refusals carry their own fix.
        fix = (f'; fix: chmod -R go-w {_quote(root)}; chown -R {owner} '
               f'{_quote(root)} (trusted owners: {trusted})'
               if any(_is_ownership(r) for r in refused) else '')
        return Row(name, WARNING,
                   f'{root} is trusted, but the daemon refuses '
                   f'{len(refused)} entries under it: {shown}{more}'
                   f'{fix}{unknown}')
    return Row(name, WARNING if unknown else OK,
               f'{root} and everything under it is owned by trusted users '
               f'({trusted}) and writable only by its owner{unknown}')


def _known_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return name.isdigit()
    return True


def _accessible(path: str, mode: int) -> bool:
    return os.access(path, mode,
                     effective_ids=os.access in os.supports_effective_ids)


def check_state_dir(conf: cfg.ConfigOpts) -> Row:
    """The state directory is writable, readable, and has a manifest."""
    name = 'state_dir'
    states = store.ManifestStore(conf.hotload.state_dir)
    path = states.state_dir
    me = _user(os.geteuid())
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        return Row(name, WARNING,
                   f'{path} does not exist; the daemon creates it when it '
                   f'starts (its user must be able to write {parent}), or '
                   f'create it: install -d -m 0755 -o <service user> '
                   f'{_quote(path)}')
    except OSError as exc:
        return Row(name, FAIL, f'{path}: {exc.strerror}')
    if not stat.S_ISDIR(st.st_mode):
        return Row(name, FAIL, f'{path} is not a directory; set [hotload] '
                               f'state_dir to a directory')
    owner = _user(st.st_uid)
    unwritable = [p for p in (path, states.generations_dir, states.blobs.root)
                  if os.path.exists(p)
                  and not _accessible(p, os.W_OK | os.X_OK)]
    if unwritable:
        return Row(name, FAIL,
                   f'{", ".join(unwritable)} not writable by {me} ({path} is '
                   f'owned by {owner}); the daemon runs as the service user '
                   f'and must write here: run doctor as that user '
                   f'(sudo -u {owner} mistral-hotload doctor ...), or, if '
                   f'{me} is the service user: chown -R {me} {_quote(path)}')
    if not _accessible(path, os.R_OK | os.X_OK):
        return Row(name, FAIL, f'{path} is not readable by {me}; '
                               f'chmod 0755 {_quote(path)}')
    try:
        current = states.load()
    except exceptions.ManifestError as exc:
        return Row(name, FAIL, f'{exc}; restart the daemon to publish a new '
                               f'generation: systemctl restart {SERVICE}')
    except OSError as exc:
        return Row(name, FAIL,
                   f'cannot read {states.current_path} ({exc.strerror}); '
                   f'chmod a+r {_quote(states.current_path)}')
    if current is None:
        return Row(name, WARNING,
                   f'{path} (owned by {owner}) has no manifest yet: the '
                   f'daemon publishes one when it starts')
    return Row(name, OK,
               f'{path} (owned by {owner}) is writable; generation '
               f'{current.generation} ({len(current.modules)} modules, '
               f'{len(current.actions())} actions) published at '
               f'{current.created_at}')


def check_broker(conf: cfg.ConfigOpts) -> Row:
    """Each broker of ``transport_url`` accepts a TCP connection."""
    name = 'broker'
    if not signals.transport_configured(conf):
        return Row(name, OK, 'none configured (embedded mode): providers '
                             'notice new generations at their next lookup')
    try:
        driver, hosts = signals.broker_addresses(conf)
        unreachable = signals.unreachable_brokers(conf)
    except oslo_messaging.InvalidTransportURL as exc:
        return Row(name, FAIL, f'transport_url cannot be parsed ({exc}); '
                               f'correct it in [DEFAULT]')
    if not hosts:
        return Row(name, OK, f'{driver}: no broker to connect to')
    if unreachable:
        return Row(name, FAIL,
                   f'broker {", ".join(unreachable)}; providers still pick '
                   f'up new generations by themselves, but signals and '
                   f'`status` of the Mistral processes need it: start the '
                   f'broker, or correct transport_url in [DEFAULT]')
    return Row(name, OK,
               f'{driver} at '
               f'{", ".join(signals.broker_address(*h) for h in hosts)} '
               f'accepts connections (credentials not checked)')


def check_daemon(conf: cfg.ConfigOpts) -> Row:
    """The daemon runs: it holds the state directory's lock."""
    name = 'daemon'
    states = store.ManifestStore(conf.hotload.state_dir)
    try:
        running = states.writer_running()
    except OSError as exc:
        return Row(name, FAIL, f'cannot tell ({exc}); run doctor as the '
                               f'daemon\'s user')
    status = states.load_status()
    where = (f'pid {status["pid"]} on {status.get("host")}'
             if status.get('pid') else '')
    if not running:
        last = f' (last ran as {where})' if where else ''
        return Row(name, FAIL, f'not running{last}; start it: '
                               f'systemctl start {SERVICE}')
    detail = f'running ({where}), generation {status.get("generation", 0)}'
    if status.get('error'):
        return Row(name, WARNING,
                   f'{detail}, but its last scan failed: {status["error"]}')
    return Row(name, OK, detail)


class Doctor(lister.Lister):
    """Check this node's installation and say what to fix.

    Checks, in order: the provider is installed where Mistral runs, the
    allow/deny lists let Mistral load it, actions_dir passes the trust
    rules, state_dir is usable, the broker answers, the daemon runs. Run
    it as the daemon's user with Mistral's configuration
    (--config-file /etc/mistral/mistral.conf). Exit status: 1 when any
    check FAILs, else 0.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--mistral-python', metavar='PATH',
            help='The Python that runs Mistral. Default: the interpreter '
                 'of --mistral-server.')
        parser.add_argument(
            '--mistral-server', metavar='PATH',
            help=f'The {MISTRAL_SERVER} script Mistral runs from. '
                 f'Default: the one on PATH.')
        return parser

    def take_action(self, parsed_args):
        conf = self.app.conf
        rows = [
            check_provider(parsed_args.mistral_python,
                           parsed_args.mistral_server),
            check_allow_deny(conf),
            check_actions_dir(conf),
            check_state_dir(conf),
            check_broker(conf),
            check_daemon(conf),
        ]
        self.exit_status = (EXIT_FAILED if any(r.result == FAIL for r in rows)
                            else EXIT_OK)
        return ('Check', 'Result', 'Detail'), rows

    def run(self, parsed_args):
        super().run(parsed_args)
        return self.exit_status
