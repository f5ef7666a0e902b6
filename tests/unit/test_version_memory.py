"""What module versions leave behind in a process that reloads them.

Issue 10: after many reloads of one module, each run once, ``sys.modules``,
``sys.meta_path`` and ``linecache`` are back within a small bound of where
they started; versions no longer named and not running are released,
and freed by the sweep that unmounts them rather than by a full garbage
collection that may come much later. (The process RSS over 1,000 reloads
is measured by benchmarks/scale.py.)
"""

import contextlib
import gc
import linecache
import sys
import weakref

import pytest

from hotload import manifest as manifest_mod
from hotload import store
from hotload import versions

PACKAGE = 'hotload_actions'
HELPER = b'WORD = "helper"\n'
LATE = b'WORD = "late"\n'
MODULE = '''
import traceback

from . import helper


class Act:
    def run(self):
        from . import late  # at run time, from the action's own version
        try:
            raise ValueError({version})
        except ValueError as exc:
            # What Mistral's log of a failed action does: the version's
            # lines go into linecache.
            text = "".join(traceback.format_exception(exc))
        return {version}, helper.WORD, late.WORD, text
'''
RELOADS = 200


class Held:
    """Stands for a wrapped action: something with a ``ref`` to hold."""

    def __init__(self, ref: versions.ActionRef) -> None:
        self.ref = ref


@pytest.fixture
def cache(tmp_path):
    states = store.ManifestStore(str(tmp_path / 'state'))
    states.ensure()
    made = versions.VersionCache(states.blobs, str(tmp_path / 'actions'))
    yield made
    for mount in list(made._importers):
        made._forget(mount)


def version(cache: versions.VersionCache, number: int) -> versions.ActionRef:
    """Version ``number`` of module ``mod``, in the cache's blob store."""
    blobs = cache.blobs
    imports = {'helper': blobs.put(HELPER), 'late': blobs.put(LATE)}
    sha = blobs.put(MODULE.format(version=number).encode())
    return versions.ActionRef(
        'hot.mod.act', 'mod', 'Act', sha, imports, (),
        manifest_mod.content_key('mod', sha, imports), PACKAGE, number)


def run_once(cache: versions.VersionCache, ref: versions.ActionRef) -> None:
    """As the engine does: load the class, hold the action, run it."""
    action = Held(ref)
    cls = cache.action_class(ref)
    cache.hold(action)
    number, word, late, text = cls().run()
    assert (number, word, late) == (ref.generation, 'helper', 'late')
    assert f'ValueError: {ref.generation}' in text
    assert '[sha256:' in text  # the traceback names the version that ran


def footprint() -> tuple[int, int, int]:
    """Mounted modules, meta path entries, traceback sources of versions."""
    gc.collect()  # actions are released by their finalizers
    return (sum(name.startswith(versions.MOUNT_PREFIX)
                for name in sys.modules),
            len(sys.meta_path),
            sum('[sha256:' in name for name in linecache.cache))


def test_reloads_of_one_module_stay_within_a_bound(cache):
    before = footprint()
    for number in range(1, RELOADS + 1):
        ref = version(cache, number)
        cache.retain({ref.content_key})  # the table now names this one
        run_once(cache, ref)
    modules, meta_path, lines = footprint()
    kept = versions.IDLE_VERSIONS + 1  # the idle ones, and the named one
    assert len(cache.loaded()) <= kept
    # A version is its package, the module and two imports.
    assert modules - before[0] <= 4 * kept
    assert meta_path == before[1]
    assert lines - before[2] <= kept
    assert not cache._touched.keys() - {
        versions.MOUNT_PREFIX + key for key in cache.loaded()}


def test_named_and_held_versions_are_never_dropped(cache):
    named = version(cache, 1)
    held = version(cache, 2)
    cache.retain({named.content_key})
    run_once(cache, named)
    action = Held(held)
    cls = cache.action_class(held)
    cache.hold(action)
    for number in range(3, 3 + 3 * versions.IDLE_VERSIONS):
        run_once(cache, version(cache, number))
    assert {named.content_key, held.content_key} <= cache.loaded()
    # The held action still imports from its own version at run time.
    assert cls().run()[:3] == (2, 'helper', 'late')
    del action
    gc.collect()
    for number in range(100, 101 + versions.IDLE_VERSIONS):
        run_once(cache, version(cache, number))
    loaded = cache.loaded()
    assert named.content_key in loaded
    assert held.content_key not in loaded


def test_the_least_recently_used_go_first(cache):
    refs = [version(cache, number)
            for number in range(1, versions.IDLE_VERSIONS + 2)]
    for ref in refs:
        run_once(cache, ref)
    assert {ref.content_key for ref in refs} == cache.loaded()
    run_once(cache, refs[0])  # used again: now the most recent
    run_once(cache, version(cache, 100))  # one more than the bound
    loaded = cache.loaded()
    assert refs[0].content_key in loaded
    assert refs[1].content_key not in loaded
    assert len(loaded) == versions.IDLE_VERSIONS + 1


def test_a_version_dropped_between_lookup_and_hold_is_mounted_again(cache):
    ref = version(cache, 1)
    cls = cache.action_class(ref)
    # Other threads mount more versions before this one is held.
    for number in range(2, 3 + versions.IDLE_VERSIONS):
        run_once(cache, version(cache, number))
    assert ref.content_key not in cache.loaded()
    action = Held(ref)
    cache.hold(action)
    assert ref.content_key in cache.loaded()
    assert cls().run()[:3] == (1, 'helper', 'late')


def test_unmounting_drops_modules_and_traceback_lines(cache):
    ref = version(cache, 1)
    run_once(cache, ref)
    mount = versions.MOUNT_PREFIX + ref.content_key
    assert any(name.startswith(mount) for name in sys.modules)
    assert any(ref.sha256[:12] in name for name in linecache.cache)
    cache._forget(mount)
    assert not any(name.startswith(mount) for name in sys.modules)
    assert not any(ref.sha256[:12] in name for name in linecache.cache)


def test_a_cache_that_is_garbage_leaves_the_meta_path(tmp_path):
    before = len(sys.meta_path)
    states = store.ManifestStore(str(tmp_path / 'state'))
    states.ensure()
    made = versions.VersionCache(states.blobs, str(tmp_path))
    assert len(sys.meta_path) == before + 1
    del made
    gc.collect()
    assert len(sys.meta_path) == before


@contextlib.contextmanager
def gc_disabled():
    """Only what the cache collects is collected meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_the_sweep_that_unmounts_a_version_frees_it(cache, monkeypatch):
    monkeypatch.setattr(versions, 'COLLECT_INTERVAL', 0.0)
    first = version(cache, 1)
    with gc_disabled():
        cache.retain({first.content_key})
        run_once(cache, first)
        # Classes live in reference cycles: only a collection frees them.
        dead = weakref.ref(cache.action_class(first))
        for number in range(2, 3 + versions.IDLE_VERSIONS):
            ref = version(cache, number)
            cache.retain({ref.content_key})
            run_once(cache, ref)
        assert first.content_key not in cache.loaded()
        assert dead() is None
    assert cache.collections >= 1


def test_collections_are_rate_limited_and_catch_up(cache, monkeypatch):
    monkeypatch.setattr(versions, 'COLLECT_INTERVAL', 3600.0)
    for number in range(1, 4 + versions.IDLE_VERSIONS):
        run_once(cache, version(cache, number))
    # Three versions went, unmounted by the sweeps new mounts make, which
    # never collect: lookups do not wait for the collector.
    assert len(cache.loaded()) == versions.IDLE_VERSIONS + 1
    assert cache.collections == 0
    cache.sweep()  # as a table swap does: collects them
    assert cache.collections == 1
    run_once(cache, version(cache, 100))  # one more goes
    cache.sweep()  # too soon: left for later
    assert cache.collections == 1
    monkeypatch.setattr(versions, 'COLLECT_INTERVAL', 0.0)
    cache.sweep()  # what the skipped ones left
    assert cache.collections == 2
    cache.sweep()  # nothing unmounted since
    assert cache.collections == 2


def test_a_failed_load_is_collected_too(cache, monkeypatch):
    monkeypatch.setattr(versions, 'COLLECT_INTERVAL', 0.0)
    ref = version(cache, 1)
    broken = versions.ActionRef(
        ref.name, ref.module, 'Missing', ref.sha256, ref.imports,
        ref.packages, ref.content_key, ref.package_name, 1)
    with pytest.raises(AttributeError):
        cache.action_class(broken)
    assert not cache.loaded()
    cache.sweep()
    assert cache.collections == 1


def test_trimming_the_heap_is_a_no_op_without_glibc(monkeypatch):
    assert versions.trim_heap() in (True, False)
    monkeypatch.setattr(versions, '_MALLOC_TRIM', None)
    assert versions.trim_heap() is False
