"""Cinder volume actions."""

from __future__ import annotations

from typing import Any

from mistral_lib import actions

from .. import common

#: Volume statuses from which waiting for another status is pointless.
FAILURE_STATUSES = (
    "error",
    "error_deleting",
    "error_extending",
    "error_managing",
    "error_restoring",
)


class AssertStatus(actions.Action):
    """Assert a volume is in a given status, optionally waiting for it.

    Fails with the volume's id, its actual and the expected status. With
    ``timeout`` > 0 the volume is checked every ``interval`` seconds until
    it reaches the status; an ``error*`` status fails at once.

    :param volume_id: ID of the volume.
    :param status: expected status, e.g. ``available``, ``in-use``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    def __init__(
        self,
        volume_id: str,
        status: str = "available",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.status = status
        self.timeout = timeout
        self.interval = interval

    def run(self, context: Any) -> dict[str, Any]:
        return common.assert_status(
            context,
            lambda conn: conn.block_storage.get_volume(self.volume_id),
            resource_type="volume",
            resource_id=self.volume_id,
            expected=self.status,
            timeout=self.timeout,
            interval=self.interval,
            failure=FAILURE_STATUSES,
        )
