"""The offline commands, run as an action author runs them."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.unit.conftest import GREET
from tests.unit.test_scanner import SEED
from tests.unit.test_scanner import SEED_CATALOG


def hotload(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'hotload.cli.main', *args],
        capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture
def seed_tree(tmp_path):
    root = str(tmp_path / 'mistral_actions')
    shutil.copytree(SEED, root, ignore=shutil.ignore_patterns('*.rst'))
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o755)
    return root


def test_check_passes_good_files(tree):
    tree.write('greet.py', GREET)
    result = hotload('check', '-f', 'json', tree.path('greet.py'))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row['Status'] == 'ok'
    assert row['Detail'] == 'hotload.greet.greet'


def test_check_reports_file_line_and_cause_and_exits_1(tree):
    tree.write('greet.py', GREET)
    tree.write('broken.py', 'x = 1\ny = (\n')
    result = hotload('check', '-f', 'value', '-c', 'File', '-c', 'Line',
                     '-c', 'Status', tree.root, cwd=tree.root)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        'broken.py 2 syntax', 'greet.py  ok']


def test_check_of_one_file_resolves_its_in_tree_imports(tree):
    tree.write('common.py', 'GREETING = "hi"\n')
    tree.write('cinder/__init__.py', '')
    tree.write('cinder/backups.py', 'from .. import common\n' + GREET)
    tree.write('other.py', 'def f(:\n')
    result = hotload('check', '-f', 'json', tree.path('cinder/backups.py'))
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)
    assert row['Detail'] == 'hotload.cinder.backups.greet'


def _tree_without_init_files(tree) -> str:
    tree.write('common.py', 'GREETING = "hi"\n')
    return tree.write('cinder/backups.py', 'from .. import common\n' + GREET)


def test_check_with_root_resolves_imports_without_init_files(tree):
    backups = _tree_without_init_files(tree)
    # Walking up through __init__.py files would stop at cinder/.
    assert hotload('check', backups).returncode == 1
    result = hotload('check', '-f', 'json', '--root', tree.root, backups)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)
    assert row['Detail'] == 'hotload.cinder.backups.greet'


def test_check_of_a_file_in_actions_dir_uses_it_as_root(tree, tmp_path):
    backups = _tree_without_init_files(tree)
    config = tmp_path / 'mistral.conf'
    config.write_text(f'[hotload]\nactions_dir = {tree.root}\n')
    result = hotload('--config-file', str(config), 'check', '-f', 'json',
                     backups)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(result.stdout)
    assert row['Detail'] == 'hotload.cinder.backups.greet'


def test_check_of_a_path_outside_root_fails_clearly(tree):
    backups = _tree_without_init_files(tree)
    result = hotload('check', '--root', tree.path('cinder'),
                     tree.path('common.py'), backups)
    assert result.returncode == 1
    assert f'common.py: not in --root {tree.path("cinder")}' \
        in result.stderr


def test_check_of_missing_path_fails_clearly(tmp_path):
    result = hotload('check', str(tmp_path / 'nope.py'))
    assert result.returncode == 1
    assert 'nope.py: no such file or directory' in result.stderr


def test_discover_lists_the_seed_catalog(seed_tree):
    result = hotload('discover', seed_tree, '--prefix', 'int32bit',
                     '--package-name', 'mistral_actions', '-f', 'json')
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r['name']: (r['description'], r['input_str'])
            for r in rows} == SEED_CATALOG


def test_discover_reports_errors_on_stderr(tree):
    tree.write('greet.py', GREET)
    tree.write('broken.py', 'raise ValueError("no")\n')
    result = hotload('discover', tree.root, '-f', 'value', '-c', 'name')
    assert result.returncode == 1
    assert result.stdout.split() == ['hotload.greet.greet']
    assert 'broken.py:1: exception: ValueError: no' in result.stderr


def test_catalog_prints_the_seed_markdown_table(seed_tree):
    result = hotload('catalog', seed_tree, '--prefix', 'int32bit',
                     '--package-name', 'mistral_actions')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ['|name|input_str|description|', '|---|---|---|']
    assert ('|int32bit.cinder.backups.assert_status|'
            'backup_id, status="available"|'
            'Assert a volume backup in special status.|') in lines
    assert len(lines) == 2 + len(SEED_CATALOG)


def test_untrusted_directory_is_an_error(tree):
    tree.write('greet.py', GREET)
    os.chmod(tree.root, 0o777)
    result = hotload('discover', tree.root)
    assert result.returncode == 1
    assert 'is writable by everyone' in result.stderr
    result = hotload('discover', tree.root, '--skip-ownership')
    assert result.returncode == 0


def test_help_names_every_command():
    result = hotload('--help')
    assert result.returncode == 0
    for command in ('check', 'discover', 'catalog', 'complete'):
        assert f'\n  {command} ' in result.stdout
    assert hotload().stdout == result.stdout
