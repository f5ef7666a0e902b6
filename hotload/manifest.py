"""The manifest: the contract between the daemon and every provider.

A manifest describes one *generation* of the action table. The daemon writes
it, every Mistral process reads it, and this module is the only place that
knows its shape. A generation is stored in two parts:

* the **index**, ``manifest.json``: one small JSON document naming each
  module's record by the sha256 of its bytes::

    {
      "schema": 2,
      "generation": 7,
      "created_at": "2026-11-22T01:02:03.456789+00:00",
      "package_name": "hotload_actions",
      "action_prefix": "hotload",
      "disabled": [],
      "modules": {"cinder.backups": "<sha256 of the record>", ...}
    }

* the **records**, one immutable blob per module version in the blob store
  (beside the module sources), named by their sha256::

    {"name": "cinder.backups", "path": "cinder/backups.py",
     "good": {"sha256": "<hex>", "imports": {"common": "<hex>"},
              "content_key": "<hex>", "packages": [],
              "actions": [{"name": "hotload.cinder.backups.create",
                           "class_name": "Create", "declared_name": null,
                           "input": "volume_id, incremental=true",
                           "description": "Creates a volume backup.",
                           "line": 12}]},
     "error": null}

Why two parts: a change of one module makes one new record and an index
whose other entries are unchanged hashes, so the daemon writes, a mirror
copies and a provider parses about what changed, not the whole table (a
provider keeps the records it holds by their sha256 and reads only the new
ones). The index is signed and compared across nodes; each record is
checked against the sha256 the index names before it is used, so the index
alone decides what a node serves, and a reader never sees a torn
generation: the index is replaced atomically, and every record it names was
stored before it.

``modules`` maps a module's dotted name *inside* the package (``common``,
``cinder``, ``cinder.backups``) to its record. ``good`` is the last version
that validated, ``error`` the reason the current file does not (or null).
A module with an error keeps serving ``good``; a module that never validated
has ``good`` null. ``imports`` lists every in-tree module the version loaded
or referred to, with the sha256 it saw (null: tried but absent); with the
module's own hash they make the ``content_key`` that names exactly the code
an executor must run.

Schema changes bump ``SCHEMA_VERSION``; a reader refuses a manifest of
another schema rather than guessing (schema 1 held every record inline).
"""

import dataclasses
import datetime
import functools
import hashlib
import json
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

from hotload import exceptions

SCHEMA_VERSION = 2


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

    @functools.cached_property
    def blob(self) -> bytes:
        """The bytes of this record's blob (:func:`record_json`), made
        once: a new record is hashed when its generation is built, and
        stored when it is published."""
        return record_json(self)


@dataclasses.dataclass(frozen=True)
class Index:
    """What ``manifest.json`` holds: a generation, its records by sha256.

    :param generation: Monotonically increasing number, 0 for "nothing
        published yet".
    :param created_at: ISO 8601 UTC time the generation was built.
    :param package_name: Import name the actions directory is mounted as.
    :param action_prefix: Prefix the action names were built with.
    :param records: Module name to the sha256 of its record blob.
    :param disabled: Action names an operator disabled.
    :param schema: Schema version the document was written with.
    """

    generation: int
    created_at: str
    package_name: str
    action_prefix: str
    records: dict[str, str]
    disabled: tuple[str, ...] = ()
    schema: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        document = {
            'schema': self.schema,
            'generation': self.generation,
            'created_at': self.created_at,
            'package_name': self.package_name,
            'action_prefix': self.action_prefix,
            'disabled': list(self.disabled),
            'modules': dict(sorted(self.records.items())),
        }
        return json.dumps(document, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = '<manifest>') -> 'Index':
        """Parse and check a ``manifest.json`` document.

        :param data: The JSON bytes.
        :param source: Where they came from, for error messages.
        :raises ManifestError: on invalid JSON, another schema, a missing
            field or a record named by something that is not a sha256
            (it would name a path outside the blob store).
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
                f'schema {SCHEMA_VERSION}; run the same mistral-hotload '
                f'version as the daemon that wrote it')
        try:
            index = cls(
                generation=int(document['generation']),
                created_at=str(document['created_at']),
                package_name=str(document['package_name']),
                action_prefix=str(document['action_prefix']),
                records=dict(document['modules']),
                disabled=tuple(str(n) for n in document.get('disabled', ())))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise exceptions.ManifestError(
                f'{source}: malformed manifest: {exc!r}') from exc
        for name, sha in index.records.items():
            if not is_sha256(sha):
                raise exceptions.ManifestError(
                    f'{source}: module {name!r:.100} names record '
                    f'{sha!r:.100}, which is not a sha256')
        return index


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One generation of the action table, its records read.

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
    :param known_shas: Module name to the sha256 of its record, when the
        caller knows them (read from an index, or kept from the previous
        generation); computed from ``modules`` otherwise, and always by
        ``dataclasses.replace``, so a copy with other records never
        carries stale names.
    """

    generation: int
    created_at: str
    package_name: str
    action_prefix: str
    modules: dict[str, ModuleRecord]
    disabled: tuple[str, ...] = ()
    schema: int = SCHEMA_VERSION
    known_shas: dataclasses.InitVar[dict[str, str] | None] = None
    #: Module name to the sha256 of its record's bytes.
    record_shas: dict[str, str] = dataclasses.field(
        init=False, compare=False, repr=False)

    def __post_init__(self, known_shas: dict[str, str] | None) -> None:
        if known_shas is None:
            known_shas = {name: record_sha(record)
                          for name, record in self.modules.items()}
        object.__setattr__(self, 'record_shas', known_shas)

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

    @functools.cached_property
    def action_owners(self) -> dict[str, str]:
        """Action name to the module that exports it (served or disabled).

        Computed once per generation; :meth:`build` derives it from the
        previous generation's, for the records that changed.
        """
        return {action.name: name for name, module in self.modules.items()
                for action in module.actions}

    def action_count(self) -> int:
        """How many actions are served (:meth:`actions`, without sorting
        ten thousand names for a count)."""
        disabled = set(self.disabled)
        return sum(1 for module in self.modules.values()
                   for action in module.actions
                   if action.name not in disabled)

    def errors(self) -> list[tuple[ModuleRecord, ModuleError]]:
        """Every module with a current error, sorted by path."""
        return sorted(((m, m.error) for m in self.modules.values() if m.error),
                      key=lambda pair: pair[0].path)

    def same_table(self, other: 'Manifest') -> bool:
        """True when both describe the same modules, whatever generation."""
        return (self.package_name == other.package_name
                and self.action_prefix == other.action_prefix
                and self.record_shas == other.record_shas
                and self.disabled == other.disabled)

    @classmethod
    def build(cls, modules: dict[str, ModuleRecord], package_name: str,
              action_prefix: str, generation: int,
              disabled: tuple[str, ...] = (),
              previous: 'Manifest | None' = None) -> 'Manifest':
        """A new generation, stamped with the current time.

        :param modules: The records of the generation.
        :param package_name: Import name the tree was validated under.
        :param action_prefix: Prefix the names were built with.
        :param generation: Its number.
        :param disabled: Action names not served.
        :param previous: A generation whose unchanged records keep their
            sha256 without being serialized again.
        """
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        shas = {}
        changed = []
        for name, record in modules.items():
            old = previous.modules.get(name) if previous else None
            if old is not None and (old is record or old == record):
                shas[name] = previous.record_shas[name]
            else:
                shas[name] = record_sha(record)
                changed.append(name)
        built = cls(generation=generation, created_at=now,
                    package_name=package_name, action_prefix=action_prefix,
                    modules=modules, disabled=tuple(sorted(disabled)),
                    known_shas=shas)
        if previous is not None and 'action_owners' in vars(previous):
            gone = [n for n in previous.modules if n not in modules]
            owners = dict(previous.action_owners)
            for name in (*changed, *gone):
                old = previous.modules.get(name)
                for action in old.actions if old else ():
                    if owners.get(action.name) == name:
                        del owners[action.name]
            for name in changed:
                for action in modules[name].actions:
                    owners[action.name] = name
            vars(built)['action_owners'] = owners
        return built

    def index(self) -> Index:
        """The ``manifest.json`` part of this generation."""
        return Index(self.generation, self.created_at, self.package_name,
                     self.action_prefix, dict(self.record_shas),
                     self.disabled, self.schema)

    def to_json(self) -> bytes:
        """The bytes of ``manifest.json`` (:meth:`Index.to_json`)."""
        return self.index().to_json()

    @classmethod
    def from_index(cls, index: Index,
                   read_record: Callable[[str, str], 'ModuleRecord']
                   ) -> 'Manifest':
        """The generation ``index`` names, its records read.

        :param index: A parsed ``manifest.json``.
        :param read_record: Returns the record of a module from its name
            and the sha256 the index names, checked against it (see
            :func:`record_from_json`); raises ``ManifestError`` or
            ``BlobError`` when it cannot.
        """
        modules = {name: read_record(name, sha)
                   for name, sha in index.records.items()}
        return cls(generation=index.generation, created_at=index.created_at,
                   package_name=index.package_name,
                   action_prefix=index.action_prefix, modules=modules,
                   disabled=index.disabled, schema=index.schema,
                   known_shas=dict(index.records))

    @classmethod
    def from_records(cls, index: Index,
                     records: Mapping[str, bytes],
                     source: str = '<manifest>') -> 'Manifest':
        """The generation ``index`` names, from record bytes by sha256.

        :param index: A parsed ``manifest.json``.
        :param records: Record bytes by their sha256 (at least those the
            index names); each is checked against its name.
        :param source: Where they came from, for error messages.
        :raises ManifestError: when a record is missing, does not match
            its sha256 or is malformed.
        """
        def read(name: str, sha: str) -> ModuleRecord:
            data = records.get(sha)
            if data is None:
                raise exceptions.ManifestError(
                    f'{source}: the record of module {name} ({sha}) is '
                    f'missing')
            return record_from_json(data, name, sha, source)

        return cls.from_index(index, read)


def record_json(record: ModuleRecord) -> bytes:
    """The bytes of a record blob; equal records give equal bytes."""
    return json.dumps(dict(_record_to_dict(record), name=record.name),
                      sort_keys=True, separators=(',', ':')).encode()


def record_sha(record: ModuleRecord) -> str:
    """The sha256 a record is stored and named under."""
    return hashlib.sha256(record.blob).hexdigest()


def record_from_json(data: bytes, name: str, sha256: str | None = None,
                     source: str = '<manifest>') -> ModuleRecord:
    """Parse and check a record blob.

    :param data: Its bytes.
    :param name: The module the index names it for; the record must say
        the same.
    :param sha256: What the index names it by; when given, ``data`` must
        hash to it.
    :param source: Where it came from, for error messages.
    :raises ManifestError: when it does not match, or is malformed.
    """
    where = f'{source}: record of module {name!r:.100}'
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise exceptions.ManifestError(
            f'{where} does not match its sha256 {sha256}')
    try:
        document = json.loads(data)
        if document.get('name') != name:
            raise ValueError(f'it names module {document.get("name")!r:.100}')
        return _record_from_dict(name, document)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise exceptions.ManifestError(
            f'{where} is malformed: {exc!r}') from exc


_HEX_DIGITS = frozenset('0123456789abcdef')


def is_sha256(value: object) -> bool:
    """True for a sha256 as the store names blobs: 64 lowercase hex digits.

    Names from a manifest or a serialized action were written by another
    process; only these can never name a path outside the blob store.
    """
    return (isinstance(value, str) and len(value) == 64
            and set(value) <= _HEX_DIGITS)


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
        good = _fields(record.good)
        good['actions'] = [_fields(a) for a in record.good.actions]
    error = _fields(record.error) if record.error else None
    return {'path': record.path, 'good': good, 'error': error}


def _fields(instance: Any) -> dict[str, Any]:
    """A dataclass's fields, not copied: the values are what JSON
    writes as they are (text, numbers, dicts of text, tuples of text).
    ``dataclasses.asdict`` deep-copies each, most of a first scan's
    time to write its thousand records."""
    return {name: getattr(instance, name)
            for name in _field_names(type(instance))}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


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
