"""Scanning: in-tree imports, incremental probing and the seed's modules."""

import os
import shutil

from hotload import manifest
from hotload import probe as probe_mod
from hotload import scanner as scanner_mod
from hotload import store
from hotload import trust
from tests.unit.conftest import GREET
from tests.unit.conftest import served

SEED = os.path.join(os.path.dirname(__file__), '..', 'fixtures',
                    'seed_actions')

# The seed's catalogue, as `mistral-actions discover` printed it
# (shared/seeds/000_*.txt), plus the README's example.runner.
SEED_CATALOG = {
    'int32bit.cinder.backups.assert_status': (
        'Assert a volume backup in special status.',
        'backup_id, status="available"'),
    'int32bit.cinder.backups.create': (
        'Creates a volume backup.',
        'volume_id, backup_name, snapshot_id=null, description=null, '
        'container=null, incremental=true, force=true'),
    'int32bit.cinder.snapshots.assert_status': (
        'Assert a volume snapshot in special status.',
        'snapshot_id, status="available"'),
    'int32bit.cinder.volumes.assert_status': (
        'Assert a volume in special status.', 'volume_id, status="available"'),
    'int32bit.glance.images.assert_status': (
        'Assert a image in special status.', 'image_id, status="active"'),
    'int32bit.glance.images.filter_by': (
        'List image filtered by id, name, status, etc.', '**kwargs'),
    'int32bit.nova.servers.assert_status': (
        'Assert a server in special status.', 'server_id, status="ACTIVE"'),
    'int32bit.system.exec': (
        'Run command with arguments and return its output as a byte string.',
        'cmd'),
    'int32bit.example.runner': ('', 'param'),
}


def test_seed_modules_get_the_seed_names(tmp_path):
    root = str(tmp_path / 'mistral_actions')
    shutil.copytree(SEED, root, ignore=shutil.ignore_patterns('*.rst'))
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o755)
    states = store.ManifestStore(str(tmp_path / 'state'))
    states.ensure()
    with probe_mod.Probe(root, 'mistral_actions', states.blobs.root,
                         5.0, 512) as probe:
        scanner = scanner_mod.Scanner(
            root, states.blobs, probe, trust.TrustPolicy(['root'], 1 << 20),
            'mistral_actions', 'int32bit', ['std.'])
        modules = scanner.scan(manifest.Manifest.empty(
            'mistral_actions', 'int32bit')).modules
    found = manifest.Manifest.build(
        modules, 'mistral_actions', 'int32bit', 1)
    assert found.errors() == []
    assert {a.name: (a.description, a.input)
            for a, _ in found.actions()} == SEED_CATALOG
    assert found.modules['nova.servers'].good.imports == {
        'nova': found.modules['nova'].good.sha256,
        'openstack': found.modules['openstack'].good.sha256}


def test_changing_one_file_of_200_probes_only_that_file(tree, scan):
    for index in range(200):
        tree.write(f'mod{index:03d}.py',
                   GREET.replace('Greet(', f'Greet{index:03d}('))
    first = scan()
    assert len(scan.probed) == 200
    assert len(first.actions()) == 200
    tree.write('mod123.py', GREET.replace('Greet(', 'Changed('))
    second = scan()
    assert scan.probed == ['mod123']
    assert 'hot.mod123.changed' in served(second)
    assert 'hot.mod123.greet123' not in served(second)
    assert second.generation == first.generation + 1


def test_unchanged_tree_publishes_no_generation(tree, scan):
    tree.write('greet.py', GREET)
    first = scan()
    again = scan()
    assert scan.probed == []
    assert again.generation == first.generation == 1


def test_changing_a_shared_module_reprobes_its_importers_only(tree, scan):
    tree.write('common.py', 'GREETING = "hello"\n')
    tree.write('cinder/__init__.py', '')
    tree.write('cinder/backups.py',
               'from .. import common\n' + GREET)
    tree.write('nova/servers.py',  # namespace package, absolute import
               'from hotload_actions.cinder import backups\n' + GREET)
    tree.write('glance.py', GREET)
    first = scan()
    assert first.errors() == []
    backups = first.modules['cinder.backups'].good
    assert set(backups.imports) == {'common', 'cinder'}
    servers = first.modules['nova.servers'].good
    assert set(servers.imports) == {'common', 'cinder', 'cinder.backups'}

    tree.write('common.py', 'GREETING = "bonjour"\n')
    second = scan()
    assert scan.probed == ['cinder.backups', 'common', 'nova.servers']
    assert second.modules['glance'] == first.modules['glance']
    for name in ('cinder.backups', 'nova.servers'):
        assert second.modules[name].good.content_key != \
            first.modules[name].good.content_key
    assert second.modules['glance'].good.content_key == \
        first.modules['glance'].good.content_key


def test_missing_in_tree_module_is_retried_when_it_appears(tree, scan):
    tree.write('use.py', 'from . import helpers\n' + GREET)
    assert scan().modules['use'].error.kind == 'import'
    tree.write('helpers.py', 'X = 1\n')
    found = scan()
    assert 'use' in scan.probed
    assert found.modules['use'].error is None


def test_deleted_module_disappears_and_importers_keep_last_good(tree, scan):
    tree.write('common.py', 'X = 1\n')
    tree.write('use.py', 'from . import common\n' + GREET)
    tree.write('greet.py', GREET)
    first = scan()
    tree.remove('common.py')
    tree.remove('greet.py')
    found = scan()
    assert 'greet' not in found.modules
    assert 'hot.greet.greet' not in served(found)
    use = found.modules['use']
    assert use.error.kind == 'import' and 'common' in use.error.message
    assert use.good == first.modules['use'].good
    # The blob of the deleted module stays: the served version needs it.
    assert states_blob(scan, first.modules['common'].good.sha256)


def states_blob(scan, sha):
    return scan.states.blobs.get(sha)


def test_prefix_change_renames_without_probing(tree, scan):
    tree.write('greet.py', GREET)
    scan()
    scan.prefix = 'int32bit'
    found = scan()
    assert scan.probed == []
    assert served(found) == {'int32bit.greet.greet': 'greet.py'}


def test_action_metadata(tree, scan):
    tree.write('greet.py', GREET)
    (action, module), = scan().actions()
    assert action == manifest.ActionSpec(
        name='hot.greet.greet', class_name='Greet', declared_name=None,
        input='who, punctuation="!"', description='Greet someone.', line=5)
    assert module.path == 'greet.py'


def test_hidden_classes_are_not_exported(tree, scan):
    tree.write('hidden.py', GREET + '''

class _Private(actions.Action):
    def run(self, context):
        return 0


class Base(actions.Action):
    __export__ = False


class Helper:
    def run(self):
        return 0
''')
    assert [a.class_name for a, _ in scan().actions()] == ['Greet']


def test_old_blobs_are_collected(tree, scan):
    tree.write('greet.py', GREET)
    first_sha = scan().modules['greet'].good.sha256
    for index in range(6):
        tree.write('greet.py', GREET.replace('hello', f'hello {index}'))
        scan()
    assert len(scan.states.generation_numbers()) == 5
    blobs = {name for _d, _s, files in os.walk(scan.states.blobs.root)
             for name in files}
    assert first_sha not in blobs
    # Each kept generation: the module's source and its record.
    kept = [scan.states.index(n) for n in scan.states.generation_numbers()]
    records = {index.records['greet'] for index in kept}
    sources = {scan.states.record('greet', sha).good.sha256
               for sha in records}
    assert blobs == records | sources
    assert len(blobs) == 10
