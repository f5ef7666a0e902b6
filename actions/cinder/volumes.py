"""Cinder volume actions."""

from __future__ import annotations

from typing import Any

from .. import common

#: Volume statuses from which waiting for another status is pointless.
FAILURE_STATUSES = (
    "error",
    "error_deleting",
    "error_extending",
    "error_managing",
    "error_restoring",
)


class AssertStatus(common.StatusAssertion):
    """Assert a volume is in a given status, optionally waiting for it.

    Fails with the volume's id, its actual and the expected status. With
    ``timeout`` > 0 the volume is checked every ``interval`` seconds until
    it reaches the status; an ``error*`` status fails at once.

    :param volume_id: ID of the volume.
    :param status: expected status, e.g. ``available``, ``in-use``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "volume"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        volume_id: str,
        status: str = "available",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(volume_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return conn.block_storage.get_volume(self.resource_id)
