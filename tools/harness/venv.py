"""The virtualenv with Mistral 23 (and this project) that the servers run in.

Created once and reused: a marker file records what was installed, so a
warm venv costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import REPO_ROOT
from .common import HarnessError
from .common import Log
from .common import ProjectInstallError
from .common import Step
from .common import default_log
from .common import flock
from .common import run_logged
from .common import tail
from .common import write_json_atomic

#: What the venv gets, besides the project itself. The two upper caps are
#: guard rails, not fixes: Mistral 23.0.0 was verified here with
#: SQLAlchemy 2.1.9 and oslo.db 18.1.1 (the newest releases), and those are
#: the two libraries whose major releases have broken Mistral before.
MISTRAL_REQUIREMENTS: tuple[str, ...] = (
    'mistral>=23,<24',
    'python-mistralclient',
    'psycopg2-binary',
    'SQLAlchemy>=2.0,<2.2',
    'oslo.db<19',
)

#: Files whose content decides how the project installs (entry points!).
PROJECT_INSTALL_FILES: tuple[str, ...] = (
    'setup.cfg', 'setup.py', 'requirements.txt', 'pyproject.toml')

#: Marker file in the venv: what was installed into it.
VENV_MARKER = 'mistral-harness.json'


def default_venv() -> Path:
    """Where the venv lives unless told otherwise.

    ``$MISTRAL_HARNESS_VENV``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/mistral-hotload/mistral23-venv``: outside the repository, kept
    between runs so that only the first ``up`` pays for the install.
    """
    if os.environ.get('MISTRAL_HARNESS_VENV'):
        return Path(os.environ['MISTRAL_HARNESS_VENV'])
    cache = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(cache) / 'mistral-hotload' / 'mistral23-venv'



def _project_fingerprint(root: Path) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode() + b'\0')
    for name in PROJECT_INSTALL_FILES:
        path = root / name
        if path.exists():
            digest.update(name.encode() + b'\0' + path.read_bytes() + b'\0')
    return digest.hexdigest()


def ensure_venv(venv: Path, *, install_project: bool = True,
                python: str | None = None,
                extra_requirements: tuple[str, ...] = (),
                project_root: Path = REPO_ROOT,
                log: Log = default_log) -> Path:
    """Create or reuse a virtualenv with Mistral 23 in it.

    A marker file in the venv records the requirement set and the
    fingerprint of the project's packaging files; when they still match,
    nothing is installed. The project is installed in editable mode, so code
    changes need no reinstall; a change to setup.cfg (entry points) does,
    and the fingerprint notices it. Concurrent callers are serialised by a
    lock file next to the venv.

    :returns: the venv's python.
    :raises ProjectInstallError: if only ``pip install -e`` of the project
        failed; Mistral itself is installed and marked by then, so a retry
        with ``install_project=False`` is fast.
    """
    venv = Path(venv).absolute()
    vpython = venv / 'bin' / 'python'
    requirements = sorted(set(MISTRAL_REQUIREMENTS) | set(extra_requirements))
    lock = venv.parent / f'.{venv.name}.lock'
    marker_path = venv / VENV_MARKER
    pip_log = venv.parent / f'{venv.name}-pip.log'
    with flock(lock):
        marker: dict[str, Any] = {}
        if marker_path.exists() and vpython.exists():
            with contextlib.suppress(ValueError, OSError):
                marker = json.loads(marker_path.read_text())
        changed = False
        if not vpython.exists():
            with Step(log, f'creating virtualenv {venv}'):
                subprocess.run(
                    [python or sys.executable, '-m', 'venv', str(venv)],
                    check=True, stdin=subprocess.DEVNULL)
        if marker.get('requirements') != requirements:
            with Step(log, 'pip install ' + ' '.join(requirements)
                       + f' (log: {pip_log})'):
                code = run_logged(
                    [str(vpython), '-m', 'pip', 'install',
                     '--disable-pip-version-check', *requirements],
                    pip_log)
                if code != 0:
                    raise HarnessError(
                        f'pip install of Mistral failed (exit {code}); '
                        f'end of {pip_log}:\n{tail(pip_log)}')
            marker = {'requirements': requirements}
            write_json_atomic(marker_path, marker)
            changed = True
        if install_project:
            fingerprint = _project_fingerprint(project_root)
            if marker.get('project') != fingerprint:
                with Step(log, f'pip install -e {project_root}'):
                    code = run_logged(
                        [str(vpython), '-m', 'pip', 'install',
                         '--disable-pip-version-check',
                         '-e', str(project_root), *requirements],
                        pip_log)
                    if code != 0:
                        raise ProjectInstallError(
                            f'pip install -e {project_root} failed (exit '
                            f'{code}); Mistral itself is installed. Use '
                            f'--no-project (install_project=False) to run '
                            f'without the project. End of {pip_log}:\n'
                            f'{tail(pip_log)}')
                marker['project'] = fingerprint
                write_json_atomic(marker_path, marker)
                changed = True
        if changed:
            freeze = subprocess.run(
                [str(vpython), '-m', 'pip', 'freeze',
                 '--disable-pip-version-check'],
                capture_output=True, text=True, check=False)
            (venv / 'mistral-harness-freeze.txt').write_text(freeze.stdout)
        else:
            log(f'virtualenv {venv} is up to date')
    return vpython

