"""Tests for the Trove backup actions.

No OpenStack cloud is reachable here: requests-mock stands in for Keystone
and Trove (see conftest.py); bodies are shaped like Trove v1.0 responses.
"""

from __future__ import annotations

import json

import pytest
from mistral_lib.exceptions import ActionException

from hotload_actions.trove import backups

BACKUP_ID = "a2f4e8c1-6b3d-4e5f-9a7b-1c2d3e4f5a6b"
INSTANCE_ID = "7d9c1f2e-3a4b-4c5d-8e6f-0a1b2c3d4e5f"


def _backup(status: str = "COMPLETED", **extra) -> dict:
    body = {
        "id": BACKUP_ID,
        "name": "db-nightly",
        "description": None,
        "locationRef": "https://object-store.example.com/v1/AUTH_0c4e939a/"
        f"database_backups/{BACKUP_ID}.xbstream.gz.enc",
        "instance_id": INSTANCE_ID,
        "created": "2024-05-01T02:00:00",
        "updated": "2024-05-01T02:04:11",
        "size": 0.14,
        "status": status,
        "parent_id": None,
        "datastore": {
            "type": "mysql",
            "version": "8.0.29",
            "version_id": "5e7a9c1b-2d3f-4a5b-8c6d-7e8f9a0b1c2d",
        },
        "project_id": "0c4e939acacf4376bdcd1129f1a054ad",
        "storage_driver": "swift",
    }
    body.update(extra)
    return {"backup": body}


class TestAssertStatus:
    def url(self, cloud):
        return f"{cloud.database}/backups/{BACKUP_ID}"

    def test_matches(self, cloud):
        get = cloud.mock.get(self.url(cloud), json=_backup())
        result = backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert result["id"] == BACKUP_ID
        assert result["status"] == "COMPLETED"
        assert result["location_ref"].endswith(".xbstream.gz.enc")
        assert get.last_request.headers["X-Auth-Token"] == cloud.token

    def test_wrong_status(self, cloud):
        cloud.mock.get(self.url(cloud), json=_backup("BUILDING"))
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value) == (
            f"database backup '{BACKUP_ID}' is in status 'BUILDING', "
            "expected 'COMPLETED'"
        )

    def test_failed_ends_the_wait(self, cloud, fake_clock):
        cloud.mock.get(
            self.url(cloud),
            [{"json": _backup("BUILDING")}, {"json": _backup("FAILED")}],
        )
        with pytest.raises(ActionException, match="'FAILED', expected"):
            backups.AssertStatus(BACKUP_ID, timeout=900, interval=30).run(
                cloud.context()
            )
        assert fake_clock == [30]

    def test_not_found(self, cloud):
        cloud.fault(
            "GET",
            self.url(cloud),
            404,
            "itemNotFound",
            f"Backup {BACKUP_ID} cannot be found.",
        )
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value) == f"database backup '{BACKUP_ID}' not found"

    def test_api_error(self, cloud):
        cloud.fault(
            "GET",
            self.url(cloud),
            500,
            "internalServerError",
            "The server has either erred or is incapable of performing the "
            "requested operation.",
        )
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value).startswith(
            f"database backup '{BACKUP_ID}': HTTP 500 from GET "
        )


class TestCreate:
    def url(self, cloud):
        return f"{cloud.database}/backups"

    def test_full_backup(self, cloud):
        post = cloud.mock.post(
            self.url(cloud), status_code=202, json=_backup("NEW")
        )
        result = backups.Create(INSTANCE_ID, "db-nightly").run(cloud.context())
        assert post.last_request.json() == {
            "backup": {"name": "db-nightly", "instance": INSTANCE_ID}
        }
        assert result["id"] == BACKUP_ID
        assert result["status"] == "NEW"
        assert json.loads(json.dumps(result)) == result  # storable result

    def test_incremental_with_all_options(self, cloud):
        parent = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
        post = cloud.mock.post(
            self.url(cloud),
            status_code=202,
            json=_backup("NEW", parent_id=parent),
        )
        result = backups.Create(
            INSTANCE_ID,
            "db-hourly",
            description="hourly",
            incremental=True,
            parent_id=parent,
            container="db-backups",
        ).run(cloud.context())
        assert post.last_request.json() == {
            "backup": {
                "name": "db-hourly",
                "instance": INSTANCE_ID,
                "description": "hourly",
                "incremental": 1,
                "parent_id": parent,
                "swift_container": "db-backups",
            }
        }
        assert result["parent_id"] == parent

    def test_instance_not_found(self, cloud):
        cloud.fault(
            "POST",
            self.url(cloud),
            404,
            "itemNotFound",
            f"Instance {INSTANCE_ID} cannot be found.",
        )
        with pytest.raises(ActionException) as exc:
            backups.Create(INSTANCE_ID, "x").run(cloud.context())
        assert str(exc.value) == (
            f"database instance '{INSTANCE_ID}' not found"
        )

    def test_api_error(self, cloud):
        cloud.fault(
            "POST",
            self.url(cloud),
            422,
            "unprocessableEntity",
            "Instance is not currently available for an action to be "
            "performed (status was BACKUP).",
        )
        with pytest.raises(ActionException) as exc:
            backups.Create(INSTANCE_ID, "x").run(cloud.context())
        assert "HTTP 422" in str(exc.value)
        assert "status was BACKUP" in str(exc.value)
