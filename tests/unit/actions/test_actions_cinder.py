"""Tests for the Cinder actions (volumes, snapshots, backups).

No OpenStack cloud is reachable here: requests-mock stands in for Keystone
and Cinder (see conftest.py); the bodies are shaped like Cinder v3 API
responses, including its error bodies.
"""

from __future__ import annotations

import json
import types

import pytest
from mistral_lib.exceptions import ActionException

from hotload_actions.cinder import backups
from hotload_actions.cinder import snapshots
from hotload_actions.cinder import volumes

VOLUME_ID = "5aa119a8-d25b-45a7-8d1b-88e127885635"
OTHER_VOLUME_ID = "b5a1b9c2-3d4e-4f5a-8b6c-7d8e9f0a1b2c"
SNAPSHOT_ID = "2bb856e1-b3d8-4432-a858-09e4ce939389"
BACKUP_ID = "6ff3d0b4-9a46-4b34-a5cf-2a35d0e6a3c1"


SERVER_ERROR = (
    "The server has either erred or is incapable of performing the "
    "requested operation."
)


def _not_found(cloud, method: str, url: str, kind: str, ident: str):
    return cloud.fault(
        method, url, 404, "itemNotFound", f"{kind} {ident} could not be found."
    )


def _snapshot(status: str) -> dict:
    return {
        "snapshot": {
            "id": SNAPSHOT_ID,
            "name": "snap-1",
            "description": None,
            "status": status,
            "size": 10,
            "volume_id": VOLUME_ID,
            "created_at": "2024-05-01T11:00:00.000000",
            "updated_at": None,
            "metadata": {},
        }
    }


def _backup(
    backup_id: str = BACKUP_ID,
    *,
    status: str = "available",
    incremental: bool = False,
    created_at: str = "2024-05-01T12:00:00.000000",
    volume_id: str = VOLUME_ID,
    name: str | None = None,
) -> dict:
    return {
        "id": backup_id,
        "name": name or f"backup-{backup_id[:8]}",
        "description": None,
        "status": status,
        "availability_zone": "nova",
        "container": "volumebackups",
        "created_at": created_at,
        "updated_at": created_at,
        "data_timestamp": created_at,
        "fail_reason": None,
        "has_dependent_backups": False,
        "is_incremental": incremental,
        "object_count": 22,
        "size": 10,
        "snapshot_id": None,
        "volume_id": volume_id,
        "links": [],
    }


# --------------------------------------------------------------------------
# volumes.assert_status
# --------------------------------------------------------------------------


class TestVolumeAssertStatus:
    url = f"/volumes/{VOLUME_ID}"

    def test_status_matches(self, cloud, volume_body):
        cloud.mock.get(
            cloud.block_storage + self.url,
            json=volume_body(VOLUME_ID, "in-use"),
        )
        result = volumes.AssertStatus(VOLUME_ID, status="in-use").run(
            cloud.context()
        )
        assert result["id"] == VOLUME_ID
        assert result["status"] == "in-use"

    def test_wrong_status(self, cloud, volume_body):
        cloud.mock.get(
            cloud.block_storage + self.url,
            json=volume_body(VOLUME_ID, "error"),
        )
        with pytest.raises(ActionException) as exc:
            volumes.AssertStatus(VOLUME_ID).run(cloud.context())
        assert str(exc.value) == (
            f"volume '{VOLUME_ID}' is in status 'error', expected 'available'"
        )

    def test_not_found(self, cloud):
        _not_found(
            cloud, "GET", cloud.block_storage + self.url, "Volume", VOLUME_ID
        )
        with pytest.raises(ActionException) as exc:
            volumes.AssertStatus(VOLUME_ID).run(cloud.context())
        assert str(exc.value) == f"volume '{VOLUME_ID}' not found"

    def test_api_error(self, cloud):
        cloud.fault(
            "GET",
            cloud.block_storage + self.url,
            500,
            "computeFault",
            SERVER_ERROR,
        )
        with pytest.raises(ActionException) as exc:
            volumes.AssertStatus(VOLUME_ID).run(cloud.context())
        assert str(exc.value) == (
            f"volume '{VOLUME_ID}': HTTP 500 from GET "
            f"{cloud.block_storage}{self.url}: The server has either erred "
            "or is incapable of performing the requested operation. "
            "(request id req-6c1b4a5e-test)"
        )

    def test_waits_for_status(self, cloud, fake_clock, volume_body):
        cloud.mock.get(
            cloud.block_storage + self.url,
            [
                {"json": volume_body(VOLUME_ID, "creating")},
                {"json": volume_body(VOLUME_ID, "creating")},
                {"json": volume_body(VOLUME_ID, "available")},
            ],
        )
        result = volumes.AssertStatus(VOLUME_ID, timeout=60, interval=2).run(
            cloud.context()
        )
        assert result["status"] == "available"
        assert fake_clock == [2, 2]

    def test_error_status_ends_the_wait(self, cloud, fake_clock, volume_body):
        cloud.mock.get(
            cloud.block_storage + self.url,
            [
                {"json": volume_body(VOLUME_ID, "creating")},
                {"json": volume_body(VOLUME_ID, "error")},
            ],
        )
        with pytest.raises(ActionException, match="'error', expected"):
            volumes.AssertStatus(VOLUME_ID, timeout=600).run(cloud.context())
        assert fake_clock == [5]

    def test_bad_timeout_fails_before_any_request(self, cloud):
        with pytest.raises(ActionException, match="timeout must be >= 0"):
            volumes.AssertStatus(VOLUME_ID, timeout=-1).run(cloud.context())
        assert not cloud.mock.request_history


# --------------------------------------------------------------------------
# snapshots
# --------------------------------------------------------------------------


class TestSnapshots:
    url = f"/snapshots/{SNAPSHOT_ID}"

    def test_assert_status_matches(self, cloud):
        cloud.mock.get(
            cloud.block_storage + self.url, json=_snapshot("available")
        )
        result = snapshots.AssertStatus(SNAPSHOT_ID).run(cloud.context())
        assert result["volume_id"] == VOLUME_ID

    def test_assert_wrong_status(self, cloud):
        cloud.mock.get(
            cloud.block_storage + self.url, json=_snapshot("creating")
        )
        with pytest.raises(ActionException) as exc:
            snapshots.AssertStatus(SNAPSHOT_ID).run(cloud.context())
        assert str(exc.value) == (
            f"volume snapshot '{SNAPSHOT_ID}' is in status 'creating', "
            "expected 'available'"
        )

    def test_assert_not_found(self, cloud):
        _not_found(
            cloud,
            "GET",
            cloud.block_storage + self.url,
            "Snapshot",
            SNAPSHOT_ID,
        )
        with pytest.raises(ActionException, match="snapshot .* not found"):
            snapshots.AssertStatus(SNAPSHOT_ID).run(cloud.context())

    def test_create(self, cloud):
        post = cloud.mock.post(
            cloud.block_storage + "/snapshots",
            status_code=202,
            json=_snapshot("creating"),
        )
        result = snapshots.Create(
            VOLUME_ID, snapshot_name="snap-1", force=True
        ).run(cloud.context())
        assert result["id"] == SNAPSHOT_ID
        assert result["status"] == "creating"
        assert post.last_request.json() == {
            "snapshot": {
                "volume_id": VOLUME_ID,
                "name": "snap-1",
                "force": True,
            }
        }

    def test_create_api_error(self, cloud):
        cloud.fault(
            "POST",
            cloud.block_storage + "/snapshots",
            400,
            "badRequest",
            f"Invalid volume: Volume {VOLUME_ID} status must be available, "
            "but current status is: in-use.",
        )
        with pytest.raises(ActionException) as exc:
            snapshots.Create(VOLUME_ID).run(cloud.context())
        assert str(exc.value).startswith(
            f"snapshot of volume '{VOLUME_ID}': HTTP 400 from POST "
        )
        assert str(exc.value).endswith(
            "current status is: in-use. (request id req-6c1b4a5e-test)"
        )


# --------------------------------------------------------------------------
# backups.assert_status
# --------------------------------------------------------------------------


class TestBackupAssertStatus:
    url = f"/backups/{BACKUP_ID}"

    def test_matches(self, cloud):
        cloud.mock.get(
            cloud.block_storage + self.url, json={"backup": _backup()}
        )
        result = backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert result["status"] == "available"

    def test_wrong_status(self, cloud):
        cloud.mock.get(
            cloud.block_storage + self.url,
            json={"backup": _backup(status="creating")},
        )
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value) == (
            f"volume backup '{BACKUP_ID}' is in status 'creating', "
            "expected 'available'"
        )

    def test_not_found(self, cloud):
        _not_found(
            cloud, "GET", cloud.block_storage + self.url, "Backup", BACKUP_ID
        )
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value) == f"volume backup '{BACKUP_ID}' not found"

    def test_api_error(self, cloud):
        cloud.fail("GET", cloud.block_storage + self.url, 503, "busy")
        with pytest.raises(ActionException) as exc:
            backups.AssertStatus(BACKUP_ID).run(cloud.context())
        assert str(exc.value).startswith(
            f"volume backup '{BACKUP_ID}': HTTP 503 from GET "
        )


# --------------------------------------------------------------------------
# backups.create and the chain rule
# --------------------------------------------------------------------------


def _chain(length: int, *, start_full: bool = True) -> list[dict]:
    """``length`` available backups of the volume, oldest first, one hour
    apart: a full one followed by incrementals."""
    return [
        _backup(
            f"{i:08d}-0000-4000-8000-000000000000",
            incremental=not (start_full and i == 0),
            created_at=f"2024-05-0{1 + i // 24}T{i % 24:02d}:00:00.000000",
        )
        for i in range(length)
    ]


class _Cinder:
    """Routes for listing the volume's backups and creating one."""

    def __init__(self, cloud, existing: list[dict]):
        self.list = cloud.mock.get(
            cloud.block_storage + "/backups/detail",
            json={"backups": list(reversed(existing))},  # newest first
        )
        self.create = cloud.mock.post(
            cloud.block_storage + "/backups",
            status_code=202,
            json={
                "backup": {
                    "id": "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f",
                    "name": "nightly",
                    "links": [],
                }
            },
        )

    @property
    def sent(self) -> dict:
        return self.create.last_request.json()["backup"]


@pytest.mark.parametrize(
    ("existing", "incremental", "length"),
    [(0, False, 1), (1, True, 2), (4, True, 5), (5, False, 1), (6, False, 1)],
)
def test_create_chain_lengths(cloud, existing, incremental, length):
    """max_chain_length=5 (default): a full backup plus at most four
    incrementals; the sixth backup starts a new chain."""
    cinder = _Cinder(cloud, _chain(existing))

    result = backups.Create(VOLUME_ID, "nightly").run(cloud.context())

    assert cinder.sent == {
        "volume_id": VOLUME_ID,
        "name": "nightly",
        "incremental": incremental,
        "force": True,
    }
    assert result["id"] == "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"
    assert result["is_incremental"] is incremental
    assert result["chain"]["length"] == length
    assert json.loads(json.dumps(result)) == result  # storable result
    assert cinder.list.last_request.qs == {"volume_id": [VOLUME_ID]}


def test_create_keeps_seed_parameters(cloud):
    cinder = _Cinder(cloud, _chain(2))
    backups.Create(
        VOLUME_ID,
        "nightly",
        snapshot_id=SNAPSHOT_ID,
        description="Created by mistral",
        container="backups-a",
        force=False,
    ).run(cloud.context())
    assert cinder.sent == {
        "volume_id": VOLUME_ID,
        "name": "nightly",
        "snapshot_id": SNAPSHOT_ID,
        "description": "Created by mistral",
        "container": "backups-a",
        "incremental": True,
        "force": False,
    }


def test_create_full_when_incremental_is_false(cloud):
    cinder = _Cinder(cloud, _chain(1))
    result = backups.Create(VOLUME_ID, "nightly", incremental=False).run(
        cloud.context()
    )
    assert cinder.sent["incremental"] is False
    assert cinder.list.call_count == 0
    assert result["chain"] == {"length": 1, "reason": "incremental is false"}


@pytest.mark.parametrize(
    ("max_length", "incremental"), [(1, False), (3, False), (4, True)]
)
def test_create_custom_max_chain_length(cloud, max_length, incremental):
    cinder = _Cinder(cloud, _chain(3))
    backups.Create(VOLUME_ID, "nightly", max_chain_length=max_length).run(
        cloud.context()
    )
    assert cinder.sent["incremental"] is incremental


@pytest.mark.parametrize("bad", [0, -2, "five", None, True, 2.5])
def test_create_rejects_bad_max_chain_length(cloud, bad):
    with pytest.raises(ActionException, match="max_chain_length"):
        backups.Create(VOLUME_ID, "nightly", max_chain_length=bad).run(
            cloud.context()
        )
    assert not cloud.mock.request_history


def test_create_counts_backups_made_by_hand(cloud):
    """Incrementals made outside this action (by hand, another tool) are in
    the same chain on disk, so they count: F(ours) I(hand) I I(hand) I."""
    existing = _chain(5)
    existing[1]["name"] = existing[3]["name"] = "manual"
    cinder = _Cinder(cloud, existing)
    backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is False


def test_create_full_backup_made_by_hand_starts_a_new_chain(cloud):
    """F I I I I then a full backup made by hand: the chain is 1 long."""
    existing = _chain(5) + [
        _backup(
            "a0000000-0000-4000-8000-000000000000",
            name="manual full",
            created_at="2024-05-02T09:00:00.000000",
        )
    ]
    cinder = _Cinder(cloud, existing)
    result = backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is True
    assert result["chain"]["length"] == 2
    assert "a0000000" in result["chain"]["reason"]


def test_create_orders_by_created_at_not_listing_order(cloud):
    """Cinder's listing order is not trusted: an old full backup listed
    last does not reset the chain."""
    existing = _chain(5)
    cloud.mock.get(
        cloud.block_storage + "/backups/detail",
        json={"backups": existing[1:] + existing[:1]},
    )
    cinder = _Cinder.__new__(_Cinder)
    cinder.create = cloud.mock.post(
        cloud.block_storage + "/backups",
        status_code=202,
        json={"backup": {"id": "x", "name": "nightly", "links": []}},
    )
    backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is False


def test_create_full_when_newest_backup_failed(cloud):
    """Cinder bases an incremental on the newest backup and refuses when it
    is not available: make a full backup instead."""
    existing = _chain(2) + [
        _backup(
            "e0000000-0000-4000-8000-000000000000",
            status="error",
            incremental=True,
            created_at="2024-05-03T00:00:00.000000",
        )
    ]
    cinder = _Cinder(cloud, existing)
    result = backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is False
    assert "'error'" in result["chain"]["reason"]


def test_create_skips_failed_backups_inside_the_chain(cloud):
    existing = _chain(4)
    existing[2]["status"] = "error"
    cinder = _Cinder(cloud, existing)
    result = backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is True
    assert result["chain"]["length"] == 4


def test_create_ignores_other_volumes_backups(cloud):
    """Should the volume_id filter be ignored by an old Cinder, backups of
    other volumes still do not count."""
    existing = _chain(1) + [
        _backup(
            f"c{i}000000-0000-4000-8000-000000000000",
            volume_id=OTHER_VOLUME_ID,
            incremental=True,
            created_at=f"2024-05-03T0{i}:00:00.000000",
        )
        for i in range(6)
    ]
    cinder = _Cinder(cloud, existing)
    result = backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert cinder.sent["incremental"] is True
    assert result["chain"]["length"] == 2


def test_create_api_error_on_create(cloud):
    _Cinder(cloud, _chain(1))
    cloud.fault(
        "POST",
        cloud.block_storage + "/backups",
        400,
        "badRequest",
        "Invalid volume: Volume to be backed up must be available or in-use, "
        'but the current status is "backing-up".',
    )
    with pytest.raises(ActionException) as exc:
        backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert str(exc.value).startswith(
        f"backup of volume '{VOLUME_ID}': HTTP 400 from POST "
    )
    assert 'current status is "backing-up".' in str(exc.value)


def test_create_volume_not_found(cloud):
    cloud.mock.get(
        cloud.block_storage + "/backups/detail", json={"backups": []}
    )
    _not_found(
        cloud, "POST", cloud.block_storage + "/backups", "Volume", VOLUME_ID
    )
    with pytest.raises(ActionException) as exc:
        backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert str(exc.value) == f"backup of volume '{VOLUME_ID}' not found"


def test_create_api_error_on_listing(cloud):
    cloud.fault(
        "GET",
        cloud.block_storage + "/backups/detail",
        500,
        "computeFault",
        SERVER_ERROR,
    )
    post = cloud.mock.post(cloud.block_storage + "/backups", status_code=202)
    with pytest.raises(ActionException, match="backups of volume"):
        backups.Create(VOLUME_ID, "nightly").run(cloud.context())
    assert post.call_count == 0


# plan_backup() on its own, with plain objects


def _b(ident, status="available", incremental=True, hour=0):
    return types.SimpleNamespace(
        id=ident,
        status=status,
        is_incremental=incremental,
        created_at=f"2024-05-01T{hour:02d}:00:00Z",
    )


def test_plan_unknown_incremental_flag_counts_as_incremental():
    plan = backups.plan_backup(
        [
            _b("f", incremental=False, hour=1),
            _b("x", incremental=None, hour=2),
        ],
        3,
    )
    assert (plan.incremental, plan.length) == (True, 3)


def test_plan_without_any_full_backup_counts_everything():
    plan = backups.plan_backup([_b(str(i), hour=i) for i in range(5)], 5)
    assert plan.incremental is False


def test_plan_mixes_naive_and_aware_timestamps():
    older = _b("full", incremental=False, hour=1)
    newer = types.SimpleNamespace(
        id="inc",
        status="available",
        is_incremental=True,
        created_at="2024-05-01T02:00:00.000000",
    )
    plan = backups.plan_backup([newer, older], 5)
    assert (plan.incremental, plan.length) == (True, 3)
