"""How an exported class becomes an action name.

``<prefix>.<module path>.<snake_case class name>``, e.g. class
``AssertStatus`` in ``nova/servers.py`` with prefix ``int32bit`` is
``int32bit.nova.servers.assert_status``, the form the seed tool used. A
trailing ``Action`` is dropped (``RunnerAction`` is ``runner``). A class
that sets ``__action_name__`` is named exactly that, with no prefix.
"""

import re

_WORD_BOUNDARY = re.compile(r'(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])')


def snake_case(class_name: str) -> str:
    """``AssertStatus`` -> ``assert_status``, ``HTTPGet`` -> ``http_get``."""
    if class_name.endswith('Action') and len(class_name) > len('Action'):
        class_name = class_name[:-len('Action')]
    return _WORD_BOUNDARY.sub('_', class_name).lower()


def action_name(prefix: str, module: str, class_name: str,
                declared_name: str | None = None) -> str:
    """The full name of an exported class.

    :param prefix: The configured ``action_prefix``; may be empty.
    :param module: Dotted module name inside the package.
    :param class_name: The class's name.
    :param declared_name: The class's ``__action_name__``, if any.
    """
    if declared_name:
        return declared_name
    parts = [prefix] if prefix else []
    parts += [module, snake_case(class_name)]
    return '.'.join(parts)


def reserved_prefix(name: str, reserved_prefixes: list[str]) -> str | None:
    """The reserved prefix ``name`` starts with, or None."""
    for prefix in reserved_prefixes:
        if prefix and name.startswith(prefix):
            return prefix
    return None
