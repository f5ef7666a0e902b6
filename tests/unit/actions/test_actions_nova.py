"""Tests for the Nova actions.

No OpenStack cloud is reachable here: requests-mock stands in for Keystone
and Nova (see conftest.py); bodies are shaped like Nova v2.1 responses.
"""

from __future__ import annotations

import json

import pytest
from mistral_lib.exceptions import ActionException

from hotload_actions.nova import servers

SERVER_ID = "ef7ee146-1c27-448f-b948-d8821c59ec51"


def _server(status: str = "ACTIVE", power_state: int | None = 1) -> dict:
    body = {
        "id": SERVER_ID,
        "name": "web-1",
        "status": status,
        "tenant_id": "0c4e939acacf4376bdcd1129f1a054ad",
        "user_id": "9a8b7c6d5e4f40a1b2c3d4e5f6a7b8c9",
        "created": "2024-05-01T10:00:00Z",
        "updated": "2024-05-01T10:01:00Z",
        "hostId": "3a5bd1b4f6e1a2f4c6b0e8f1d1f2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        "addresses": {
            "private": [
                {
                    "addr": "10.0.0.5",
                    "version": 4,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:4c:2c:30",
                }
            ]
        },
        "flavor": {
            "original_name": "m1.small",
            "vcpus": 1,
            "ram": 2048,
            "disk": 20,
            "ephemeral": 0,
            "swap": 0,
            "extra_specs": {},
        },
        "image": {"id": "b2173dd3-7ad6-4362-baa6-a68bce3565cb"},
        "metadata": {},
        "OS-EXT-STS:task_state": None,
        "OS-EXT-STS:vm_state": {"ACTIVE": "active", "SHUTOFF": "stopped"}.get(
            status, status.lower()
        ),
        "OS-EXT-AZ:availability_zone": "nova",
        "locked": False,
        "tags": [],
        "links": [],
    }
    if power_state is not None:
        body["OS-EXT-STS:power_state"] = power_state
    return {"server": body}


def _url(cloud):
    return f"{cloud.compute}/servers/{SERVER_ID}"


def _not_found(cloud):
    return cloud.fault(
        "GET",
        _url(cloud),
        404,
        "itemNotFound",
        f"Instance {SERVER_ID} could not be found.",
    )


class TestAssertStatus:
    def test_matches(self, cloud):
        cloud.mock.get(_url(cloud), json=_server())
        result = servers.AssertStatus(SERVER_ID).run(cloud.context())
        assert result["id"] == SERVER_ID
        assert result["status"] == "ACTIVE"
        assert json.loads(json.dumps(result)) == result  # storable result

    def test_wrong_status(self, cloud):
        cloud.mock.get(_url(cloud), json=_server("SHUTOFF", 4))
        with pytest.raises(ActionException) as exc:
            servers.AssertStatus(SERVER_ID).run(cloud.context())
        assert str(exc.value) == (
            f"server '{SERVER_ID}' is in status 'SHUTOFF', expected 'ACTIVE'"
        )

    def test_waits_for_status(self, cloud, fake_clock):
        cloud.mock.get(
            _url(cloud),
            [
                {"json": _server("SHUTOFF", 4)},
                {"json": _server("ACTIVE", 1)},
            ],
        )
        result = servers.AssertStatus(SERVER_ID, timeout=60).run(
            cloud.context()
        )
        assert result["status"] == "ACTIVE"
        assert fake_clock == [5]

    def test_error_ends_the_wait(self, cloud, fake_clock):
        cloud.mock.get(_url(cloud), json=_server("ERROR", 0))
        with pytest.raises(ActionException, match="'ERROR', expected"):
            servers.AssertStatus(SERVER_ID, timeout=60).run(cloud.context())
        assert fake_clock == []

    def test_not_found(self, cloud):
        _not_found(cloud)
        with pytest.raises(ActionException) as exc:
            servers.AssertStatus(SERVER_ID).run(cloud.context())
        assert str(exc.value) == f"server '{SERVER_ID}' not found"

    def test_api_error(self, cloud):
        cloud.fault(
            "GET",
            _url(cloud),
            403,
            "forbidden",
            "Policy doesn't allow os_compute_api:servers:show to be "
            "performed.",
        )
        with pytest.raises(ActionException) as exc:
            servers.AssertStatus(SERVER_ID).run(cloud.context())
        assert str(exc.value).startswith(f"server '{SERVER_ID}': HTTP 403 ")
        assert "Policy doesn't allow" in str(exc.value)


class TestGetStatus:
    def test_returns_the_states(self, cloud):
        cloud.mock.get(_url(cloud), json=_server("SHUTOFF", 4))
        assert servers.GetStatus(SERVER_ID).run(cloud.context()) == {
            "id": SERVER_ID,
            "name": "web-1",
            "status": "SHUTOFF",
            "power_state": "SHUTDOWN",
            "task_state": None,
            "vm_state": "stopped",
        }

    def test_power_state_not_reported(self, cloud):
        cloud.mock.get(_url(cloud), json=_server(power_state=None))
        result = servers.GetStatus(SERVER_ID).run(cloud.context())
        assert result["power_state"] is None

    def test_not_found(self, cloud):
        _not_found(cloud)
        with pytest.raises(ActionException, match="not found"):
            servers.GetStatus(SERVER_ID).run(cloud.context())

    def test_api_error(self, cloud):
        cloud.fail("GET", _url(cloud), 502, "Bad Gateway")
        with pytest.raises(ActionException, match="HTTP 502"):
            servers.GetStatus(SERVER_ID).run(cloud.context())


class TestAssertPowerStatus:
    @pytest.mark.parametrize("wanted", ["RUNNING", "running", 1, "1"])
    def test_matches(self, cloud, wanted):
        cloud.mock.get(_url(cloud), json=_server())
        result = servers.AssertPowerStatus(SERVER_ID, wanted).run(
            cloud.context()
        )
        assert result["power_state"] == 1

    def test_wrong_power_state(self, cloud):
        cloud.mock.get(_url(cloud), json=_server("SHUTOFF", 4))
        with pytest.raises(ActionException) as exc:
            servers.AssertPowerStatus(SERVER_ID).run(cloud.context())
        assert str(exc.value) == (
            f"server '{SERVER_ID}' is in power state 'SHUTDOWN', "
            "expected 'RUNNING'"
        )

    def test_waits_for_power_state(self, cloud, fake_clock):
        cloud.mock.get(
            _url(cloud),
            [
                {"json": _server("ACTIVE", 1)},
                {"json": _server("ACTIVE", 1)},
                {"json": _server("SHUTOFF", 4)},
            ],
        )
        servers.AssertPowerStatus(
            SERVER_ID, "SHUTDOWN", timeout=30, interval=3
        ).run(cloud.context())
        assert fake_clock == [3, 3]

    def test_power_state_not_reported(self, cloud):
        cloud.mock.get(_url(cloud), json=_server(power_state=None))
        with pytest.raises(ActionException) as exc:
            servers.AssertPowerStatus(SERVER_ID).run(cloud.context())
        assert str(exc.value) == (
            f"server '{SERVER_ID}' reports no power state, expected 'RUNNING'"
        )

    def test_unknown_power_state_is_refused_before_any_request(self, cloud):
        with pytest.raises(ActionException, match="unknown power state"):
            servers.AssertPowerStatus(SERVER_ID, "ASLEEP").run(cloud.context())
        assert not cloud.mock.request_history

    def test_not_found(self, cloud):
        _not_found(cloud)
        with pytest.raises(ActionException, match="not found"):
            servers.AssertPowerStatus(SERVER_ID).run(cloud.context())


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "NOSTATE"), (1, "RUNNING"), (4, "SHUTDOWN"), (2, "UNKNOWN(2)")],
)
def test_power_state_name(code, name):
    assert servers.power_state_name(code) == name
