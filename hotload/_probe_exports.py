"""What a probed module exports: its action classes, read.

Runs in the probe's worker, after the module was imported
(:mod:`hotload._probe_child`): finds the classes the module defines that
are actions (``mistral_lib.actions.Action`` subclasses, or ``__export__ =
True`` with a ``run`` method), and reads what the manifest records of each
(parameters, description, line), refusing what Mistral could not run.
"""

import ast
import collections
import inspect
import json
import types
from typing import Any

from mistral_lib import actions as ml_actions
from mistral_lib.utils import inspect_utils

#: The real json.dumps: the module just imported may have replaced the
#: attribute (this module is imported before any user code).
_dumps = json.dumps


def _error(message: str, path: str | None,
           line: int | None) -> dict[str, Any]:
    """An ``export`` error, as the probe reports errors."""
    return {'kind': 'export', 'message': message, 'path': path,
            'line': line, 'traceback': ''}


#: What can hold a statement: statements, except clauses, match cases.
_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)


def blocks(node: ast.AST) -> list[ast.AST]:
    """The children of ``node`` that are or hold statements, in order.

    Why not ``ast.iter_child_nodes``: classes and imports are statements,
    and no expression holds one; skipping expressions makes a walk of a
    module of ten classes several times cheaper (it was about 1 ms each).
    """
    found = []
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, list):
            found += [child for child in value if isinstance(child, _BLOCKS)]
    return found


def _class_lines(tree: ast.Module) -> dict[str, int]:
    """Line of the first class of each name, breadth first (as
    ``ast.walk`` finds them)."""
    lines: dict[str, int] = {}
    queue = collections.deque([tree])
    while queue:
        node = queue.popleft()
        if isinstance(node, ast.ClassDef):
            lines.setdefault(node.name, node.lineno)
        queue += blocks(node)
    return lines


def _description(cls: type) -> str:
    """First paragraph of the class's own docstring, on one line."""
    doc = cls.__dict__.get('__doc__')
    if not isinstance(doc, str):
        return ''
    summary = []
    for line in inspect.cleandoc(doc).splitlines():
        # A summary ends at a blank line or where the reST fields begin
        # (":param x:" right under the summary, as the seed wrote them).
        if not line.strip() or line.lstrip().startswith(':'):
            break
        summary.append(line.strip())
    return ' '.join(summary)


def _parameters(cls: type) -> tuple[str, str | None]:
    """The input spec of ``cls``, and why a default of it cannot be action
    input (or None).

    The spec is mistral-lib's ``get_arg_list_as_str(cls.__init__)``. That
    function reads the signature twice (``getfullargspec``, twice), and the
    JSON check a third time: for a plain function, which is what nearly
    every ``__init__`` is, one signature serves all three (about 60 us a
    class). Anything else goes through mistral-lib itself.

    :param cls: An exported class.
    :raises TypeError, ValueError: the parameters cannot be read; the
        message is mistral-lib's.
    """
    init = cls.__init__
    if init is object.__init__:
        return '', None
    if (type(init) is not types.FunctionType
            or init.__dict__.get('__arguments__')
            or '__wrapped__' in init.__dict__):
        # A bound method or a builtin (getfullargspec keeps the bound
        # argument, inspect.signature drops it), a spec given by hand, or
        # a decorated function (the JSON check follows __wrapped__,
        # getfullargspec does not): the signatures may differ.
        spec = inspect_utils.get_arg_list_as_str(init)
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            return spec, None
        return spec, _non_json_default(signature)
    try:
        # What getfullargspec reads for a function: no wrapper chain.
        signature = inspect.signature(init, follow_wrapped=False)
    except Exception as exc:  # any failure: as getfullargspec words it
        raise TypeError('unsupported callable') from exc
    return _input_spec(signature), _non_json_default(signature)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY,
               inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _input_spec(signature: inspect.Signature) -> str:
    """``get_arg_list_as_str`` of a function, from its signature.

    Same rules, same output: positional parameters (the first named
    ``self`` left out), each default as JSON where it is (a default that
    is not is dropped, and the name with it), then ``**kwargs``; ``*args``
    and keyword-only parameters are not listed.

    :param signature: Of ``__init__``, its wrapper chain not followed.
    """
    args = []
    defaults = []
    varkw = None
    for parameter in signature.parameters.values():
        if parameter.kind in _POSITIONAL:
            args.append(parameter.name)
            if parameter.default is not parameter.empty:
                defaults.append(parameter.default)
        elif parameter.kind is parameter.VAR_KEYWORD:
            varkw = parameter.name
    if 'self' in args:
        args.remove('self')
    first_default = len(args) - len(defaults)
    listed = []
    for index, name in enumerate(args):
        if index < first_default:
            listed.append(name)
            continue
        try:
            # json.dumps looked up now, as mistral-lib does (a module that
            # replaces it is refused as a side effect before this runs).
            listed.append(
                f'{name}={json.dumps(defaults[index - first_default])}')
        except TypeError:
            pass
    if varkw:
        listed.append(f'**{varkw}')
    return ', '.join(listed)


def _non_json_default(signature: inspect.Signature) -> str | None:
    """Why a default of ``__init__`` cannot be action input, or None.

    The spec string drops such a default, Mistral then rejects the
    parameter, and the executor cannot serialize the action.

    :param signature: Of ``__init__``.
    """
    for parameter in signature.parameters.values():
        if parameter.default is parameter.empty:
            continue
        try:
            _dumps(parameter.default)
        except Exception:  # noqa: BLE001 - whatever it is, it is not JSON
            try:
                shown = repr(parameter.default)[:80]
            except Exception:  # noqa: BLE001 - a broken __repr__
                shown = type(parameter.default).__name__
            return (f'default of parameter {parameter.name!r} ({shown}) is '
                    'not JSON; Mistral passes action input as JSON')
    return None


def _abstract_methods(cls: type) -> list[str]:
    return sorted(name for name in dir(cls)
                  if getattr(getattr(cls, name, None),
                             '__isabstractmethod__', False))


def exports(module, module_path: str, tree: ast.Module):
    """(exports, error) for the classes defined in ``module``.

    :param module: The imported module.
    :param module_path: Its file, relative to the actions directory.
    :param tree: Its parse tree (for the lines of its classes).
    :returns: the exports as the probe reports them, sorted by line, and
        None; or None and the error of the first class that cannot be
        exported.
    """
    lines = _class_lines(tree)
    exports = []
    seen = set()
    for obj in list(vars(module).values()):
        if (not isinstance(obj, type) or obj.__module__ != module.__name__
                or obj in seen):
            continue
        seen.add(obj)
        name = obj.__name__
        explicit = obj.__dict__.get('__export__')
        is_action = issubclass(obj, ml_actions.Action)
        if name.startswith('_') or explicit is False:
            continue
        if not is_action and explicit is not True:
            continue
        line = lines.get(name)
        if not callable(getattr(obj, 'run', None)):
            return None, _error(
                f'class {name} sets __export__ = True but has no run() '
                f'method', module_path, line)
        abstract = _abstract_methods(obj)
        if abstract:
            return None, _error(
                f'class {name} is abstract: it does not implement '
                f'{", ".join(m + "()" for m in abstract)}; implement it, or '
                f'mark a base class __export__ = False or name it _{name}',
                module_path, line)
        declared = obj.__dict__.get('__action_name__')
        if declared is not None and (not isinstance(declared, str)
                                     or not declared.strip()):
            return None, _error(
                f'class {name}: __action_name__ must be a non-empty string',
                module_path, line)
        try:
            spec, problem = _parameters(obj)
        except (TypeError, ValueError) as exc:
            return None, _error(
                f'class {name}: cannot read the parameters of __init__: '
                f'{exc}', module_path, line)
        if problem:
            return None, _error(f'class {name}: {problem}', module_path,
                                line)
        exports.append({'class_name': name, 'declared_name': declared,
                        'input': spec, 'description': _description(obj),
                        'line': line or 0})
    return sorted(exports, key=lambda e: e['line']), None
