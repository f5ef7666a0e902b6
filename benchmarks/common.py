"""What the benchmarks share: dropping a file, polling, the daemon, tables.

Standard library only, like ``tools/mistral_harness.py``: the benchmarks
run under any Python 3.11 and reach Mistral through the harness.
"""

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation, exact for the table)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def wait_for(predicate, what: str, deadline: float = 60.0,
             pause: float = 0.01):
    """Poll ``predicate`` until it returns something true; that value.

    :param predicate: Called with no arguments.
    :param what: Named in the error when ``deadline`` passes.
    :param deadline: Seconds before giving up (RuntimeError).
    :param pause: Seconds between calls: the resolution of a latency
        measured with it. Cheap in-process checks can take a shorter one.
    """
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise RuntimeError(f'timed out waiting for {what}')
        # A short pause: a tight loop of requests would take a core from
        # Mistral on a 2-core machine.
        time.sleep(pause)


def listed(harness, name: str) -> bool:
    query = urllib.parse.urlencode({'name': name})
    actions = harness.request('GET', f'/v2/actions?{query}')['actions']
    return any(a['name'] == name for a in actions)


def close_file(directory: Path, name: str, text: str) -> float:
    """Write ``directory/name`` as a deployment tool does: temporary + rename.

    Returns the time (``time.monotonic()``) it was closed under its name.
    """
    with tempfile.NamedTemporaryFile(
            'w', dir=directory, prefix='.bench', suffix='.tmp',
            delete=False) as stream:
        stream.write(text)
    os.chmod(stream.name, 0o644)
    os.rename(stream.name, directory / name)
    return time.monotonic()


def start_daemon(harness, config_file: Path, log_path: Path):
    """mistral-hotload-daemon of the harness's venv, in a session of its own.

    Stop it with ``stop_daemon``.
    """
    with open(log_path, 'ab') as log:
        return subprocess.Popen(
            [str(harness.bin_dir / 'mistral-hotload-daemon'),
             '--config-file', str(config_file)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(daemon, timeout: float = 30.0) -> None:
    """SIGTERM the daemon's process group, SIGKILL it after ``timeout``."""
    if daemon.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=timeout)


def print_table(rows: list[tuple[str, list[float]]]) -> dict:
    """Print measure, n, p50, p95, max per row; the figures as a dict."""
    width = max([45, *(len(label) for label, _ in rows)])
    results = {}
    print()
    print(f'{"measure":{width}s} {"n":>3s} {"p50 ms":>9s} {"p95 ms":>9s} '
          f'{"max ms":>9s}')
    for label, values in rows:
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f'{label:{width}s} {len(values):3d} {p50:9.1f} {p95:9.1f} '
              f'{max(values):9.1f}')
        results[label] = {'n': len(values), 'p50_ms': round(p50, 1),
                          'p95_ms': round(p95, 1),
                          'max_ms': round(max(values), 1),
                          'samples_ms': [round(v, 1) for v in values]}
    return results


def write_results(output: str, results: dict) -> None:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f'Results written to {path}')
