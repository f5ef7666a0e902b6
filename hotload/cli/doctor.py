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
    is refused for its owner or mode (with ``mode = mirror``: none is
    needed).
``state_dir``
    Writable by this user (run ``doctor`` as the daemon's user), readable,
    with a manifest the providers can read.
``broker``
    Each host of ``transport_url`` accepts a TCP connection. Only host and
    port are ever shown: the URL carries credentials.
``daemon``
    The daemon holds the state directory's lock.
``names``
    Only when a Mistral process of this node reports one: a hot action it
    does not serve because another of its action providers serves the
    name (:mod:`hotload.cli.doctor_names`); the fix renames the action or
    sets ``action_prefix``.

On a node of a cluster (``mode = mirror``, or a ``cluster_key``) three
more follow, ``mode``, ``cluster_key`` and ``publisher``
(:mod:`hotload.cli.doctor_cluster`); a single node's report is unchanged.
The provider's checks are in :mod:`hotload.cli.doctor_mistral`.

Exit status: 1 when any check FAILs, else 0 (warnings included).
"""

import os
import pwd
import stat
import tempfile

import oslo_messaging
from cliff import lister
from oslo_config import cfg

from hotload import exceptions
from hotload import scanner
from hotload import signals
from hotload import store
from hotload import trust
from hotload.cli import doctor_cluster
from hotload.cli import doctor_mistral
from hotload.cli import doctor_names
from hotload.cli.diagnosis import FAIL
from hotload.cli.diagnosis import OK
from hotload.cli.diagnosis import SERVICE
from hotload.cli.diagnosis import WARNING
from hotload.cli.diagnosis import Row
from hotload.cli.diagnosis import quote
from hotload.cli.diagnosis import user_name

EXIT_OK = 0
EXIT_FAILED = 1

# Refused files listed by name; the rest are counted.
SHOWN_PROBLEMS = 3


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
        fixes.append(f'chown {flag}{owner} {quote(path)}')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        fixes.append(f'chmod {flag}go-w {quote(path)}')
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
    if options.mode == 'mirror':
        return Row(name, OK, 'none needed: mode = mirror serves the '
                             'publisher\'s generations')
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
                               f'install -d -m 0755 -o {owner} {quote(root)}')
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
    trusted = ', '.join(sorted(user_name(u) for u in policy.trusted_uids))
    if refused:
        shown = '; '.join(refused[:SHOWN_PROBLEMS])
        more = (f' (and {len(refused) - SHOWN_PROBLEMS} more)'
                if len(refused) > SHOWN_PROBLEMS else '')
        # Only owners and modes are fixed by chmod and chown; the other
        # refusals carry their own fix.
        fix = (f'; fix: chmod -R go-w {quote(root)}; chown -R {owner} '
               f'{quote(root)} (trusted owners: {trusted})'
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
    me = user_name(os.geteuid())
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        return Row(name, WARNING,
                   f'{path} does not exist; the daemon creates it when it '
                   f'starts (its user must be able to write {parent}), or '
                   f'create it: install -d -m 0755 -o <service user> '
                   f'{quote(path)}')
    except OSError as exc:
        return Row(name, FAIL, f'{path}: {exc.strerror}')
    if not stat.S_ISDIR(st.st_mode):
        return Row(name, FAIL, f'{path} is not a directory; set [hotload] '
                               f'state_dir to a directory')
    owner = user_name(st.st_uid)
    unwritable = [p for p in (path, states.generations_dir, states.blobs.root)
                  if os.path.exists(p)
                  and not _accessible(p, os.W_OK | os.X_OK)]
    if unwritable:
        return Row(name, FAIL,
                   f'{", ".join(unwritable)} not writable by {me} ({path} is '
                   f'owned by {owner}); the daemon runs as the service user '
                   f'and must write here: run doctor as that user '
                   f'(sudo -u {owner} mistral-hotload doctor ...), or, if '
                   f'{me} is the service user: chown -R {me} {quote(path)}')
    if not _accessible(path, os.R_OK | os.X_OK):
        return Row(name, FAIL, f'{path} is not readable by {me}; '
                               f'chmod 0755 {quote(path)}')
    try:
        current = states.load()
    except exceptions.ManifestError as exc:
        return Row(name, FAIL, f'{exc}; restart the daemon to publish a new '
                               f'generation: systemctl restart {SERVICE}')
    except OSError as exc:
        return Row(name, FAIL,
                   f'cannot read {states.current_path} ({exc.strerror}); '
                   f'chmod a+r {quote(states.current_path)}')
    if current is None:
        when = ('copies the publisher\'s first generation'
                if conf.hotload.mode == 'mirror' else 'starts')
        return Row(name, WARNING,
                   f'{path} (owned by {owner}) has no manifest yet: the '
                   f'daemon publishes one when it {when}')
    return Row(name, OK,
               f'{path} (owned by {owner}) is writable; generation '
               f'{current.generation} ({len(current.modules)} modules, '
               f'{current.action_count()} actions) published at '
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
        what = ('exchange with the publisher' if conf.hotload.mode ==
                'mirror' else 'scan')
        return Row(name, WARNING,
                   f'{detail}, but its last {what} failed: '
                   f'{status["error"]}')
    return Row(name, OK, detail)


class Doctor(lister.Lister):
    """Check this node's installation and say what to fix.

    Checks, in order: the provider is installed where Mistral runs, the
    allow/deny lists let Mistral load it, actions_dir passes the trust
    rules (none is needed with mode = mirror), state_dir is usable, the
    broker answers, the daemon runs, no hot action name is one another
    action provider of Mistral's processes serves (a row only when one
    is: it is not served); and on a node of a cluster (mode =
    mirror or a cluster_key): the mode has what it needs, the cluster_key
    is set and long enough (never shown), the publisher answers. Run it
    as the daemon's user with Mistral's configuration
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
            help=f'The {doctor_mistral.MISTRAL_SERVER} script Mistral '
                 f'runs from. Default: the one on PATH.')
        return parser

    def take_action(self, parsed_args):
        conf = self.app.conf
        broker = check_broker(conf)
        rows = [
            doctor_mistral.check_provider(parsed_args.mistral_python,
                                          parsed_args.mistral_server),
            doctor_mistral.check_allow_deny(conf),
            check_actions_dir(conf),
            check_state_dir(conf),
            broker,
            check_daemon(conf),
        ]
        # Only Mistral's processes know their other providers: asked when
        # the broker answers (else its row says why they cannot be).
        if broker.result == OK and signals.transport_configured(conf):
            names = doctor_names.check_names(conf)
            if names is not None:
                rows.append(names)
        rows += doctor_cluster.checks(conf)
        self.exit_status = (EXIT_FAILED if any(r.result == FAIL for r in rows)
                            else EXIT_OK)
        return ('Check', 'Result', 'Detail'), rows

    def run(self, parsed_args):
        super().run(parsed_args)
        return self.exit_status
