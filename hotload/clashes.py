"""Hot action names that another action provider of the process serves.

Mistral puts the providers of the entry point group
``mistral.action.providers`` (less those its ``[action_providers]``
allowlist or denylist excludes) into one
:class:`~mistral_lib.actions.CompositeActionProvider`, whose ``find()``
returns the answer of the first provider that has the name. That order is
the order in which Python finds the installed distributions: not sorted,
and not the same on every node. A hot action named like an action another
provider serves (mistral-extra's ``nova.servers_get`` with an empty
``action_prefix``, an installed plug-in, ``std.*``) would run on one node
and not on the next, and ``GET /v2/actions`` would list the name twice.

So the hot provider does not serve such a name: its ``find()`` returns
None for it (the other provider's action wins whatever the order) and its
``find_all()`` omits it, and ``describe()`` reports the clash (``status``,
``doctor``). Only a Mistral process can tell: its providers are the ones
to ask, and the daemon has none.

:class:`ClashDetector` asks the other providers of the process (never the
hot one itself) with their own ``find()``, the way the composite resolves
a name, once per hot name for the life of the process; a new generation
asks only for the names it adds. Which providers are asked:

* those of Mistral's system provider (``mistral.services.actions``), in
  its order; it exists once Mistral built every provider, i.e. from the
  first lookup of the process on, while the hot provider is built before
  it. Until then no name is known to clash (``check()`` returns None).
* not the providers of Mistral's database, ad-hoc and dynamic actions
  (:data:`NOT_ASKED`): their actions come and go through the REST API
  while the process runs, belong to a namespace, and an executor often
  cannot reach the database; asking them would cost a query per hot name
  and be stale at once. ``action_prefix`` keeps hot names apart from them.
* not another hotload provider (the same tables registered twice);
* not, after its first failure, a provider whose ``find()`` raised: it
  could fail slowly once per name (a database an executor cannot reach).
  ``describe()`` reports it, since no name is known to clash with its.

Providers are asked from the thread that builds a table, never from a
lookup, but for the first lookup of the process (the table built before
Mistral had its other providers); ``find()`` then costs one more dict
lookup. A provider's ``find()`` is cheap by contract: Mistral calls it on
every lookup.
"""

import dataclasses
import sys
import threading
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from typing import Any

from mistral_lib import actions as ml_actions
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
#: The module of Mistral that builds its providers into one.
MISTRAL_ACTIONS = 'mistral.services.actions'
#: Providers whose actions live in Mistral's database, by class; never
#: asked (see the module docstring).
NOT_ASKED = frozenset({
    'mistral.actions.adhoc.AdHocActionProvider',
    'mistral.actions.dynamic_action.DynamicActionProvider',
})

#: What lists the other providers: None while they are not known.
Others = Callable[[], Iterable[Any] | None]


@dataclasses.dataclass(frozen=True)
class Clash:
    """A hot action name another provider of the process serves.

    :param name: The action name.
    :param provider: The name the other provider is registered under
        (``legacy`` for Mistral's ``std.*``, plug-ins and mistral-extra).
    :param serves: What it serves under that name: the action's class
        when it says, else its descriptor.
    """

    name: str
    provider: str
    serves: str


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f'{cls.__module__}.{cls.__qualname__}'


def _flatten(providers: Iterable[Any]) -> list[Any]:
    """The providers, with those of a composite in its place."""
    flat = []
    for provider in providers:
        if isinstance(provider, ml_actions.CompositeActionProvider):
            flat += _flatten(getattr(provider, '_delegates', ()))
        else:
            flat.append(provider)
    return flat


def mistral_providers() -> list[Any] | None:
    """The providers of Mistral's system provider, in its order.

    None until Mistral built it (it builds every provider first, the hot
    one among them) or outside Mistral.
    """
    module = sys.modules.get(MISTRAL_ACTIONS)
    system = getattr(module, '_SYSTEM_PROVIDER', None)
    if system is None:
        return None
    # A composite keeps its providers in _delegates (mistral-lib has no
    # public accessor); one without them is no provider to compare with.
    return _flatten([system])


def in_mistral() -> bool:
    """True in a process where Mistral builds the action providers."""
    return MISTRAL_ACTIONS in sys.modules


def _serves(descriptor: Any) -> str:
    try:
        what = descriptor.action_class_name
    except Exception:  # noqa: BLE001 - a third-party descriptor
        what = None
    return str(what) if what else repr(descriptor)


class ClashDetector:
    """Tells which hot action names another provider of the process serves.

    :param own: The hot provider; never asked, nor another instance of
        its class.
    :param others: Lists the other providers of the process, or None
        while they are not known yet. Default: Mistral's
        (:func:`mistral_providers`) when the process is a Mistral one;
        elsewhere (tools, tests, benchmarks) no provider clashes.
    """

    def __init__(self, own: ml_actions.ActionProvider,
                 others: Others | None = None) -> None:
        self._own = own
        if others is None and in_mistral():
            others = mistral_providers
        self._others = others
        #: Each name asked so far, and the clash it has, if any. The
        #: providers asked keep their names for the life of the process
        #: (their plug-ins load once), so the answer is kept.
        self._answers: dict[str, Clash | None] = {}
        #: The providers the answers came from, by identity.
        self._asked: tuple[int, ...] = ()
        #: Providers whose find() failed, with the error, by name; and
        #: their identities. One is not asked again: a provider that
        #: fails (a database an executor cannot reach) could fail slowly,
        #: once per hot name.
        self._problems: dict[str, str] = {}
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    def problems(self) -> dict[str, str]:
        """The providers whose ``find()`` failed, so that they are not
        asked (no name is known to clash with theirs), with the error, by
        name."""
        with self._lock:
            return dict(self._problems)

    def check(self, names: Collection[str]) -> dict[str, Clash] | None:
        """The clashes among ``names``; None while the other providers
        are not known.

        Asks only for the names not asked before: a generation that adds
        one action costs one ``find()`` per other provider.

        :param names: The names the hot provider would serve, in a dict or
            a set (looked up by name).
        """
        if self._others is None:
            return {}
        found = self._others()
        if found is None:
            return None
        providers = [p for p in found
                     if p is not self._own
                     and not isinstance(p, type(self._own))
                     and _class_path(p) not in NOT_ASKED]
        with self._lock:
            identity = tuple(id(p) for p in providers)
            if identity != self._asked:
                self._answers.clear()
                self._failed.clear()
                self._problems.clear()
                self._asked = identity
            answers = self._answers
            clashes = {}
            for name in names:
                if name in answers:
                    clash = answers[name]
                else:
                    clash = answers[name] = self._ask(providers, name)
                if clash is not None:
                    clashes[name] = clash
            # Forget names no longer served once they are half of what is
            # kept: memory follows the table, at O(1) per name.
            if len(answers) > 2 * len(names):
                for name in [n for n in answers if n not in names]:
                    del answers[name]
        return clashes

    def _ask(self, providers: list[Any], name: str) -> Clash | None:
        for provider in providers:
            if self._failed and id(provider) in self._failed:
                continue
            label = getattr(provider, 'name', None) or _class_path(provider)
            try:
                descriptor = provider.find(name)
            except Exception as exc:  # noqa: BLE001 - not ours to fail
                LOG.warning('Action provider %s failed when asked whether '
                            'it serves %s (%s): it is not asked again, and '
                            'no hot action name is known to clash with its '
                            'names', label, name, exc)
                self._failed.add(id(provider))
                self._problems[label] = f'{type(exc).__name__}: {exc}'
                continue
            if descriptor is not None:
                return Clash(name, str(label), _serves(descriptor))
        return None


def message(clash: Clash, descriptor: Any, prefix: str) -> str:
    """What a process reports of ``clash`` (its errors in ``status``, its
    log): what clashes with what, and the fix.

    :param clash: The clash.
    :param descriptor: The hot action's descriptor (with its ``ref``).
    :param prefix: The ``action_prefix`` of the table.
    """
    ref = descriptor.ref
    return (f'hot action {clash.name} (class {ref.class_name} in module '
            f'{ref.module}) is not served: the action provider '
            f'{clash.provider!r} of this process serves {clash.name} too '
            f'({clash.serves}); {fix(clash.name, ref.module, prefix)}')


def fix(name: str, module: str, prefix: str,
        declared: bool | None = None) -> str:
    """How to rename a hot action out of a clash.

    :param name: The action's name.
    :param module: Its module inside the package.
    :param prefix: The configured ``action_prefix``.
    :param declared: Whether the class declared the name with
        ``__action_name__``; guessed from the name when None.
    """
    if declared is None:
        declared = not name.startswith(
            '.'.join(p for p in (prefix, module) if p) + '.')
    if declared:
        return ('rename the action (its __action_name__) to a name no '
                'other provider serves')
    if not prefix:
        return ('set [hotload] action_prefix (it is empty) so that hot '
                'names cannot take the names of installed actions, or '
                'rename the class or module')
    return 'rename the class or module, or change [hotload] action_prefix'
