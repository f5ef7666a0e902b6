"""The public API for code in the actions directory.

Installed with the provider, so it can be imported in every Mistral
process (API, engine, executor), in the probe that validates modules,
and by ``mistral-hotload run``::

  from mistral_lib import actions

  from hotload import sdk


  class ServerName(actions.Action):
      # Says a server's name, through Mistral's std.echo.

      def __init__(self, server_id):
          super().__init__()
          self.server_id = server_id

      def run(self, context):
          with sdk.openstack_connection(context) as conn:
              name = conn.compute.get_server(self.server_id).name
          return sdk.run_action(context, "std.echo", output=name)

It answers two needs of Mistral's "Custom Actions API" specification: a
way to reach OpenStack as the user who runs the workflow
(:func:`openstack_connection`), and a way to reuse existing actions
(:func:`run_action`). Everything else an action needs is mistral-lib's:
``mistral_lib.actions.Action``, ``Result``, the ``ActionContext`` given
to ``run()`` (``context.security``: token, project, user, Keystone URL,
catalog, region; ``context.execution``: the workflow, task and action
execution ids), and ``mistral_lib.exceptions.ActionException``, which
every error raised here also is.

Importing this module imports neither openstacksdk nor Mistral: the
probe imports every module of the directory, and most never connect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from mistral_lib.exceptions import ActionException

from hotload import _sdk_actions
from hotload import _sdk_openstack
from hotload.exceptions import ActionNotFoundError
from hotload.exceptions import AsyncActionError
from hotload.exceptions import CredentialsError
from hotload.exceptions import InnerActionError
from hotload.exceptions import RunActionError
from hotload.exceptions import SdkError

if TYPE_CHECKING:
    import openstack.connection

__all__ = [
    'ActionException',
    'ActionNotFoundError',
    'AsyncActionError',
    'CredentialsError',
    'InnerActionError',
    'RunActionError',
    'SdkError',
    'openstack_connection',
    'run_action',
    'set_providers',
]


def openstack_connection(context: Any, *, interface: str = 'public',
                         region_name: str | None = None
                         ) -> openstack.connection.Connection:
    """An openstacksdk connection as the user who runs the workflow.

    Use it as a context manager, so that its HTTP session is closed when
    the action is done::

      with sdk.openstack_connection(context) as conn:
          volume = conn.block_storage.get_volume(volume_id)

    The only credential is the workflow's token from the security
    context, used as it is: nothing is read from files or the
    environment (no ``clouds.yaml``, no ``OS_*``), and the token is never
    logged nor put in an error message. The service catalog comes from
    the context when Mistral put it there (executions started through
    its API); otherwise (executions of cron triggers, whose token is
    trust-scoped) Keystone validates the token once (``GET
    /v3/auth/tokens``, the token checking itself) and its catalog is
    used, and kept for the next connections with that token for a few
    minutes. The token is never re-scoped: Keystone refuses to exchange
    a trust-scoped token for another one.

    :param context: The :class:`mistral_lib.actions.context.ActionContext`
        given to ``run()``; its ``security`` part supplies the token,
        project, Keystone URL (``auth_uri``, else Mistral's
        ``[keystone_authtoken] www_authenticate_uri``), catalog, region
        and TLS settings (``insecure``, ``auth_cacert``).
    :param interface: The catalog interface of the endpoints to use:
        ``public`` (the default), ``internal`` or ``admin``.
    :param region_name: The region of the endpoints to use; by default
        the context's ``region_name``, else the catalog's only one.
    :returns: An :class:`openstack.connection.Connection` whose requests
        carry the workflow's token.
    :raises CredentialsError: (an ``ActionException``) when the context
        has no token (Mistral runs without authentication), neither a
        catalog nor a Keystone URL, or Keystone refuses the token or
        cannot be reached.
    """
    return _sdk_openstack.connect(context, interface=interface,
                                  region_name=region_name)


def run_action(context: Any, name: str, /, **params: Any) -> Any:
    """Run an existing action by name and return its result.

    Whatever serves the action: Mistral's ``std.*``, mistral-extra's
    OpenStack actions, an installed plug-in, an ad-hoc action, another
    hot action. It is found as Mistral's engine finds a task's action,
    through the action providers of the process it runs in, and run
    there and then, in the calling thread::

      listing = sdk.run_action(context, "std.echo", output=[1, 2])
      server = sdk.run_action(context, "nova.servers_get", server=sid)

    How it differs from instantiating the action's class and calling its
    ``run()``:

    * *Lookup by name*: the caller need not import, or even know, the
      class; the provider that serves the name is the one a workflow
      task naming it would get, in Mistral's order, so an installed
      action of that name wins over a hot one as it does for workflows.
      The input is checked as the engine checks it (missing and
      unexpected parameters are named) and the result post-processed as
      the engine does (ad-hoc actions transform their output there).
    * *The exact hot version*: a hot action runs in the version the
      current generation of this node names (the generation published
      last, read before the lookup), as a task started now would. A
      module that imports a sibling module instead (``from . import
      other``) runs the version of it that was published with its own.
    * *The context passed on*: the inner action gets the same
      ``ActionContext`` (security and execution) as the caller, so it
      acts as the same user, for the same workflow, task and action
      execution. It is not an action execution of its own: Mistral
      stores nothing for it, and the task's policies (retry, timeout)
      apply to the calling action as a whole.

    An asynchronous action (``is_sync()`` false: its result reaches
    Mistral later through its API) is refused, as nothing could return
    its result here.

    Where there is no Mistral (``mistral-hotload run``, a script), the
    providers are those a program set with :func:`set_providers`, else
    those of the ``mistral.action.providers`` entry points that can be
    built outside Mistral: neither Mistral's database actions (ad-hoc,
    dynamic) nor its ``std.*``, whose provider needs Mistral's
    configuration.

    :param context: The :class:`mistral_lib.actions.context.ActionContext`
        given to the calling action's ``run()``; passed on as it is.
    :param name: The action's full name, as ``mistral action-list``
        shows it (a hot action's includes the node's ``action_prefix``).
        Positional only, as is ``context``: an action's parameters may
        have any name.
    :param params: The action's input, by parameter name; JSON values,
        as a workflow would give.
    :returns: The action's result: the ``data`` of the
        :class:`mistral_lib.actions.Result` it returned, or what it
        returned.
    :raises ActionNotFoundError: when no provider of the process serves
        ``name``; the message names the providers asked.
    :raises AsyncActionError: when the action is asynchronous.
    :raises RunActionError: when the input does not match the action's
        parameters, the action cannot be instantiated, or actions run
        each other more than 16 deep in one thread.
    :raises InnerActionError: when the action failed (returned a
        ``Result`` with an error, was cancelled, or raised); the message
        is ``action <name> failed: <its error>`` and ``error`` holds the
        error as the action gave it. Every one of these is an
        ``ActionException``: uncaught, it fails the calling action with
        that message.
    """
    return _sdk_actions.run(context, name, params)


def set_providers(providers: Sequence[Any] | None) -> list[Any] | None:
    """Set the action providers :func:`run_action` asks, for a program
    that runs actions outside Mistral.

    Not for actions. Mistral's processes need nothing of it: there
    :func:`run_action` asks Mistral's own providers. A program that runs
    actions itself (``mistral-hotload run``, tests) sets the providers
    that serve there, so that the hot provider it built, not another
    instance, answers.

    :param providers: The :class:`mistral_lib.actions.ActionProvider`
        objects to ask, in order (a
        :class:`~mistral_lib.actions.CompositeActionProvider` is asked
        delegate by delegate); None returns to the default.
    :returns: The providers set before, or None.
    """
    return _sdk_actions.set_providers(providers)
