"""What Mistral sees of a hot action: its descriptor, and the action
that travels from engine to executor with its exact version.

A :class:`HotloadActionDescriptor` is built from the manifest alone (the
API process never imports an action module). ``instantiate()`` (in the
engine) loads the class of exactly the version the table names and wraps
the action in :class:`HotloadAction`, whose serializer sends the version's
:class:`~hotload.versions.ActionRef` along; the executor loads that same
content back, or stands in an :class:`UnavailableAction` that fails with
the reason. Never another version.
"""

import dataclasses
import inspect
import socket
from typing import Any

from mistral_lib import actions as ml_actions
from mistral_lib import serialization
from mistral_lib.actions.providers import base as providers_base
from oslo_log import log as logging

from hotload import exceptions
from hotload import manifest as manifest_mod
from hotload import versions
from hotload.versions import ActionRef
from hotload.versions import VersionCache

LOG = logging.getLogger(__name__)
#: What serialized hot actions are tagged with. It names the class where it
#: was first defined, so engines and executors of releases on either side
#: of the move to this module understand each other.
SERIALIZATION_KEY = 'hotload.provider.HotloadAction'
#: The version cache and node name of this process's provider (the
#: executor's deserializer has no other way to reach them).
_CACHE: VersionCache | None = None
_HOST: str | None = None


def bind(cache: VersionCache, host: str) -> None:
    """Make ``cache`` and ``host`` those serialized actions are loaded
    with in this process (the provider does it when it is created).

    :param cache: The provider's version cache.
    :param host: This node's name, for errors.
    """
    global _CACHE, _HOST
    _CACHE, _HOST = cache, host


class HotloadAction(ml_actions.Action):
    """Wraps a hot action so it travels with its exact version.

    :param action: The user's action object.
    :param ref: The version it belongs to.
    """

    def __init__(self, action: Any, ref: ActionRef) -> None:
        super().__init__()
        self.action = action
        self.ref = ref

    @classmethod
    def get_serialization_key(cls) -> str:
        return SERIALIZATION_KEY

    def run(self, context):
        run = self.action.run
        # Seed-style classes define run(self) without the context.
        if _takes_argument(run):
            return run(context)
        return run()

    def is_sync(self) -> bool:
        is_sync = getattr(self.action, 'is_sync', None)
        return is_sync() if callable(is_sync) else True

    def __repr__(self) -> str:
        return (f'hot action {self.ref.name} '
                f'[content_key={self.ref.content_key}]')


class UnavailableAction(ml_actions.Action):
    """Stands in, in the executor, for a version that cannot be loaded.

    Running it fails the action with the reason; nothing else is run.

    :param name: The action's name; None when the reference sent is too
        broken to tell.
    :param reason: Why it cannot be loaded.
    :param content_key: The version that was asked for; None when the
        reference sent is invalid.
    """

    def __init__(self, name: str | None, reason: str,
                 content_key: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.reason = reason
        self.content_key = content_key

    def run(self, context):
        what = (f'content {self.content_key} is not available'
                if self.content_key else 'the reference sent is invalid')
        return ml_actions.Result(error=(
            f'hot action {self.name or "(name unknown)"} cannot run on host '
            f'{_HOST or socket.gethostname()}: {what} ({self.reason})'))

    def __repr__(self) -> str:
        return f'unavailable hot action {self.name or "(name unknown)"}'


def _takes_argument(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                          p.VAR_POSITIONAL) for p in parameters)


class HotloadActionSerializer(serialization.DictBasedSerializer):
    """Sends a hot action with its content key; loads exactly that back."""

    def serialize_to_dict(self, entity: HotloadAction) -> dict[str, Any]:
        return {'ref': entity.ref.to_dict(), 'data': vars(entity.action)}

    def deserialize_from_dict(self, entity_dict: Any):
        try:
            ref, data = versions.serialized_action(entity_dict)
        except exceptions.InvalidReferenceError as exc:
            name = versions.sent_name(entity_dict)
            LOG.error('Refusing serialized hot action %s: %s',
                      name or '(name unknown)', exc)
            return UnavailableAction(name, str(exc))
        cache = _CACHE
        if cache is None:
            return UnavailableAction(ref.name, 'the hotload provider is not '
                                     'loaded in this process',
                                     ref.content_key)
        try:
            cls = cache.action_class(ref)
            # As mistral-lib's own ActionSerializer: the engine ran
            # __init__, the executor restores the state it produced.
            action = cls.__new__(cls)
            for key, value in data.items():
                setattr(action, key, value)
        except exceptions.BlobError as exc:
            LOG.error('Cannot load hot action %s: %s', ref.name, exc)
            return UnavailableAction(ref.name, str(exc), ref.content_key)
        except BaseException as exc:  # reported to the engine
            LOG.exception('Cannot load hot action %s', ref.name)
            return UnavailableAction(ref.name, f'{type(exc).__name__}: {exc}',
                                     ref.content_key)
        wrapped = HotloadAction(action, ref)
        cache.hold(wrapped)
        return wrapped


def _register_serializer() -> None:
    try:
        serialization.register_serializer(HotloadAction,
                                          HotloadActionSerializer())
    except RuntimeError:
        pass  # already registered: this module was imported twice


_register_serializer()


class HotloadActionDescriptor(providers_base.ActionDescriptorBase):
    """A hot action as Mistral sees it; built from the manifest alone.

    :param ref: The version the action belongs to.
    :param spec: Its entry in the manifest.
    :param cache: Where its class is loaded from when instantiated.
    """

    def __init__(self, ref: ActionRef, spec: manifest_mod.ActionSpec,
                 cache: VersionCache) -> None:
        # Namespace '' as Mistral's own actions: listed by default. find()
        # ignores namespaces, so hot actions serve every namespace.
        super().__init__(spec.name, spec.description, spec.input,
                         namespace='')
        self.ref = ref
        self._cache = cache

    @property
    def action_class_name(self) -> str:
        return f'{self.ref.package_name}.{self.ref.module}.' \
               f'{self.ref.class_name}'

    def instantiate(self, params, wf_ctx):
        cls = self._cache.action_class(self.ref)
        action = HotloadAction(cls(**(params or {})), self.ref)
        self._cache.hold(action)
        return action

    def __repr__(self) -> str:
        return (f'Hot action [name={self.name}, '
                f'class={self.action_class_name}, '
                f'content_key={self.ref.content_key}]')


@dataclasses.dataclass(frozen=True)
class Module:
    """A module record as a provider serves it, kept across generations
    while its record (named by sha256) stays the same.

    :param record: The record.
    :param package_name: The package name of the manifest it came from.
    :param descriptors: Its actions, by name.
    """

    record: manifest_mod.ModuleRecord
    package_name: str
    descriptors: dict[str, HotloadActionDescriptor]

    @classmethod
    def of(cls, record: manifest_mod.ModuleRecord, package_name: str,
           generation: int, cache: VersionCache) -> 'Module':
        # The refs carry the generation the record was first served in:
        # any generation naming the record serves exactly this content.
        descriptors = {}
        for action in record.actions:
            ref = ActionRef.of(action, record, package_name, generation)
            descriptors[action.name] = HotloadActionDescriptor(
                ref, action, cache)
        return cls(record, package_name, descriptors)
