"""The curated actions pass the daemon's own checks and match CATALOG.md."""

import json
import os
import subprocess
import sys

TOP = os.path.join(os.path.dirname(__file__), '..', '..')
ACTIONS = os.path.join(TOP, 'actions')
OPTIONS = ('--prefix', 'hotload', '--package-name', 'hotload_actions',
           # A checkout's owners and modes are the developer's, not a
           # node's; the daemon checks them where it runs.
           '--skip-ownership')


def hotload(*args):
    return subprocess.run([sys.executable, '-m', 'hotload.cli.main', *args],
                          capture_output=True, text=True, timeout=300)


def test_every_curated_module_passes_check():
    result = hotload('check', ACTIONS, '-f', 'json', *OPTIONS)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    assert {row['Status'] for row in rows} == {'ok'}
    assert len(rows) == 13


def test_committed_catalog_is_up_to_date():
    result = hotload('catalog', ACTIONS, *OPTIONS)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(ACTIONS, 'CATALOG.md')) as stream:
        committed = stream.read()
    table = committed[committed.index('|name|'):]
    assert result.stdout == table, (
        'actions/CATALOG.md is stale: regenerate it with '
        'mistral-hotload catalog actions --prefix hotload')
