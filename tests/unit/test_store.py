"""The state directory: blobs, generations, the writer lock, crash safety."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hotload import blobs
from hotload import exceptions
from hotload import manifest
from hotload import store


def _modules(text: str) -> dict[str, manifest.ModuleRecord]:
    sha = store.sha256_hex(text.encode())
    action = manifest.ActionSpec('hot.greet.greet', 'Greet', None, 'who',
                                 text, 3)
    version = manifest.ModuleVersion(
        sha, {}, manifest.content_key('greet', sha, {}), (action,))
    return {'greet': manifest.ModuleRecord('greet', 'greet.py', version)}


@pytest.fixture
def states(tmp_path):
    return store.ManifestStore(str(tmp_path / 'state'))


def test_blob_roundtrip_and_corruption(states):
    states.ensure()
    sha = states.blobs.put(b'x = 1\n')
    assert states.blobs.put(b'x = 1\n') == sha
    assert states.blobs.get(sha) == b'x = 1\n'
    path = states.blobs.path(sha)
    os.chmod(path, 0o644)
    with open(path, 'wb') as stream:
        stream.write(b'x = 2\n')
    with pytest.raises(exceptions.BlobError, match='does not match'):
        states.blobs.get(sha)
    with pytest.raises(exceptions.BlobError, match='is not in'):
        states.blobs.get('0' * 64)


def test_commit_publishes_increasing_generations(states):
    empty = manifest.Manifest.empty('pkg', 'hot')
    assert states.load() is None
    first = states.commit(empty, _modules('one'), 'pkg', 'hot', keep=3)
    assert first.generation == 1
    assert states.commit(first, _modules('one'), 'pkg', 'hot', 3) is first
    second = states.commit(first, _modules('two'), 'pkg', 'hot', 3)
    assert second.generation == 2
    assert states.load() == second
    assert os.stat(states.current_path).st_ino == os.stat(os.path.join(
        states.generations_dir, '0000000002.json')).st_ino


def test_newer_schema_is_refused(states):
    states.ensure()
    with open(states.current_path, 'w') as stream:
        stream.write('{"schema": 99, "generation": 1}')
    with pytest.raises(exceptions.ManifestError, match='schema 99'):
        states.load()


def test_second_writer_is_refused(states):
    with states.writer_lock():
        with pytest.raises(exceptions.StateLockedError):
            with states.writer_lock():
                pass
    with states.writer_lock():
        pass


# The writer runs in a child that stops before its Nth file system step
# (write, fsync, link, rename, unlink) and is SIGKILLed there.
WRITER = textwrap.dedent('''
    import os, signal, sys
    from tests.unit import test_store
    from hotload import manifest, store

    stop_at = int(sys.argv[2])
    steps = 0

    def step(real):
        def wrapper(*args, **kwargs):
            global steps
            steps += 1
            if steps == stop_at:
                sys.stdout.write('stopped\\n')
                sys.stdout.flush()
                signal.pause()
            return real(*args, **kwargs)
        return wrapper

    for name in ('fsync', 'replace', 'link', 'unlink', 'write', 'fchmod'):
        setattr(os, name, step(getattr(os, name)))
    states = store.ManifestStore(sys.argv[1])
    previous = states.load()
    states.blobs.put(b'new module source')
    states.commit(previous, test_store._modules('two'), 'pkg', 'hot', 1)
    sys.stdout.write(f'done {steps}\\n')
''')


def _run_writer(state_dir: str, stop_at: int) -> str:
    process = subprocess.Popen(
        [sys.executable, '-c', WRITER, state_dir, str(stop_at)],
        stdout=subprocess.PIPE, text=True,
        cwd=os.path.join(os.path.dirname(__file__), '..', '..'))
    try:
        line = process.stdout.readline().strip()
        if line == 'stopped':
            os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stdout.close()
    return line


def test_killing_the_writer_at_any_step_never_tears_the_manifest(tmp_path):
    def fresh_state(name):
        states = store.ManifestStore(str(tmp_path / name))
        states.commit(manifest.Manifest.empty('pkg', 'hot'), _modules('one'),
                      'pkg', 'hot', 1)
        return states

    fresh_state('probe')
    line = _run_writer(str(tmp_path / 'probe'), 0)
    assert line.startswith('done ')
    total = int(line.split()[1])
    assert total >= 8

    for stop_at in range(1, total + 1):
        states = fresh_state(f'killed-{stop_at}')
        assert _run_writer(states.state_dir, stop_at) == 'stopped'
        # The next writer is another process, as after a crash.
        states = store.ManifestStore(states.state_dir)
        current = states.load()
        assert current.generation in (1, 2), stop_at
        expected = 'one' if current.generation == 1 else 'two'
        assert current.modules == _modules(expected)
        # The next writer recovers: a new generation, never a reused one.
        after = states.commit(current, _modules('three'), 'pkg', 'hot', 1)
        assert after.generation == max(states.generation_numbers())
        assert after.generation > current.generation
        assert states.load() == after
        leftovers = [name for _d, _s, files in os.walk(states.state_dir)
                     for name in files if name.startswith('.tmp-')]
        assert leftovers == [], stop_at


def test_blobs_reach_the_disk_together_before_the_index_names_them(
        tmp_path, monkeypatch):
    states = store.ManifestStore(str(tmp_path / 'state'))
    states.ensure()
    events = []
    monkeypatch.setattr(blobs, '_SYNCFS',
                        lambda fd: events.append('syncfs') or 0)
    fsync = os.fsync
    monkeypatch.setattr(os, 'fsync',
                        lambda fd: events.append('fsync') or fsync(fd))
    for index in range(50):
        states.blobs.put(f'source {index}\n'.encode())
    assert events == []  # written, not yet waited for
    states.commit(manifest.Manifest.empty('pkg', 'hot'), _modules('one'),
                  'pkg', 'hot', 2)
    # One syncfs for the 50 sources and the record, then the index file
    # and its directory, then the state directory (manifest.json).
    assert events[0] == 'syncfs' and events.count('syncfs') == 1
    assert events.count('fsync') == 3
    states.commit(states.load(), _modules('one'), 'pkg', 'hot', 2)
    assert events.count('syncfs') == 1  # nothing new: no publish, no sync


def test_a_blob_left_short_by_a_crash_is_written_again(tmp_path):
    blob_store = blobs.BlobStore(str(tmp_path))
    sha = blob_store.put(b'print("whole")\n')
    os.chmod(blob_store.path(sha), 0o644)
    with open(blob_store.path(sha), 'wb'):
        pass  # the rename reached the disk, the data did not
    assert blob_store.put(b'print("whole")\n') == sha
    assert blob_store.get(sha) == b'print("whole")\n'
