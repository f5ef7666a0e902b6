"""``doctor``'s checks of Mistral's side: the provider is installed where
Mistral runs (``provider``), and Mistral's allow and deny lists let it
load it (``allow/deny lists``); see :mod:`hotload.cli.doctor`.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess

from oslo_config import cfg

from hotload.cli.diagnosis import FAIL
from hotload.cli.diagnosis import OK
from hotload.cli.diagnosis import WARNING
from hotload.cli.diagnosis import Row
from hotload.cli.diagnosis import quote

PROVIDER_GROUP = 'mistral.action.providers'
PROVIDER_NAME = 'hotload'
MISTRAL_SERVER = 'mistral-server'
RESTART_MISTRAL = ('restart mistral-api, mistral-engine and '
                   'mistral-executor once')
# Importing the provider imports Mistral's libraries: a few seconds warm,
# more on a cold page cache.
PYTHON_TIMEOUT = 60.0

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


class NotFound(Exception):
    """The Python that runs Mistral could not be found."""


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
    install = (f'{quote(python)} -m pip install mistral-hotload, then '
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
                   f'{quote(python)} -m pip install --force-reinstall '
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
