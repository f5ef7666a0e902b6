"""PostgreSQL, through the venv's psycopg2 (no psql needed).

Every database this harness makes has a unique name and a comment saying
so; only databases with that comment are ever dropped.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import HarnessError
from .common import Log
from .common import Step
from .common import default_log

#: Start of the comment on every database the harness creates. The text
#: names the old single-file harness on purpose: databases older runs left
#: behind must still be recognised by ``prune``.
DB_COMMENT_PREFIX = 'created by mistral-hotload tools/mistral_harness.py'

NAME_RE = re.compile(r'^[a-z][a-z0-9_]{0,62}$')

_PG_SNIPPET = r'''
import json, sys
import psycopg2
args = json.loads(sys.argv[1])
conn = psycopg2.connect(host=args['host'], port=args['port'],
                        user=args['user'], dbname='postgres',
                        connect_timeout=10)
conn.autocommit = True
out = []
with conn.cursor() as cur:
    for sql, params in args['statements']:
        cur.execute(sql, params)
        out.append(cur.fetchall() if cur.description else None)
conn.close()
print(json.dumps(out))
'''


class Postgres:
    """The PostgreSQL server, reached with the venv's python and psycopg2.

    :param python: a python with psycopg2 (the venv's).
    :param host: server address.
    :param port: server port.
    :param user: role that may create databases (trust auth).
    :param log: where progress lines go.
    """

    def __init__(self, python: Path, host: str = '127.0.0.1',
                 port: int = 5432, user: str = 'postgres',
                 log: Log = default_log) -> None:
        self.python = python
        self.host = host
        self.port = port
        self.user = user
        self.log = log

    @property
    def params(self) -> dict[str, Any]:
        """``{'host', 'port', 'user'}``, as the harness state records it."""
        return {'host': self.host, 'port': self.port, 'user': self.user}

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return (f'postgresql+psycopg2://{self.user}@{self.host}:{self.port}'
                f'/{database}')

    def run(self, *statements: tuple[str, list[Any]]) -> list[Any]:
        """Run SQL statements in the ``postgres`` database, autocommit.

        :returns: one list of rows per statement (None when it has none).
        """
        args = json.dumps({**self.params, 'statements': statements})
        proc = subprocess.run(
            [str(self.python), '-c', _PG_SNIPPET, args],
            capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise HarnessError(
                f'PostgreSQL on {self.host}:{self.port} as {self.user}: '
                f'{proc.stderr.strip().splitlines()[-1:]}'
                ' (is it up? tools/ensure-services)')
        return json.loads(proc.stdout)

    def create(self, name: str, tag: str) -> None:
        """Create database ``name``, commented as made for ``tag``."""
        if not NAME_RE.match(name):
            raise HarnessError(f'bad database name {name!r}')
        with Step(self.log, f'creating database {name}'):
            comment = f'{DB_COMMENT_PREFIX} {tag} at {int(time.time())}'
            self.run((f'CREATE DATABASE "{name}"', []),
                     (f'COMMENT ON DATABASE "{name}" IS %s', [comment]))

    def drop(self, name: str, tag: str) -> None:
        """Drop database ``name``, and only if its comment names ``tag``."""
        if not NAME_RE.match(name):
            raise HarnessError(f'bad database name {name!r}')
        rows = self.run((
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
            ' WHERE datname = %s', [name]))[0]
        if not rows:
            self.log(f'database {name} is already gone')
            return
        comment = rows[0][0] or ''
        if not comment.startswith(f'{DB_COMMENT_PREFIX} {tag} at '):
            raise HarnessError(
                f'database {name} is not tagged as made by this harness '
                f'(comment {comment!r}); not dropping it')
        with Step(self.log, f'dropping database {name}'):
            self.run((f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', []))


def prune_databases(venv: Path, *, older_than: float = 3600.0,
                    dry_run: bool = False, pg_host: str = '127.0.0.1',
                    pg_port: int = 5432, pg_user: str = 'postgres',
                    log: Log = default_log) -> list[str]:
    """Drop databases a killed harness left behind.

    Only databases whose comment says this harness made them, made more
    than ``older_than`` seconds ago, and with no open connection (a running
    Mistral always holds some) are dropped.

    :returns: the names dropped (or that would be, with ``dry_run``).
    """
    pg = Postgres(Path(venv).absolute() / 'bin' / 'python', pg_host,
                  pg_port, pg_user, log=log)
    rows = pg.run((
        "SELECT d.datname, shobj_description(d.oid, 'pg_database'),"
        ' (SELECT count(*) FROM pg_stat_activity a'
        '  WHERE a.datname = d.datname)'
        ' FROM pg_database d'
        " WHERE shobj_description(d.oid, 'pg_database') LIKE %s",
        [DB_COMMENT_PREFIX + ' %']))[0]
    dropped = []
    now = time.time()
    for name, comment, connections in rows:
        match = re.fullmatch(
            re.escape(DB_COMMENT_PREFIX) + r' (\S+) at (\d+)', comment)
        if not match or match.group(1) != name or not NAME_RE.match(name):
            continue
        age = now - int(match.group(2))
        if age < older_than or connections:
            log(f'keeping {name} (age {age:.0f}s, {connections} '
                'connections)')
            continue
        if dry_run:
            log(f'would drop {name} (age {age:.0f}s)')
        else:
            log(f'dropping {name} (age {age:.0f}s)')
            pg.run((f'DROP DATABASE IF EXISTS "{name}"', []))
        dropped.append(name)
    return dropped
