"""The manifest: the contract between the daemon and every provider.

A manifest describes one *generation* of the action table. The daemon writes
it, every Mistral process reads it, and this module is the only place that
knows its shape. It is stored as one JSON document::

    {
      "schema": 1,
      "generation": 7,
      "created_at": "2026-11-22T01:02:03.456789+00:00",
      "package_name": "hotload_actions",
      "action_prefix": "hotload",
      "disabled": [],
      "modules": {
        "cinder.backups": {
          "path": "cinder/backups.py",
          "good": {
            "sha256": "<hex>",
            "imports": {"common": "<hex>"},
            "content_key": "<hex>",
            "packages": [],
            "actions": [
              {"name": "hotload.cinder.backups.create",
               "class_name": "Create", "declared_name": null,
               "input": "volume_id, backup_name, incremental=true",
               "description": "Creates a volume backup.", "line": 12}
            ]
          },
          "error": null
        }
      }
    }

``modules`` maps a module's dotted name *inside* the package (``common``,
``cinder``, ``cinder.backups``) to its record. ``good`` is the last version
that validated, ``error`` the reason the current file does not (or null).
A module with an error keeps serving ``good``; a module that never validated
has ``good`` null. ``imports`` lists every in-tree module the version loaded
or referred to, with the sha256 it saw (null: tried but absent); with the
module's own hash they make the ``content_key`` that names exactly the code
an executor must run.

Schema changes bump ``SCHEMA_VERSION``; a reader refuses a manifest newer
than itself rather than guessing.
"""

import dataclasses
import datetime
import hashlib
import json
from typing import Any

from hotload import exceptions

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """One exported action of a module version.

    :param name: Full action name, as Mistral shows it.
    :param class_name: Name of the class in its module.
    :param declared_name: Name the class declared with ``__action_name__``,
        or None when the name was derived from the module and class.
    :param input: Parameter spec in mistral-lib's ``get_arg_list_as_str``
        form, e.g. ``server_id, status="ACTIVE"``.
    :param description: First paragraph of the class docstring.
    :param line: Line of the class statement in its file.
    """

    name: str
    class_name: str
    declared_name: str | None
    input: str
    description: str
    line: int


@dataclasses.dataclass(frozen=True)
class ModuleVersion:
    """A version of a module that validated.

    :param sha256: Hash of the module's source, the key of its blob.
    :param imports: In-tree module name to the sha256 this version was
        validated with; None for a module it tried to import that was absent.
    :param content_key: See :func:`content_key`.
    :param actions: The actions this version exports.
    :param packages: Which of the module and its imports are packages
        (``__init__.py``), so a process can mount exactly this code with
        relative imports resolving as they did when it was validated.
    """

    sha256: str
    imports: dict[str, str | None]
    content_key: str
    actions: tuple[ActionSpec, ...]
    packages: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModuleError:
    """Why the current file of a module is not served.

    :param kind: Short category, e.g. ``syntax``, ``import``, ``timeout``,
        ``refused``, ``collision``.
    :param message: One line an operator can act on.
    :param path: File the error is in, relative to the actions directory;
        it may be another module's file (a broken in-tree import).
    :param line: Line in ``path``, when there is one.
    :param traceback: Short traceback or captured output, may be empty.
    :param sha256: Hash of the content that failed, None if unread.
    :param imports: In-tree modules the failed attempt touched, as in
        :attr:`ModuleVersion.imports`, so a fix there triggers a retry.
    """

    kind: str
    message: str
    path: str
    line: int | None = None
    traceback: str = ''
    sha256: str | None = None
    imports: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def location(self) -> str:
        """``path:line``, or ``path`` when there is no line."""
        return f'{self.path}:{self.line}' if self.line else self.path


@dataclasses.dataclass(frozen=True)
class ModuleRecord:
    """A module of the actions directory, as of one generation.

    :param name: Dotted name inside the package (``cinder.backups``).
    :param path: File relative to the actions directory.
    :param good: The version being served, or None.
    :param error: Why the current file is not served, or None.
    """

    name: str
    path: str
    good: ModuleVersion | None = None
    error: ModuleError | None = None

    @property
    def actions(self) -> tuple[ActionSpec, ...]:
        return self.good.actions if self.good else ()


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One generation of the action table.

    :param generation: Monotonically increasing number, 0 for "nothing
        published yet".
    :param created_at: ISO 8601 UTC time the generation was built.
    :param package_name: Import name the actions directory is mounted as.
    :param action_prefix: Prefix the action names were built with.
    :param modules: Module name to record.
    :param disabled: Action names an operator disabled
        (``mistral-hotload disable``); they stay in their modules' records
        but are not served.
    :param schema: Schema version the document was written with.
    """

    generation: int
    created_at: str
    package_name: str
    action_prefix: str
    modules: dict[str, ModuleRecord]
    disabled: tuple[str, ...] = ()
    schema: int = SCHEMA_VERSION

    @classmethod
    def empty(cls, package_name: str, action_prefix: str) -> 'Manifest':
        return cls(generation=0, created_at='', package_name=package_name,
                   action_prefix=action_prefix, modules={})

    def actions(self) -> list[tuple[ActionSpec, ModuleRecord]]:
        """Every served action with its module, sorted by name."""
        return [(action, module) for action, module in self.all_actions()
                if action.name not in self.disabled]

    def all_actions(self) -> list[tuple[ActionSpec, ModuleRecord]]:
        """Served and disabled actions with their modules, by name."""
        found = [(action, module) for module in self.modules.values()
                 for action in module.actions]
        return sorted(found, key=lambda pair: pair[0].name)

    def errors(self) -> list[tuple[ModuleRecord, ModuleError]]:
        """Every module with a current error, sorted by path."""
        return sorted(((m, m.error) for m in self.modules.values() if m.error),
                      key=lambda pair: pair[0].path)

    def same_table(self, other: 'Manifest') -> bool:
        """True when both describe the same modules, whatever generation."""
        return (self.package_name == other.package_name
                and self.action_prefix == other.action_prefix
                and self.modules == other.modules
                and self.disabled == other.disabled)

    @classmethod
    def build(cls, modules: dict[str, ModuleRecord], package_name: str,
              action_prefix: str, generation: int,
              disabled: tuple[str, ...] = ()) -> 'Manifest':
        """A new generation, stamped with the current time."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        return cls(generation=generation, created_at=now,
                        package_name=package_name,
                        action_prefix=action_prefix, modules=modules,
                        disabled=tuple(sorted(disabled)))

    def to_json(self) -> bytes:
        document = {
            'schema': self.schema,
            'generation': self.generation,
            'created_at': self.created_at,
            'package_name': self.package_name,
            'action_prefix': self.action_prefix,
            'disabled': list(self.disabled),
            'modules': {name: _record_to_dict(record)
                        for name, record in sorted(self.modules.items())},
        }
        return json.dumps(document, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = '<manifest>') -> 'Manifest':
        """Parse and check a manifest document.

        :param data: The JSON bytes.
        :param source: Where they came from, for error messages.
        :raises ManifestError: on invalid JSON, an unknown schema or a
            missing field.
        """
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise exceptions.ManifestError(
                f'{source}: not a JSON document: {exc}') from exc
        schema = document.get('schema') if isinstance(document, dict) else None
        if schema != SCHEMA_VERSION:
            raise exceptions.ManifestError(
                f'{source}: manifest schema {schema!r} is not the supported '
                f'schema {SCHEMA_VERSION}; upgrade mistral-hotload on this '
                f'node so the daemon and providers agree')
        try:
            return cls(
                generation=int(document['generation']),
                created_at=document['created_at'],
                package_name=document['package_name'],
                action_prefix=document['action_prefix'],
                modules={name: _record_from_dict(name, record)
                         for name, record in document['modules'].items()},
                disabled=tuple(document.get('disabled', ())))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise exceptions.ManifestError(
                f'{source}: malformed manifest: {exc!r}') from exc


def content_key(module: str, sha256: str,
                imports: dict[str, str | None]) -> str:
    """Key naming a module's code together with its in-tree imports.

    Two versions share a key exactly when they have the same module name
    (which decides what relative imports mean) and the module and every
    in-tree module it imports are byte-identical, so the key is what an
    executor needs to run the version the engine chose.
    """
    digest = hashlib.sha256(f'{module}={sha256}'.encode())
    for name, sha in sorted(imports.items()):
        digest.update(f'\n{name}={sha or "-"}'.encode())
    return digest.hexdigest()


def _record_to_dict(record: ModuleRecord) -> dict[str, Any]:
    good = None
    if record.good:
        good = dataclasses.asdict(record.good)
        good['actions'] = [dataclasses.asdict(a) for a in record.good.actions]
        good['packages'] = list(record.good.packages)
    error = dataclasses.asdict(record.error) if record.error else None
    return {'path': record.path, 'good': good, 'error': error}


def _record_from_dict(name: str, data: dict[str, Any]) -> ModuleRecord:
    good = data.get('good')
    error = data.get('error')
    return ModuleRecord(
        name=name,
        path=data['path'],
        good=ModuleVersion(
            sha256=good['sha256'],
            imports=dict(good['imports']),
            content_key=good['content_key'],
            actions=tuple(ActionSpec(**a) for a in good['actions']),
            packages=tuple(good['packages']),
        ) if good else None,
        error=ModuleError(**error) if error else None,
    )
