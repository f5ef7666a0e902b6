#!/usr/bin/env python3
"""Run a real OpenStack Mistral 23 on this machine: the command line.

The harness itself is the package ``tools/harness`` (see its docstring);
this file is its command line and the module tests and benchmarks import
(with ``tools/`` on ``sys.path``)::

    tools/ensure-services                     # RabbitMQ + PostgreSQL
    python3 tools/mistral_harness.py up       # venv, database, 3 servers
    eval "$(python3 tools/mistral_harness.py env)"
    mistral action-list
    python3 tools/mistral_harness.py down

    from mistral_harness import MistralHarness
"""

from __future__ import annotations

import sys
from pathlib import Path

# Importable both as a script (tools/ is then sys.path[0]) and as a module
# from anywhere, as long as tools/ itself is on the path.
_TOOLS = str(Path(__file__).resolve().parent)
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

from harness import *  # noqa: E402, F403
from harness import __all__ as _harness_all  # noqa: E402
from harness.cli import build_parser  # noqa: E402
from harness.cli import main  # noqa: E402

# The process helpers under the names they had when this was one file.
from harness.processes import family as _family  # noqa: E402, F401
from harness.processes import is_alive as _is_alive  # noqa: E402, F401
from harness.processes import proc_stat as _proc_stat  # noqa: E402, F401

__all__ = [*_harness_all, 'build_parser', 'main']

if __name__ == '__main__':
    sys.exit(main())
