"""Every kind of bad module is reported and never replaces working code.

Each case first serves a good ``greet.py`` (and an unrelated ``other.py``),
then replaces ``greet.py`` with the bad content and scans again: the error
names the file, the line and the cause, the last good version of
``greet.py`` keeps serving, and ``other.py`` is untouched.
"""

import os
import textwrap

import pytest

from tests.polling import process_alive
from tests.polling import wait_for
from tests.unit.conftest import GREET
from tests.unit.conftest import served

OTHER = textwrap.dedent('''
    from mistral_lib import actions


    class Other(actions.Action):
        def run(self, context):
            return 1
''')

CASES = {
    'syntax error': (
        'x = 1\ndef broken(:\n    pass\n', 'syntax', 2, 'invalid syntax'),
    'missing third-party module': (
        'import os\nimport no_such_library_anywhere\n', 'import', 2,
        "No module named 'no_such_library_anywhere'"),
    'exception at import': (
        'x = 1\n\nraise RuntimeError("boom at import")\n', 'exception', 3,
        'RuntimeError: boom at import'),
    'import never finishes': (
        # Stuck in the call on line 3: a bare loop's stack dump may name
        # its backward jump, on the 'while' line.
        'import time\nwhile True:\n    time.sleep(0.05)\n', 'timeout', 3,
        'did not finish within 4 s'),
    'sys.exit at import': (
        'import sys\nsys.exit(3)\n', 'exit', 2, 'sys.exit(3)'),
    'os._exit at import': (
        'import os\n\nos._exit(4)\n', 'exit', 3, 'os._exit(4)'),
    'unbounded memory at import': (
        'hog = []\nwhile True:\n    hog.append(bytearray(10 ** 7))\n',
        'memory', 3, 'memory limit (512 MiB)'),
    'non-UTF-8 bytes': (
        b'x = 1\ny = 2\nname = "caf\xe9"\n', 'encoding', 3,
        'byte 0xe9 is not valid utf-8'),
    'NUL bytes': (
        b'x = 1\n\x00\x00\n', 'encoding', 2, 'NUL byte'),
    'class without run': (
        'class Greet:\n    __export__ = True\n\n    def go(self):\n'
        '        pass\n', 'export', 1, 'has no run() method'),
    'abstract action class': (
        'import abc\nfrom mistral_lib import actions\n\n\n'
        'class Greet(actions.Action):\n    @abc.abstractmethod\n'
        '    def run(self, context):\n        pass\n',
        'export', 5, 'class Greet is abstract'),
    'file truncated mid-write': (
        GREET[:GREET.index('super().__init__()') + 8], 'syntax', None,
        'SyntaxError'),
    'in-tree import of a missing module': (
        'x = 1\nfrom . import not_in_tree\n', 'import', 2, 'not_in_tree'),
}


@pytest.fixture
def serving(tree, scan):
    tree.write('greet.py', GREET)
    tree.write('other.py', OTHER)
    first = scan()
    assert served(first) == {'hot.greet.greet': 'greet.py',
                             'hot.other.other': 'other.py'}
    return first


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_module_is_reported_and_last_good_keeps_serving(
        case, tree, scan, serving):
    content, kind, line, fragment = CASES[case]
    tree.write('greet.py', content)
    found = scan()
    greet = found.modules['greet']
    assert greet.error is not None, case
    assert (greet.error.kind, greet.error.path) == (kind, 'greet.py')
    if line is not None:
        assert greet.error.line == line
    else:
        assert greet.error.line
    assert fragment in greet.error.message
    assert greet.good == serving.modules['greet'].good
    assert found.modules['other'] == serving.modules['other']
    assert found.generation == serving.generation + 1


def test_error_of_never_good_module_is_recorded(tree, scan):
    tree.write('broken.py', 'def f(:\n')
    found = scan()
    record = found.modules['broken']
    assert record.good is None
    assert record.error.location() == 'broken.py:1'


def test_fixing_the_file_clears_the_error(tree, scan, serving):
    tree.write('greet.py', 'def f(:\n')
    assert scan().modules['greet'].error
    tree.write('greet.py', GREET.replace('hello', 'bonjour'))
    found = scan()
    assert found.modules['greet'].error is None
    assert found.modules['greet'].good.sha256 != \
        serving.modules['greet'].good.sha256


def test_output_at_import_does_not_break_the_probe(tree, scan):
    tree.write('noisy.py', 'import sys\nprint("x" * 100000)\n'
               'sys.stderr.write("warning\\n")\n' + GREET)
    found = scan()
    assert found.modules['noisy'].error is None
    assert [a.name for a, _ in found.actions()] == ['hot.noisy.greet']


def test_fifty_megabyte_file_is_refused_unread(tree, scan, serving):
    with open(tree.path('greet.py'), 'r+b') as stream:
        stream.truncate(50 * 1024 * 1024)
    found = scan()
    error = found.modules['greet'].error
    assert error.kind == 'refused'
    assert 'larger than max_file_size' in error.message
    assert found.modules['greet'].good == serving.modules['greet'].good


def test_symlink_out_of_the_tree_is_refused(tree, scan, tmp_path):
    outside = tmp_path / 'outside.py'
    outside.write_text('x = 1\n')
    os.symlink(outside, tree.path('escape.py'))
    os.symlink(tmp_path, tree.path('escapedir'))
    found = scan()
    assert found.modules['escape'].error.kind == 'refused'
    assert 'leads outside the actions directory' in \
        found.modules['escape'].error.message
    assert found.modules['escapedir'].error.kind == 'refused'


def test_symlink_inside_the_tree_is_followed(tree, scan):
    tree.write('greet.py', GREET)
    os.symlink(tree.path('greet.py'), tree.path('alias.py'))
    assert sorted(a.name for a, _ in scan().actions()) == \
        ['hot.alias.greet', 'hot.greet.greet']


def test_world_writable_file_is_refused(tree, scan, serving):
    os.chmod(tree.path('greet.py'), 0o666)
    found = scan()
    error = found.modules['greet'].error
    assert error.kind == 'refused'
    assert 'writable by everyone' in error.message
    assert 'chmod go-w' in error.message
    assert found.modules['greet'].good == serving.modules['greet'].good


def test_group_writable_directory_refuses_its_modules(tree, scan):
    tree.write('pkg/__init__.py', '')
    tree.write('pkg/greet.py', GREET)
    tree.write('greet.py', GREET)
    first = scan()
    assert 'hot.pkg.greet.greet' in served(first)
    os.chmod(tree.path('pkg'), 0o777)
    found = scan()
    for name in ('pkg', 'pkg.greet'):
        assert found.modules[name].error.kind == 'refused'
        assert 'directory pkg is writable by everyone' in \
            found.modules[name].error.message
    # Refused is not deleted: the last good versions keep serving.
    assert served(found) == served(first)


def test_world_writable_root_stops_the_scan(tree, scan):
    from hotload import exceptions
    os.chmod(tree.root, 0o777)
    with pytest.raises(exceptions.UntrustedRootError, match='writable'):
        scan()


def test_file_owned_by_untrusted_user_is_refused(tree, scan):
    tree.write('greet.py', GREET)
    os.chown(tree.path('greet.py'), 65534, 65534)
    error = scan().modules['greet'].error
    assert error.kind == 'refused'
    assert 'not a trusted owner' in error.message


def test_two_files_exporting_one_name_refuse_the_newcomer(tree, scan,
                                                          serving):
    tree.write('late.py', GREET.replace(
        'class Greet(actions.Action):',
        'class Greet(actions.Action):\n'
        '    __action_name__ = "hot.greet.greet"'))
    found = scan()
    error = found.modules['late'].error
    assert error.kind == 'collision'
    assert 'hot.greet.greet' in error.message
    assert 'greet.py:5' in error.message and error.path == 'late.py'
    assert served(found)['hot.greet.greet'] == 'greet.py'


def test_collision_between_two_new_files_keeps_the_first_path(tree, scan):
    declared = GREET.replace(
        'class Greet(actions.Action):',
        'class Greet(actions.Action):\n    __action_name__ = "shared.name"')
    tree.write('b.py', declared)
    tree.write('a.py', declared)
    found = scan()
    assert served(found) == {'shared.name': 'a.py'}
    assert found.modules['b'].error.kind == 'collision'
    assert 'a.py' in found.modules['b'].error.message


def test_collision_is_resolved_when_the_holder_goes(tree, scan, serving):
    tree.write('late.py', GREET.replace(
        'class Greet(actions.Action):',
        'class Greet(actions.Action):\n'
        '    __action_name__ = "hot.greet.greet"'))
    assert scan().modules['late'].error.kind == 'collision'
    tree.remove('greet.py')
    assert served(scan())['hot.greet.greet'] == 'late.py'


def test_name_under_std_is_refused(tree, scan):
    tree.write('echo.py', GREET.replace(
        'class Greet(actions.Action):',
        'class Greet(actions.Action):\n    __action_name__ = "std.echo"'))
    error = scan().modules['echo'].error
    assert error.kind == 'reserved'
    assert "reserved prefix 'std.'" in error.message
    assert error.location() == 'echo.py:5'


def test_empty_prefix_cannot_shadow_std(tree, scan):
    scan.prefix = ''
    tree.write('std.py', OTHER)
    assert scan().modules['std'].error.kind == 'reserved'


def test_circular_in_tree_imports_are_refused(tree, scan):
    tree.write('a.py', 'from . import b\n' + GREET)
    tree.write('b.py', 'x = 1\nfrom . import a\n')
    found = scan()
    for name in ('a', 'b'):
        error = found.modules[name].error
        assert error.kind == 'cycle'
        assert 'circular' in error.message
    assert 'a -> b -> a' in found.modules['a'].error.message
    assert found.modules['a'].error.location() == 'a.py:1'
    assert found.actions() == []


def test_import_inside_a_function_is_not_a_cycle(tree, scan):
    tree.write('a.py', 'from . import b\n' + GREET)
    tree.write('b.py', 'def late():\n    from . import a\n    return a\n')
    found = scan()
    assert [m.error for m in found.modules.values()] == [None, None]
    assert found.modules['a'].good.imports == {
        'b': found.modules['b'].good.sha256}


def test_broken_in_tree_dependency_names_its_own_file(tree, scan):
    tree.write('common.py', 'x = (\n')
    tree.write('use.py', 'from . import common\n' + GREET)
    error = scan().modules['use'].error
    assert (error.kind, error.path, error.line) == ('syntax', 'common.py', 1)


def test_editor_temp_and_hidden_files_are_ignored(tree, scan):
    for name in ('.#greet.py', 'greet.py~', '.greet.py.swp', '4913',
                 '#greet.py#', 'notes.txt', '.hidden.py'):
        tree.write(name, 'def f(:\n')
    tree.write('__pycache__/x.py', 'def f(:\n')
    tree.write('greet.py', GREET)
    found = scan()
    assert list(found.modules) == ['greet']
    assert found.errors() == []


def test_invalid_module_name_is_refused(tree, scan):
    tree.write('my-actions.py', GREET)
    error = scan().modules['my-actions.py'].error
    assert error.kind == 'refused'
    assert 'not a valid Python module name' in error.message


def test_realtime_signal_death_is_reported(tree, scan, serving):
    tree.write('greet.py', 'import os, signal\n'
               'os.kill(os.getpid(), signal.SIGRTMIN + 2)\n')
    error = scan().modules['greet'].error
    assert error.kind == 'crash'
    assert 'killed by signal' in error.message


def test_str_subclass_as_action_name_cannot_reach_the_daemon(tree, scan):
    tree.write('odd.py', GREET.replace(
        'class Greet(actions.Action):',
        'class Name(str):\n    pass\n\n\nclass Greet(actions.Action):\n'
        '    __action_name__ = Name("odd.name")'))
    found = scan()
    assert [a.name for a, _ in found.actions()] == ['odd.name']
    # The next module is still scanned: the daemon unpickled nothing.
    tree.write('after.py', OTHER)
    assert 'hot.after.other' in {a.name for a, _ in scan().actions()}


def test_endless_output_is_cut_and_reported_with_its_line(tree, scan):
    tree.write('loud.py', 'while True:\n    print("x" * 65536)\n')
    error = scan().modules['loud'].error
    assert (error.kind, error.line) == ('exception', 2)
    assert 'File too large' in error.message


def test_processes_started_at_import_die_with_the_probe(tree, scan,
                                                        tmp_path):
    pidfile = tmp_path / 'child.pid'
    tree.write('spawner.py', 'import subprocess\n'
               'child = subprocess.Popen(["sleep", "600"])\n'
               f'open({str(pidfile)!r}, "w").write(str(child.pid))\n')
    scan()
    pid = int(pidfile.read_text())
    wait_for(lambda: not process_alive(pid), f'sleep {pid} to be killed')


def test_module_waiting_on_a_hanging_import_is_retried_when_it_is_fixed(
        tree, scan):
    tree.write('common.py', 'while True:\n    pass\n')
    tree.write('user.py', 'from . import common\n' + OTHER)
    found = scan()
    assert found.modules['user'].error.kind == 'timeout'
    tree.write('common.py', 'X = 1\n')
    found = scan()
    assert scan.probed == ['common', 'user']
    assert found.modules['user'].error is None


def test_package_importing_its_submodule_is_not_a_cycle(tree, scan):
    tree.write('pkg/__init__.py', 'from .mod import Greet  # noqa\n')
    tree.write('pkg/helpers.py', 'X = 1\n')
    tree.write('pkg/mod.py', 'from . import helpers\n' + GREET)
    found = scan()
    assert found.errors() == []
    assert 'hot.pkg.mod.greet' in {a.name for a, _ in found.actions()}


def test_imports_inside_functions_are_pinned_with_their_own(tree, scan):
    tree.write('c.py', 'X = 1\n')
    tree.write('b.py', 'from . import c\n')
    tree.write('a.py', GREET.replace(
        'def run(self, context):',
        'def run(self, context):\n        from . import b  # noqa'))
    found = scan()
    assert set(found.modules['a'].good.imports) == {'b', 'c'}


def test_files_that_cannot_be_loaded_are_reported_not_dropped(tree, scan):
    tree.write('foo.py', OTHER)
    tree.write('foo/__init__.py', GREET)
    tree.write('cinder-v2/backups.py', GREET)
    tree.write('__init__.py', 'x = 1\n')
    found = scan()
    assert 'hot.foo.greet' in {a.name for a, _ in found.actions()}
    assert 'shadowed by the package foo/__init__.py' in \
        found.modules['foo.py'].error.message
    assert 'not a valid Python package name' in \
        found.modules['cinder-v2'].error.message
    assert 'its own __init__.py is not loaded' in \
        found.modules['__init__.py'].error.message
