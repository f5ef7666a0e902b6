"""Trove (database as a service) backup actions.

openstacksdk's ``database`` service has no backup resource, so a small one
is defined here on :class:`openstack.resource.Resource`; it is used through
the ``conn.database`` proxy, which supplies the endpoint (service type
``database``) and the caller's token.
"""

from __future__ import annotations

from typing import Any

from mistral_lib import actions
from openstack import resource

from hotload import sdk

from .. import common

#: Backup statuses from which waiting for another status is pointless.
FAILURE_STATUSES = ("FAILED", "DELETE_FAILED")


class TroveBackup(resource.Resource):
    """A Trove backup (``/backups`` of the Trove v1.0 API)."""

    resource_key = "backup"
    resources_key = "backups"
    base_path = "/backups"

    allow_create = True
    allow_fetch = True
    allow_list = True

    #: Backup name.
    name = resource.Body("name")
    #: Backup description.
    description = resource.Body("description")
    #: NEW, BUILDING, SAVING, COMPLETED, FAILED, DELETE_FAILED.
    status = resource.Body("status")
    #: Instance to back up (create request only).
    instance = resource.Body("instance")
    #: Instance the backup was made from (responses).
    instance_id = resource.Body("instance_id")
    #: Parent backup of an incremental backup.
    parent_id = resource.Body("parent_id")
    #: 1 for an incremental backup (create request only).
    incremental = resource.Body("incremental", type=int)
    #: Swift container to store the backup in.
    container = resource.Body("swift_container")
    #: Backup size in GB.
    size = resource.Body("size", type=float)
    #: Where the backup is stored.
    location_ref = resource.Body("locationRef")
    #: Datastore type and version.
    datastore = resource.Body("datastore", type=dict)
    #: Creation and update timestamps.
    created_at = resource.Body("created")
    updated_at = resource.Body("updated")


class AssertStatus(common.StatusAssertion):
    """Assert a Trove backup is in a given status, optionally waiting.

    Fails with the backup's id, its actual and the expected status. With
    ``timeout`` > 0 the backup is checked every ``interval`` seconds until
    it reaches the status; ``FAILED`` fails at once.

    :param backup_id: ID of the database backup.
    :param status: expected status, e.g. ``COMPLETED``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "database backup"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        backup_id: str,
        status: str = "COMPLETED",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(backup_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return TroveBackup(id=self.resource_id).fetch(conn.database)


class Create(actions.Action):
    """Create a backup of a Trove database instance.

    Returns the new backup (its ``id``, ``status`` usually ``NEW``); follow
    with ``assert_status`` to wait until it is ``COMPLETED``.

    :param instance_id: ID of the database instance to back up.
    :param backup_name: name of the new backup.
    :param description: description of the new backup.
    :param incremental: make an incremental backup on top of the instance's
        last backup (Trove makes a full one when there is none).
    :param parent_id: make an incremental backup on top of this backup.
    :param container: Swift container to store the backup in.
    """

    def __init__(
        self,
        instance_id: str,
        backup_name: str,
        description: str | None = None,
        incremental: bool = False,
        parent_id: str | None = None,
        container: str | None = None,
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.backup_name = backup_name
        self.description = description
        self.incremental = incremental
        self.parent_id = parent_id
        self.container = container

    def run(self, context: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "name": self.backup_name,
            "instance": self.instance_id,
        }
        if self.incremental:
            attrs["incremental"] = 1
        optional = {
            "description": self.description,
            "parent_id": self.parent_id,
            "container": self.container,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        with sdk.openstack_connection(context) as conn:
            with common.api_errors("database instance", self.instance_id):
                backup = TroveBackup.new(**attrs).create(conn.database)
        return common.as_dict(backup)
