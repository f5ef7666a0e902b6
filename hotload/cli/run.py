"""``mistral-hotload run``: run a hot action here, as an executor would.

The action is found, instantiated and run through the provider Mistral's
processes use (:class:`hotload.provider.HotloadActionProvider`): the
version the current generation names, loaded from the state directory,
with its in-tree imports pinned. No Mistral and no broker are needed; the
daemon need not run (the generation it published last is served).

What differs from an executor: there is no workflow, so the execution
context is what ``--context`` gives, and an asynchronous action cannot
complete (nothing would receive its result).
"""

import json
import logging
from typing import Any

from cliff import columns
from cliff import show
from mistral_lib import actions as ml_actions
from mistral_lib import exceptions as ml_exceptions
from mistral_lib.actions import context as ml_context

from hotload import provider as provider_mod

#: Exit status of an action that failed.
EXIT_ACTION_ERROR = 1
#: Keys of ``--context``, and what mistral-lib makes of them.
CONTEXT_PARTS = {'security': ml_context.SecurityContext,
                 'execution': ml_context.ExecutionContext}


class JsonColumn(columns.FormattableColumn):
    """A result: JSON text in tables, the value itself in json/yaml."""

    def human_readable(self) -> str:
        if isinstance(self._value, str):
            return self._value
        return json.dumps(self._value, indent=2, sort_keys=True,
                          default=repr)

    def machine_readable(self) -> Any:
        return self._value


class Run(show.ShowOne):
    """Run a hot action on this machine, as Mistral's executor would.

    The version the current generation names, loaded from the state
    directory through the provider Mistral's processes use; no Mistral,
    no broker, with or without the daemon running. Exits 0 when the action
    succeeds, 1 when it fails (the error is shown) or cannot be run.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('name', help='Full action name, as '
                            '`mistral-hotload action list` shows it.')
        parser.add_argument(
            '--input', default='{}', metavar='JSON',
            help='The action\'s parameters, a JSON object '
                 '(e.g. \'{"cmd": "uname -r"}\'); {} by default.')
        parser.add_argument(
            '--context', default='{}', metavar='JSON',
            help='The context the action gets, a JSON object with '
                 '"security" (mistral-lib SecurityContext keys: auth_token, '
                 'auth_uri, project_id, project_name, user_name, '
                 'service_catalog, region_name, insecure, auth_cacert, '
                 'trust_id, is_trust_scoped, expires_at) and "execution" '
                 '(ExecutionContext keys: workflow_name, '
                 'workflow_execution_id, task_execution_id, '
                 'action_execution_id, ...); both empty by default. The '
                 'token is passed to the action and never printed.')
        return parser

    def take_action(self, parsed_args):
        if self.app.options.verbose_level <= 1:
            # The provider's own lines (the generation it serves) are for
            # Mistral's logs, not around a result.
            logging.getLogger('hotload').setLevel(logging.WARNING)
        params = _json_object(parsed_args.input, '--input')
        action_context = _context(_json_object(parsed_args.context,
                                               '--context'))
        provider = provider_mod.HotloadActionProvider(
            'hotload', conf=self.app.conf, listen=False)
        provider.refresh()
        generation = provider.generation
        descriptor = provider.find(parsed_args.name)
        if descriptor is None:
            raise RuntimeError(
                f'{parsed_args.name}: no such hot action in generation '
                f'{generation} of {provider.states.state_dir}; '
                f'`mistral-hotload action list` lists those served')
        fields = {'action': parsed_args.name, 'generation': generation}
        result = self._run(descriptor, params, action_context)
        if isinstance(result, ml_actions.Result) and result.is_error():
            self.exit_status = EXIT_ACTION_ERROR
            fields['error'] = JsonColumn(result.error)
        else:
            self.exit_status = 0
            if isinstance(result, ml_actions.Result):
                result = result.data
            fields['result'] = JsonColumn(result)
        return tuple(fields), tuple(fields.values())

    @staticmethod
    def _run(descriptor, params: dict[str, Any],
             action_context: ml_context.ActionContext) -> Any:
        """What the action returns, or a Result with its failure."""
        try:
            action = descriptor.instantiate(params, {})
        except Exception as exc:  # noqa: BLE001 - bad input, say
            return ml_actions.Result(error=_message(exc))
        if not action.is_sync():
            return ml_actions.Result(
                error='an asynchronous action completes only when Mistral '
                      'receives its result; run it in a workflow')
        try:
            return action.run(action_context)
        except Exception as exc:  # noqa: BLE001 - the action's failure
            return ml_actions.Result(error=_message(exc))

    def run(self, parsed_args):
        super().run(parsed_args)
        return self.exit_status


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f'{option} is not JSON: {exc}') from None
    if not isinstance(value, dict):
        raise ValueError(f'{option} must be a JSON object, not '
                         f'{type(value).__name__}')
    return value


def _context(data: dict[str, Any]) -> ml_context.ActionContext:
    unknown = set(data) - set(CONTEXT_PARTS)
    if unknown:
        raise ValueError(f'--context: unknown keys {sorted(unknown)}; '
                         f'expected {sorted(CONTEXT_PARTS)}')
    parts = {}
    for key, cls in CONTEXT_PARTS.items():
        given = data.get(key) or {}
        if not isinstance(given, dict):
            raise ValueError(f'--context: "{key}" must be a JSON object')
        try:
            parts[key] = cls(**given)
        except TypeError as exc:
            # The message names the key, never its value (a token).
            raise ValueError(f'--context: "{key}": {exc}') from None
    return ml_context.ActionContext(security_ctx=parts['security'],
                                    execution_ctx=parts['execution'])


def _message(exc: Exception) -> str:
    """An action's failure as the executor reports it: the message, with
    the exception's class when it is not mistral-lib's ActionException."""
    if isinstance(exc, ml_exceptions.ActionException):
        return str(exc)
    return f'{type(exc).__name__}: {exc}'
