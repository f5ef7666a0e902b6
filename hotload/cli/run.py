"""``mistral-hotload run``: run a hot action here, as an executor would.

The action goes the way a workflow's action goes in Mistral, through the
provider Mistral's processes use
(:class:`hotload.provider.HotloadActionProvider`) and the way of Mistral's
engine and remote executor
(``mistral/engine/actions.py``, ``mistral/executors/default_executor.py``):

1. ``find(name)`` in the current generation, read from the state
   directory: the version it names, nothing else. No Mistral, no broker;
   the daemon need not run (the generation it published last serves).
2. ``check_parameters(input)``, then ``instantiate(input, {})``, as the
   engine does: the module's exact version is loaded from the blob store
   with its in-tree imports pinned, and ``__init__`` runs.
3. The action is serialized and deserialized, as it travels from engine
   to a remote executor (Mistral's default executor type): the executor's
   side loads the version by its content key, and an action whose state
   cannot travel fails here as it would there.
4. ``run(context)`` in a thread of its own, as the executor does (an
   action that only works in the main thread fails here too), with a
   mistral-lib ``ActionContext`` built from ``--context``. A value that is
   not a ``Result`` becomes ``Result(data=value)``; an exception becomes an
   error.
5. The result is serialized and deserialized, as it travels back to the
   engine: what is shown is what a workflow would get (a datetime becomes
   text, a tuple a list), and a result that cannot travel is an error
   (in Mistral, the engine would never receive it).

What differs from Mistral: there is no workflow, so the execution context
is what ``--context`` gives and nothing is stored; an asynchronous action
is refused, since nothing here could receive its result; and the
action's ``print()`` output goes to stderr, keeping stdout for the result
(``-f json`` stays parseable).

Exit status: 0 when the action succeeds; 1 when it fails (state ``ERROR``
or ``CANCELLED``, with its error) or cannot be run (no such action,
nothing published, invalid input, ``__init__`` failed, asynchronous: the
reason on stderr, nothing on stdout); 2 on a usage error, which includes
``--input`` or ``--context`` that are not a JSON object of the accepted
keys.

``--context`` may carry a token: it is passed to the action and never
printed nor logged, even in an error about it.
"""

import argparse
import contextlib
import difflib
import inspect
import json
import logging
import sys
import threading
import traceback
from typing import Any

from cliff import columns
from cliff import show
from mistral_lib import actions as ml_actions
from mistral_lib import exceptions as ml_exceptions
from mistral_lib import serialization
from mistral_lib.actions import context as ml_context

from hotload import exceptions
from hotload import provider as provider_mod
from hotload import store
from hotload.cli.operate import CommandError

#: Exit status of a run that succeeded.
EXIT_OK = 0
#: Exit status of an action that failed or could not be run.
EXIT_FAILED = 1

#: Mistral's states of a completed action execution.
SUCCESS = 'SUCCESS'
ERROR = 'ERROR'
CANCELLED = 'CANCELLED'

#: The parts of ``--context``, and the mistral-lib class each becomes.
CONTEXT_PARTS: dict[str, type] = {
    'security': ml_context.SecurityContext,
    'execution': ml_context.ExecutionContext,
}
#: Formatters that render a structured result themselves.
STRUCTURED_FORMATTERS = frozenset({'json', 'yaml'})
#: How many near names an unknown one suggests.
SUGGESTIONS = 3


def context_keys(cls: type) -> list[str]:
    """The keys a part of ``--context`` accepts: the parameters of the
    mistral-lib class it becomes (read from it, so that the help follows
    the installed mistral-lib)."""
    return [name for name, parameter in
            inspect.signature(cls.__init__).parameters.items()
            if name != 'self' and parameter.kind in
            (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]


def json_object(value: str) -> dict[str, Any]:
    """The JSON object an option gives: an argparse ``type``.

    :param value: The JSON text, or ``@PATH`` to read it from a file
        (``@-``: standard input), which keeps a token off the command line
        (other users see a command line in ``ps``).
    :raises argparse.ArgumentTypeError: naming the file and the JSON
        error's line and column, never the text (it may hold a secret);
        argparse puts "argument OPTION:" before the message.
    """
    source = ''
    if value.startswith('@'):
        path = value[1:]
        source = f' in {path}'
        try:
            if path == '-':
                value = sys.stdin.read()
            else:
                with open(path, encoding='utf-8') as stream:
                    value = stream.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(
                f'cannot read {path}: {exc}') from None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f'invalid JSON{source}: {exc}') from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(
            f'a JSON object is needed{source}, not a '
            f'{type(data).__name__}')
    return data


def action_context(data: dict[str, Any]) -> ml_context.ActionContext:
    """The ``ActionContext`` an action gets from ``--context``.

    Mistral's executor builds it the same way (``create_action_context``):
    a ``SecurityContext`` from the caller's credentials and an
    ``ExecutionContext`` from the workflow's execution; each part not
    given is empty (every attribute None).

    :param data: The ``--context`` object: ``security`` and
        ``execution``, each an object of its class's keywords.
    :raises argparse.ArgumentTypeError: on an unknown part or key, naming
        it (never a value).
    """
    unknown = sorted(set(data) - set(CONTEXT_PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f'unknown keys {unknown}; expected {sorted(CONTEXT_PARTS)}')
    parts = {}
    for part, cls in CONTEXT_PARTS.items():
        given = data.get(part) or {}
        if not isinstance(given, dict):
            raise argparse.ArgumentTypeError(
                f'"{part}" must be a JSON object')
        wrong = sorted(set(given) - set(context_keys(cls)))
        if wrong:
            raise argparse.ArgumentTypeError(
                f'unknown "{part}" keys {wrong}; expected some of '
                f'{context_keys(cls)}')
        parts[part] = cls(**given)
    return ml_context.ActionContext(security_ctx=parts['security'],
                                    execution_ctx=parts['execution'])


def context_option(value: str) -> ml_context.ActionContext:
    """The ``ActionContext`` ``--context`` gives: an argparse ``type``.

    :param value: As for :func:`json_object`.
    """
    try:
        return action_context(json_object(value))
    except (TypeError, ValueError) as exc:
        # argparse would show the value with these: it may hold a token.
        raise argparse.ArgumentTypeError(
            f'{type(exc).__name__}: {exc}') from None


class ResultColumn(columns.FormattableColumn):
    """A result or an error: text in tables and with ``-f value`` or
    ``shell`` (a string as it is, anything else as indented JSON), the
    value itself with ``-f json`` and ``yaml``.

    :param value: The value.
    :param structured: Whether the formatter renders structures itself
        (json, yaml); else ``machine_readable()`` is the text too, so that
        ``-f value -c result`` prints JSON rather than a Python ``repr``.
    """

    def __init__(self, value: Any, structured: bool = True) -> None:
        super().__init__(value)
        self._structured = structured

    def human_readable(self) -> str:
        if self._value is None:
            return ''
        if isinstance(self._value, str):
            # Most command output ends with a newline, which would be an
            # empty line in a table; -f json keeps it.
            return self._value.removesuffix('\n')
        return json.dumps(self._value, indent=2, sort_keys=True,
                          ensure_ascii=False)

    def machine_readable(self) -> Any:
        return self._value if self._structured else self.human_readable()


class Run(show.ShowOne):
    """Run a hot action on this machine, as Mistral's executor would.

    The version the current generation names, loaded from the state
    directory through the provider Mistral's processes use, checked,
    instantiated, sent and run the way the engine and a remote executor
    do; no Mistral and no broker are needed, and the daemon need not run.
    Shows the action, the generation and content key of the version run,
    the state (SUCCESS, ERROR or CANCELLED), and the result or the error,
    as a workflow would get them. An asynchronous action is refused (its
    result could not be received here). What the action prints goes to
    stderr.

    Exit status: 0 the action succeeded; 1 it failed (its error is shown)
    or could not be run (no such action, nothing published, invalid
    input, its __init__ failed, asynchronous: the reason is on stderr); 2
    a usage error, such as --input or --context that is not a JSON
    object of the accepted keys.

    Example: mistral-hotload run hotload.system.exec --input
    '{"cmd": "uname -r"}' -f value -c result
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'name', metavar='NAME',
            help='The action\'s full name, as "mistral-hotload action '
                 'list" shows it.')
        parser.add_argument(
            '--input', type=json_object, default={},
            metavar='JSON',
            help='The action\'s parameters, a JSON object (e.g. \'{"cmd": '
                 '"uname -r"}\'), or @PATH to read it from a file (@- for '
                 'stdin). Default: {}.')
        parser.add_argument(
            '--context', type=context_option, default=None,
            metavar='JSON',
            help='The context the action gets, a JSON object with up to two '
                 'parts, or @PATH to read it from a file (@- for stdin; '
                 'better for a token, which other users could see on a '
                 'command line). "security", mistral-lib\'s SecurityContext: '
                 + ', '.join(context_keys(ml_context.SecurityContext))
                 + '. "execution", its ExecutionContext: '
                 + ', '.join(context_keys(ml_context.ExecutionContext))
                 + '. A key not given has mistral-lib\'s default (None, 0 '
                 'for the counters). The token reaches the action and is '
                 'never printed.')
        return parser

    def take_action(self, parsed_args):
        if self.app.options.verbose_level < 2:
            # The provider logs for Mistral's logs (each generation it
            # serves, what it refuses); this command reports every
            # problem itself, once. -v shows them.
            logging.getLogger('hotload').setLevel(logging.CRITICAL)
        provider = provider_mod.HotloadActionProvider(
            'hotload', conf=self.app.conf, listen=False)
        descriptor = self._find(provider, parsed_args.name)
        context = parsed_args.context or action_context({})
        # The action's print() must not mix with the result on stdout.
        with contextlib.redirect_stdout(self.app.stderr):
            action = self._prepare(descriptor, parsed_args.input)
            state, value = self._execute(action, context)
        self.exit_status = EXIT_OK if state == SUCCESS else EXIT_FAILED
        structured = parsed_args.formatter in STRUCTURED_FORMATTERS
        fields = {
            'action': descriptor.name,
            'generation': provider.generation,
            'content_key': descriptor.ref.content_key,
            'state': state,
            'result': ResultColumn(value if state == SUCCESS else None,
                                   structured),
            'error': ResultColumn(None if state == SUCCESS else value,
                                  structured),
        }
        return tuple(fields), tuple(fields.values())

    def run(self, parsed_args):
        super().run(parsed_args)
        return self.exit_status

    def _find(self, provider: provider_mod.HotloadActionProvider,
              name: str):
        """The descriptor ``provider`` serves under ``name``.

        :raises CommandError: naming the state directory and generation,
            and why: nothing published (or the manifest refused), the
            action disabled, or no such name (with near ones).
        """
        descriptor = provider.find(name)
        if descriptor is not None:
            return descriptor
        state_dir = provider.states.state_dir
        # What the provider refused (an untrusted or unreadable manifest).
        problems = '; '.join(provider.describe()['errors'])
        if not provider.generation:
            raise CommandError(
                f'{name}: no hot action generation can be read from '
                f'{state_dir}: {problems}' if problems else
                f'{name}: nothing is published in {state_dir} yet: the '
                f'daemon publishes the first generation once it has probed '
                f'every module; is it running (mistral-hotload status)?')
        where = f'generation {provider.generation} of {state_dir}'
        if name in _disabled(provider.states):
            raise CommandError(
                f'{name} is disabled in {where}; "mistral-hotload enable '
                f'{name}" serves it again')
        served = [d.name for d in provider.find_all()]
        near = difflib.get_close_matches(name, served, SUGGESTIONS)
        raise CommandError(
            f'{name}: no such hot action in {where}'
            + (f'; did you mean {" or ".join(near)}?' if near else '')
            + '; "mistral-hotload action list" lists those served'
            + (f' (the provider reports: {problems})' if problems else ''))

    def _prepare(self, descriptor, params: dict[str, Any]
                 ) -> ml_actions.Action:
        """The action as a remote executor receives it from the engine.

        :raises CommandError: when it cannot be run: invalid input, its
            class cannot be loaded or instantiated, it is asynchronous,
            or its state cannot be sent to an executor.
        """
        name = descriptor.name
        try:
            # As the engine, before instantiating: names the missing and
            # unexpected parameters.
            descriptor.check_parameters(params)
        except ml_exceptions.ActionException as exc:
            raise CommandError(str(exc)) from None
        try:
            action = descriptor.instantiate(params, {})
        except exceptions.BlobError as exc:
            raise CommandError(f'{name}: cannot load its version '
                               f'{descriptor.ref.content_key}: {exc}'
                               ) from None
        except Exception as exc:  # noqa: BLE001 - the module's or __init__'s
            self._traceback()
            raise CommandError(f'{name} cannot be instantiated (the engine '
                               f'would fail the task): {_message(exc)}'
                               ) from None
        if not action.is_sync():
            raise CommandError(
                f'{name} is asynchronous: it completes only when Mistral '
                f'receives its result for its action execution, which '
                f'cannot happen here; run it in a workflow')
        serializer = serialization.get_polymorphic_serializer()
        try:
            sent = serializer.serialize(action)
        except Exception as exc:  # noqa: BLE001 - any state __init__ made
            raise CommandError(
                f'{name}: the state its __init__ made cannot be sent to '
                f'an executor ({_message(exc)}): a remote executor of '
                f'Mistral could not run it'
            ) from None
        return serializer.deserialize(sent)

    def _execute(self, action: ml_actions.Action,
                 context: ml_context.ActionContext) -> tuple[str, Any]:
        """Run ``action`` as the executor does; its state, and its result
        or error as the engine would receive them."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome['result'] = action.run(context)
            # The executor fails the action on any exception; SystemExit
            # too, which must not end this command before it reports.
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                outcome['exception'] = exc
                outcome['traceback'] = traceback.format_exc()

        # A thread of its own, as the executor's: an action that needs the
        # main thread (signal handlers) fails here as it would there. A
        # daemon thread, so that Ctrl-C ends the command.
        thread = threading.Thread(target=target, daemon=True,
                                  name='hotload-run')
        thread.start()
        thread.join()
        if 'exception' in outcome:
            self._traceback(outcome['traceback'])
            return ERROR, _message(outcome['exception'])
        result = outcome.get('result')
        if not isinstance(result, ml_actions.Result):
            result = ml_actions.Result(data=result)
        serializer = serialization.get_polymorphic_serializer()
        try:
            result = serializer.deserialize(serializer.serialize(result))
        except Exception as exc:  # noqa: BLE001 - whatever run() returned
            return ERROR, (f'the result cannot be sent to Mistral\'s engine '
                           f'({_message(exc)}): in Mistral the engine would '
                           f'never receive it')
        if result.is_cancel():
            return CANCELLED, result.error
        if result.is_error():
            return ERROR, result.error
        return SUCCESS, result.data

    def _traceback(self, text: str | None = None) -> None:
        """With -v or --debug, the traceback of the error being reported
        (an action author's first question)."""
        if self.app.options.verbose_level >= 2 or self.app.options.debug:
            self.app.stderr.write(text or traceback.format_exc())


def _disabled(states: store.ManifestStore) -> tuple[str, ...]:
    try:
        return states.disabled()
    except exceptions.ControlFileError:
        return ()  # status reports it; here it only explains a miss


def _message(exc: BaseException) -> str:
    """An error as this command shows it: the message of mistral-lib's
    ActionException (the way actions report a failure), else the
    exception's class and message."""
    if isinstance(exc, ml_exceptions.ActionException):
        return str(exc)
    text = str(exc)
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__
