"""Cinder volume snapshot actions."""

from __future__ import annotations

from typing import Any

from mistral_lib import actions

from hotload import sdk

from .. import common

#: Snapshot statuses from which waiting for another status is pointless.
FAILURE_STATUSES = ("error", "error_deleting")


class AssertStatus(common.StatusAssertion):
    """Assert a volume snapshot is in a given status, optionally waiting.

    Fails with the snapshot's id, its actual and the expected status. With
    ``timeout`` > 0 the snapshot is checked every ``interval`` seconds until
    it reaches the status; an ``error*`` status fails at once.

    :param snapshot_id: ID of the volume snapshot.
    :param status: expected status, e.g. ``available``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "volume snapshot"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        snapshot_id: str,
        status: str = "available",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(snapshot_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return conn.block_storage.get_snapshot(self.resource_id)


class Create(actions.Action):
    """Create a snapshot of a volume.

    Returns the new snapshot (its ``id`` and ``status``, usually
    ``creating``); follow with ``assert_status`` to wait until it is
    ``available``.

    :param volume_id: ID of the volume to snapshot.
    :param snapshot_name: name of the new snapshot.
    :param description: description of the new snapshot.
    :param force: snapshot the volume even if it is attached (``in-use``).
    """

    def __init__(
        self,
        volume_id: str,
        snapshot_name: str | None = None,
        description: str | None = None,
        force: bool = False,
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.snapshot_name = snapshot_name
        self.description = description
        self.force = force

    def run(self, context: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {"volume_id": self.volume_id}
        if self.snapshot_name is not None:
            attrs["name"] = self.snapshot_name
        if self.description is not None:
            attrs["description"] = self.description
        if self.force:
            attrs["is_forced"] = True
        with sdk.openstack_connection(context) as conn:
            with common.api_errors("snapshot of volume", self.volume_id):
                snapshot = conn.block_storage.create_snapshot(**attrs)
            return common.as_dict(snapshot)
