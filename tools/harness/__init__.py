"""Run a real OpenStack Mistral 23 on this machine, for tests and for trying.

Standard library only, so that it runs under any Python 3.11 before a
virtualenv exists. The command line is ``tools/mistral_harness.py``::

    tools/ensure-services                     # RabbitMQ + PostgreSQL
    python3 tools/mistral_harness.py up       # venv, database, 3 servers
    eval "$(python3 tools/mistral_harness.py env)"
    mistral action-list
    python3 tools/mistral_harness.py down

and, from a pytest fixture (with ``tools/`` on ``sys.path``)::

    from mistral_harness import MistralHarness

    with MistralHarness(venv, tmp_path) as mistral:
        mistral.run_workflow(definition, 'my_wf', {'x': 1})
        node_b = mistral.add_node('node-b', ('engine', 'executor'))

What ``up`` (``MistralHarness.start``) does:

1. creates or reuses a virtualenv with Mistral 23 from PyPI,
   python-mistralclient, psycopg2-binary and (unless told not to) this
   project installed in editable mode; a marker file in the venv records
   what was installed, so a warm venv costs nothing (``venv``);
2. creates a fresh PostgreSQL database with a unique name, tagged with a
   comment so that only databases this harness made are ever dropped
   (``database``);
3. writes ``mistral.conf`` in the work directory: authentication off, API on
   a free port of 127.0.0.1, logs in files, and RabbitMQ topics and control
   exchange of its own, so that several harnesses share one broker without
   seeing each other's messages (``config``);
4. runs ``mistral-db-manage upgrade head`` and ``populate``;
5. starts ``mistral-server --server api``, ``engine`` and ``executor`` as
   three processes, each the leader of its own session, and records their
   PIDs in a state file in the work directory (``servers``), with a small
   plug-in action installed (``harness_plugin.echo``, from
   ``tools/harness/plugin``: see ``servers.PLUGIN_DIR``);
6. waits until the API answers ``GET /v2/actions`` with 200, the engine
   and the executor have logged that they listen, and a workflow running
   ``std.echo`` and ``std.noop`` completes with the expected output.

``down`` (``MistralHarness.stop``) ends every process of the three sessions
(masters, their forked workers, anything reparented) with SIGTERM, then
SIGKILL after a deadline, checks that none is left, and drops the database
(``processes``).

``MistralHarness.add_node`` starts more simulated nodes of the same session
(``nodes``): same database and topics, their own ``[DEFAULT] host``,
``mistral.conf``, logs, ``[hotload]`` options and servers, optionally with
no reachable database.

The servers get SIGKILL if their parent dies (PR_SET_PDEATHSIG), so a
killed test run leaves no Mistral running; ``prune`` drops the databases
such runs leave. From the command line the parent is a small keeper
process (see ``cli``), so that ``up`` can return.

Modules: ``common`` (errors, logging, files), ``venv``, ``database``,
``processes``, ``config``, ``servers``, ``mistral`` (the session and its
first node), ``nodes``, ``cli``.
"""

from .common import HarnessError
from .common import ProjectInstallError
from .config import UNREACHABLE_DB_PORT
from .database import DB_COMMENT_PREFIX
from .database import prune_databases
from .mistral import SMOKE_WORKFLOW
from .mistral import SMOKE_WORKFLOW_NAME
from .mistral import STATE_FILE
from .mistral import MistralHarness
from .mistral import default_workdir
from .nodes import MistralNode
from .processes import terminate_processes
from .servers import SERVERS
from .venv import MISTRAL_REQUIREMENTS
from .venv import default_venv
from .venv import ensure_venv

__all__ = [
    'DB_COMMENT_PREFIX',
    'MISTRAL_REQUIREMENTS',
    'SERVERS',
    'SMOKE_WORKFLOW',
    'SMOKE_WORKFLOW_NAME',
    'STATE_FILE',
    'UNREACHABLE_DB_PORT',
    'HarnessError',
    'MistralHarness',
    'MistralNode',
    'ProjectInstallError',
    'default_venv',
    'default_workdir',
    'ensure_venv',
    'prune_databases',
    'terminate_processes',
]
