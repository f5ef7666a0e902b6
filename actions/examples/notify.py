"""An example of :mod:`hotload.sdk`: a volume's state, posted to a web hook.

It uses both halves of the SDK:

* :func:`hotload.sdk.openstack_connection` reaches Cinder as the user who
  runs the workflow (the token of the action's security context, never
  logged, never re-scoped, so a cron trigger's trust-scoped token works);
* :func:`hotload.sdk.run_action` reuses Mistral's own ``std.http`` by
  name, with its egress policy, timeouts and redaction of credentials,
  instead of a second HTTP client in this module. It is found through
  Mistral's action providers and runs in this executor thread with the
  same context; an ``std.http`` failure fails this action with its
  error.

In a workflow (``action_prefix = hotload``)::

  tasks:
    report:
      action: hotload.examples.notify.volume_status
      input:
        volume_id: <% $.volume_id %>
        url: https://chat.example.com/hooks/storage
"""

from __future__ import annotations

from typing import Any

from mistral_lib import actions

from hotload import sdk

from .. import common

#: Default seconds the web hook may take to answer.
DEFAULT_TIMEOUT = 30


class VolumeStatus(actions.Action):
    """Post a volume's name, status and size as JSON to a URL.

    Returns the report posted and the HTTP status the URL answered; an
    answer of 400 or more fails the action.

    :param volume_id: the volume's id.
    :param url: where to post the report, e.g. a chat web hook.
    :param timeout: seconds the URL may take to answer.
    """

    def __init__(
        self, volume_id: str, url: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.url = url
        self.timeout = timeout

    def run(self, context: Any) -> dict[str, Any]:
        """Read the volume, post the report, return both.

        :param context: the action context, whose security part
            authenticates the call to Cinder; passed on to ``std.http``.
        :returns: ``{"report": {...}, "status_code": <HTTP status>}``.
        :raises ActionException: the volume cannot be read, ``std.http``
            failed, or the URL answered with an error status.
        """
        with sdk.openstack_connection(context) as conn:
            with common.api_errors("volume", self.volume_id):
                volume = conn.block_storage.get_volume(self.volume_id)
        report = {
            "id": volume.id,
            "name": volume.name,
            "status": volume.status,
            "size": volume.size,
        }
        # std.http reports an HTTP error status as a result, not a failure.
        answer = sdk.run_action(
            context,
            "std.http",
            url=self.url,
            method="POST",
            json=report,
            timeout=self.timeout,
        )
        status = answer["status"]
        if status >= 400:
            raise common.fail(
                f"{self.url} answered HTTP {status} to the report on "
                f"volume {self.volume_id!r}: {answer.get('reason')}"
            )
        return {"report": report, "status_code": status}
