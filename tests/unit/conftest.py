"""Fixtures for the unit tests: an actions tree and a scanner over it."""

import dataclasses
import hashlib
import os
import textwrap

import pytest
from oslo_config import cfg

from hotload import conf as hotload_conf
from hotload import loader
from hotload import manifest
from hotload import probe as probe_mod
from hotload import provider as provider_mod
from hotload import scanner as scanner_mod
from hotload import store
from hotload import trust

PACKAGE = 'hotload_actions'


class Tree:
    """An actions directory with trusted modes, for tests to write into."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)

    def path(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    def write(self, relpath: str, text: str | bytes, mode: int = 0o644) -> str:
        path = self.path(relpath)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        data = text if isinstance(text, bytes) else \
            textwrap.dedent(text).encode()
        with open(path, 'wb') as stream:
            stream.write(data)
        os.chmod(path, mode)
        return path

    def remove(self, relpath: str) -> None:
        os.unlink(self.path(relpath))


@dataclasses.dataclass
class Scan:
    """Runs scans over a tree the way the daemon does, publishing each."""

    tree: Tree
    states: store.ManifestStore
    probe: probe_mod.Probe
    prefix: str = 'hot'
    reserved: tuple = ('std.',)
    max_file_size: int = 1024 * 1024
    last: scanner_mod.ScanResult | None = None

    def __call__(self) -> manifest.Manifest:
        previous = self.states.load() or manifest.Manifest.empty(
            PACKAGE, self.prefix)
        scanner = scanner_mod.Scanner(
            self.tree.root, self.states.blobs, self.probe,
            trust.TrustPolicy(['root'], self.max_file_size), PACKAGE,
            self.prefix, list(self.reserved), workers=2)
        self.last = scanner.scan(previous)
        return self.states.commit(previous, self.last.modules, PACKAGE,
                                  self.prefix, keep=5)

    @property
    def probed(self) -> list[str]:
        return self.last.probed


@pytest.fixture
def tree(tmp_path) -> Tree:
    os.chmod(tmp_path, 0o755)
    return Tree(str(tmp_path / 'actions'))


@pytest.fixture
def scan(tree, tmp_path):
    states = store.ManifestStore(str(tmp_path / 'state'))
    states.ensure()
    with probe_mod.Probe(tree.root, PACKAGE, states.blobs.root,
                         timeout=4.0, memory_limit_mb=512) as probe:
        yield Scan(tree, states, probe)


@pytest.fixture
def probe(tree, tmp_path):
    """A probe over ``tree``, with ``probe.add(name, text)`` writing a
    module and its blob and returning its SourceRef."""
    blobs = tmp_path / 'blobs'

    def add(name: str, text: str) -> loader.SourceRef:
        data = text.encode()
        tree.write(f'{name}.py', data)
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha[:2]).mkdir(parents=True, exist_ok=True)
        (blobs / sha[:2] / sha).write_bytes(data)
        return loader.SourceRef(f'{name}.py', sha, False)

    with probe_mod.Probe(tree.root, PACKAGE, str(blobs), timeout=4.0,
                         memory_limit_mb=512) as probe:
        probe.add = add
        yield probe


@pytest.fixture
def provider(tree, scan):
    """A provider over the ``scan`` fixture's state directory, as Mistral
    builds one."""
    conf = cfg.ConfigOpts()
    hotload_conf.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('state_dir', scan.states.state_dir, 'hotload')
    conf.set_override('actions_dir', tree.root, 'hotload')
    return provider_mod.HotloadActionProvider('hotload', conf=conf)


def served(found: manifest.Manifest) -> dict[str, str]:
    """Action name to the file serving it."""
    return {action.name: module.path for action, module in found.actions()}


GREET = textwrap.dedent('''
    from mistral_lib import actions


    class Greet(actions.Action):
        """Greet someone.

        Used by the tests.
        """

        def __init__(self, who, punctuation="!"):
            super().__init__()
            self.who = who
            self.punctuation = punctuation

        def run(self, context):
            return "hello " + self.who + self.punctuation
''')
