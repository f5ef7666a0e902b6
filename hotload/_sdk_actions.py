"""Finding and running an action by name, from inside an action.

The implementation of :func:`hotload.sdk.run_action`; see there for what
an action author needs. How it finds the action providers of the process
it runs in (:func:`providers`), in this order:

1. those a program hosting actions outside Mistral set with
   :func:`set_providers` (``mistral-hotload run``, tests);
2. in a Mistral process (API, engine, executor), Mistral's own: the
   delegates of its system provider
   (``mistral.services.actions.get_system_action_provider()``, the
   provider its engine resolves every task's action with), in its order;
3. elsewhere (a script, the probe), mistral-lib's plug-in point: the
   entry points of ``mistral.action.providers``, each built once with its
   name, except Mistral's database providers (ad-hoc and dynamic
   actions: there is no database to ask) and providers that cannot be
   built outside Mistral (its ``legacy`` provider of ``std.*`` needs
   Mistral's configuration); a hot provider is built without a signal
   listener. An unknown name's error lists the providers left out.

A name is resolved as Mistral's composite provider resolves it: the first
provider, in that order, whose ``find()`` answers. Unlike the composite,
a provider whose ``find()`` raises is passed over (and not asked again
for :data:`RETRY_AFTER` seconds): an executor that cannot reach Mistral's
database (ad-hoc and dynamic actions live there) still runs ``std.*`` and
hot actions. Before the lookup, each hot provider reads a generation
published since its last look (:meth:`HotloadActionProvider.refresh`, a
``stat`` when nothing changed), so a hot action runs in exactly the
version the current generation names, never the one before.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from mistral_lib import actions as ml_actions
from mistral_lib import exceptions as ml_exceptions
from oslo_log import log as logging

from hotload import exceptions

LOG = logging.getLogger(__name__)
#: The entry point group of action providers (mistral-lib's plug-in point).
PROVIDERS_GROUP = 'mistral.action.providers'
#: Seconds a provider whose ``find()`` raised is passed over.
RETRY_AFTER = 30.0
#: Deepest nesting of run_action() in one thread: an action that runs
#: itself would otherwise end in a RecursionError deep in a provider.
MAX_DEPTH = 16
#: The module of Mistral that builds its providers into one.
MISTRAL_ACTIONS = 'mistral.services.actions'
#: Providers whose actions live in Mistral's database, by class path; not
#: built outside Mistral, where there is no database.
DATABASE_PROVIDERS = frozenset({
    'mistral.actions.adhoc:AdHocActionProvider',
    'mistral.actions.dynamic_action:DynamicActionProvider',
})
#: The hot provider's class, as entry points name it.
HOT_PROVIDER = 'hotload.provider:HotloadActionProvider'

_lock = threading.Lock()
#: What set_providers() set; None: not set.
_set: list[Any] | None = None
#: The entry point providers of this process, once built, and why the
#: others were left out, by entry point name.
_built: list[Any] | None = None
_left_out: dict[str, str] = {}
#: The hot provider the entry point providers use (use_hot_provider()).
_hot: Any = None
#: When each provider whose find() raised may be asked again, by id().
_failed_until: dict[int, float] = {}
_depth = threading.local()


def set_providers(found: Sequence[Any] | None) -> list[Any] | None:
    """See :func:`hotload.sdk.set_providers`."""
    global _set
    with _lock:
        previous, _set = _set, None if found is None else list(found)
        _failed_until.clear()
    return previous


def use_hot_provider(provider: Any) -> None:
    """Make ``provider`` the hot provider asked where there is no Mistral.

    For a program of this package that built a hot provider of its own
    (``mistral-hotload run``): the providers of the entry points are then
    built with it, not with a second instance (a second table, a second
    version cache).

    :param provider: A :class:`hotload.provider.HotloadActionProvider`;
        None: build one from the entry point.
    """
    global _hot, _built, _left_out
    with _lock:
        _hot, _built, _left_out = provider, None, {}
        _failed_until.clear()


def entry_point_providers(hot: Any = None) -> tuple[list[Any],
                                                    dict[str, str]]:
    """Action providers from the ``mistral.action.providers`` entry points.

    :param hot: The hot provider to use for the ``hotload`` entry point
        (the one a host built, so that its table serves); None builds
        one on the process's configuration without a signal listener.
    :returns: The providers, in entry point order, and why each one left
        out was, by entry point name.
    """
    found, left_out, seen = [], {}, set()
    for entry in importlib.metadata.entry_points(group=PROVIDERS_GROUP):
        # A distribution found twice on the path (an editable install
        # beside a regular one) lists its entry points twice.
        if entry.name in seen:
            continue
        seen.add(entry.name)
        if entry.value in DATABASE_PROVIDERS:
            left_out[entry.name] = ('its actions live in Mistral\'s '
                                    'database, which only Mistral reaches')
            continue
        if entry.value == HOT_PROVIDER and hot is not None:
            found.append(hot)
            continue
        try:
            cls = entry.load()
            if entry.value == HOT_PROVIDER:
                # Not a Mistral process: nothing to signal it, and it
                # must not answer `status` as one; lookups see new
                # generations on their own (and run_action refreshes).
                provider = cls(entry.name, listen=False)
            else:
                provider = cls(entry.name)
        # A plug-in's constructor may raise anything outside Mistral.
        except Exception as exc:  # noqa: BLE001
            left_out[entry.name] = f'cannot be built outside Mistral: ' \
                                   f'{type(exc).__name__}: {exc}'
            continue
        found.append(provider)
    return found, left_out


def _flatten(found: Sequence[Any]) -> list[Any]:
    """The providers, with those of a composite in its place."""
    flat = []
    for provider in found:
        # mistral-lib's composite has no public accessor of its delegates;
        # one without them is asked as one provider.
        delegates = getattr(provider, '_delegates', None) \
            if isinstance(provider, ml_actions.CompositeActionProvider) \
            else None
        if delegates is None:
            flat.append(provider)
        else:
            flat += _flatten(delegates)
    return flat


def providers() -> tuple[list[Any], str, dict[str, str]]:
    """The action providers of this process, in the order asked.

    :returns: The providers; where they come from, for messages; and the
        providers left out, with the reason, by name.
    """
    global _built, _left_out
    with _lock:
        if _set is not None:
            return (_flatten(_set), 'the action providers set by this '
                    'program', {})
    action_service = sys.modules.get(MISTRAL_ACTIONS)
    if action_service is not None:
        # A Mistral process. Its system provider is built already (at the
        # executor's start, at the first lookup of an engine or API): the
        # call only returns it.
        system = action_service.get_system_action_provider()
        return _flatten([system]), 'the action providers of Mistral', {}
    with _lock:
        if _built is None:
            _built, _left_out = entry_point_providers(_hot)
        return (list(_built), f'the {PROVIDERS_GROUP} entry points (no '
                f'Mistral in this process)', dict(_left_out))


def _refresh_hot(found: Sequence[Any]) -> None:
    """Have each hot provider serve the newest generation published."""
    module = sys.modules.get('hotload.provider')
    if module is None:  # no hot provider was ever built here
        return
    for provider in found:
        if isinstance(provider, module.HotloadActionProvider):
            try:
                provider.refresh()
            # refresh() reports and keeps its table; this is belt and
            # braces: the lookup below still answers from that table.
            except Exception:
                LOG.exception('Cannot refresh hot actions before running '
                              'an action')


def _label(provider: Any) -> str:
    name = getattr(provider, 'name', None)
    if name:
        return str(name)
    cls = type(provider)
    return f'{cls.__module__}.{cls.__qualname__}'


def find(name: str, namespace: str = '') -> Any:
    """The descriptor of the action ``name``, as Mistral would resolve it.

    :param name: The action's full name.
    :param namespace: The namespace of Mistral's ad-hoc and dynamic
        actions to look in; others ignore it.
    :raises ActionNotFoundError: when no provider serves it, naming the
        providers asked, passed over and left out.
    """
    found, source, left_out = providers()
    _refresh_hot(found)
    passed_over: dict[str, str] = {}
    now = time.monotonic()
    for provider in found:
        label = _label(provider)
        until = _failed_until.get(id(provider))
        if until is not None and until > now:
            passed_over[label] = 'its lookup failed a moment ago'
            continue
        try:
            descriptor = provider.find(name, namespace)
        # A provider is not ours to fail the lookup; see the module doc.
        except Exception as exc:  # noqa: BLE001
            LOG.warning('Action provider %s failed to look up %s (%s); it '
                        'is passed over for %.0f seconds', label, name, exc,
                        RETRY_AFTER)
            _failed_until[id(provider)] = now + RETRY_AFTER
            passed_over[label] = f'{type(exc).__name__}: {exc}'
            continue
        _failed_until.pop(id(provider), None)
        if descriptor is not None:
            return descriptor
    asked = ', '.join(_label(p) for p in found) or 'none'
    message = f'no action named {name!r} in {source} (asked: {asked})'
    for what, problems in (('passed over', passed_over),
                           ('left out', left_out)):
        if problems:
            message += f'; {what}: ' + '; '.join(
                f'{label}: {why}' for label, why in sorted(problems.items()))
    raise exceptions.ActionNotFoundError(message, name)


def _error_text(error: Any) -> str:
    """An inner action's error as text for the outer action's message."""
    if isinstance(error, str):
        return error
    try:
        return json.dumps(error, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(error)


def _exception_text(exc: BaseException) -> str:
    """An exception as Mistral reports an action's: ActionException's
    text alone (that is how actions fail on purpose), else its class and
    text."""
    if isinstance(exc, ml_exceptions.ActionException):
        return str(exc)
    text = str(exc)
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def run(context: Any, name: str, params: dict[str, Any]) -> Any:
    """See :func:`hotload.sdk.run_action`."""
    depth = getattr(_depth, 'value', 0)
    if depth >= MAX_DEPTH:
        raise exceptions.RunActionError(
            f'cannot run {name}: actions run with run_action() are nested '
            f'{depth} deep in this thread; does an action run itself?', name)
    _depth.value = depth + 1
    try:
        return _run(context, name, params)
    finally:
        _depth.value = depth


def _run(context: Any, name: str, params: dict[str, Any]) -> Any:
    descriptor = find(name)
    # As Mistral's engine, before instantiating: names the missing and
    # unexpected parameters (mistral-lib raises ActionException).
    try:
        descriptor.check_parameters(params)
    except ml_exceptions.ActionException as exc:
        raise exceptions.RunActionError(str(exc), name) from None
    try:
        # No workflow context to give: that of the calling action's task
        # is the engine's, not the executor's.
        action = descriptor.instantiate(params, {})
    # The module's or __init__'s. The input is never in the message: it
    # may hold secrets, and the message ends up in Mistral's database.
    except Exception as exc:
        raise exceptions.RunActionError(
            f'cannot instantiate action {name} ({descriptor!r}): '
            f'{_exception_text(exc)}', name) from exc
    # Classes older than mistral-lib may lack is_sync(): synchronous.
    is_sync = getattr(action, 'is_sync', None)
    if callable(is_sync) and not is_sync():
        raise exceptions.AsyncActionError(
            f'action {name} is asynchronous: it completes only when its '
            f'result is sent to Mistral\'s API for an action execution of '
            f'its own, so run_action() cannot return it; call it from a '
            f'workflow task instead', name)
    # As Mistral's executor: an ActionContext for mistral-lib actions,
    # None for older classes.
    passed = context if isinstance(action, ml_actions.Action) else None
    try:
        result = action.run(passed)
    # The inner action's failure, whatever it raised (as the executor,
    # which fails an action on any exception).
    except Exception as exc:
        text = _exception_text(exc)
        raise exceptions.InnerActionError(
            f'action {name} failed: {text}', name, text) from exc
    if not isinstance(result, ml_actions.Result):
        result = ml_actions.Result(data=result)
    if result.is_cancel():
        raise exceptions.InnerActionError(
            f'action {name} was cancelled'
            + (f': {_error_text(result.error)}' if result.error is not None
               else ''), name, result.error)
    if result.is_error():
        raise exceptions.InnerActionError(
            f'action {name} failed: {_error_text(result.error)}', name,
            result.error)
    # As Mistral's engine does with a result (ad-hoc actions transform
    # their base action's output here).
    result = descriptor.post_process_result(result)
    if result.is_error():
        raise exceptions.InnerActionError(
            f'action {name} failed: {_error_text(result.error)}', name,
            result.error)
    return result.data
