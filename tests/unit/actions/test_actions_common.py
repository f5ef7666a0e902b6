"""Tests for actions/common.py: connection from the security context, the
error mapping and the check-or-wait loop.

No OpenStack cloud is reachable here: requests-mock stands in for Keystone
and the services (see conftest.py), with realistic response bodies.
"""

from __future__ import annotations

import copy
import logging
import types

import openstack.exceptions
import pytest
from keystoneauth1 import exceptions as ks_exceptions
from mistral_lib.exceptions import ActionException
from mistral_lib.utils import inspect_utils
from oslo_config import cfg

from hotload_actions import common

VOLUME_ID = "5aa119a8-d25b-45a7-8d1b-88e127885635"


def _get_volume(context):
    with common.connect(context) as conn:
        return conn.block_storage.get_volume(VOLUME_ID)


# --------------------------------------------------------------------------
# connect()
# --------------------------------------------------------------------------


def test_connect_validates_token_when_context_has_no_catalog(
    cloud, volume_body
):
    """No catalog in the context: one GET /v3/auth/tokens for the token
    itself (no new token is issued), then the service is called with the
    workflow's token."""
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )

    volume = _get_volume(cloud.context())

    assert volume.status == "available"
    keystone = cloud.calls(prefix=cloud.auth_url)
    assert [(r.method, r.path) for r in keystone] == [
        ("GET", "/v3/auth/tokens")
    ]
    assert keystone[0].headers["X-Auth-Token"] == cloud.token
    assert keystone[0].headers["X-Subject-Token"] == cloud.token
    assert not cloud.calls("POST")
    (call,) = cloud.calls(prefix=f"{cloud.block_storage}/volumes")
    assert call.headers["X-Auth-Token"] == cloud.token


@pytest.mark.parametrize(
    "shape",
    ["inner-token", "whole-response", "catalog-list"],
)
def test_connect_uses_catalog_from_context_without_keystone(
    cloud, shape, volume_body
):
    """A catalog in the context (as Mistral stores it, or wrapped, or a
    bare list) is used as is: Keystone is not called at all."""
    data = copy.deepcopy(cloud.token_data)
    catalog = {
        "inner-token": data,
        "whole-response": {"token": data},
        "catalog-list": data["catalog"],
    }[shape]
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )

    volume = _get_volume(cloud.context(service_catalog=catalog))

    assert volume.id == VOLUME_ID
    assert cloud.keystone.call_count == 0
    (call,) = cloud.calls(prefix=f"{cloud.block_storage}/volumes")
    assert call.headers["X-Auth-Token"] == cloud.token


def test_connect_picks_the_context_region(cloud, volume_body):
    """Endpoints are chosen for region_name of the context."""
    data = copy.deepcopy(cloud.token_data)
    other = "https://block-storage.region-two.example.com/v3/" + (
        cloud.project_id
    )
    for service in data["catalog"]:
        if service["type"] == "volumev3":
            for endpoint in list(service["endpoints"]):
                service["endpoints"].append(
                    dict(endpoint, region="RegionTwo", region_id="RegionTwo")
                )
                service["endpoints"][-1]["url"] = other
    cloud.mock.get(
        "https://block-storage.region-two.example.com/v3/",
        json={"versions": []},
    )
    cloud.mock.get(
        f"{other}/volumes/{VOLUME_ID}", json=volume_body(VOLUME_ID, "in-use")
    )

    volume = _get_volume(
        cloud.context(service_catalog=data, region_name="RegionTwo")
    )

    assert volume.status == "in-use"
    assert not cloud.calls(prefix=cloud.block_storage)


def test_connect_without_token_fails_clearly():
    context = types.SimpleNamespace(security=None)
    with pytest.raises(ActionException, match="no auth token"):
        common.connect(context)


def test_connect_without_catalog_or_keystone_url_fails(cloud, monkeypatch):
    monkeypatch.setattr(common, "_mistral_auth_uri", lambda: None)
    with pytest.raises(ActionException, match="neither a service catalog"):
        common.connect(cloud.context(auth_uri=None))
    assert not cloud.mock.request_history


@pytest.mark.parametrize("status", [401, 404])
def test_connect_reports_a_rejected_token(cloud, status):
    """Keystone answers 401/404 for an expired or revoked token."""
    cloud.mock.get(
        f"{cloud.auth_url}/auth/tokens",
        status_code=status,
        json={
            "error": {
                "code": status,
                "title": "Not Found" if status == 404 else "Unauthorized",
                "message": "The request you have made requires "
                "authentication.",
            }
        },
    )
    with pytest.raises(ActionException) as exc:
        common.connect(cloud.context())
    assert str(exc.value) == (
        f"Keystone at {cloud.auth_url} refused the workflow's token "
        f"(HTTP {status}); it may have expired or been revoked"
    )


def test_connect_reports_a_keystone_failure(cloud):
    cloud.mock.get(f"{cloud.auth_url}/auth/tokens", status_code=503)
    with pytest.raises(ActionException) as exc:
        common.connect(cloud.context())
    assert str(exc.value) == (
        f"Keystone at {cloud.auth_url} answered HTTP 503 when validating "
        "the workflow's token"
    )


def test_connect_reports_unreachable_keystone(cloud):
    cloud.mock.get(
        f"{cloud.auth_url}/auth/tokens",
        exc=ks_exceptions.ConnectFailure("Connection refused"),
    )
    with pytest.raises(ActionException, match="cannot reach Keystone"):
        common.connect(cloud.context())


def test_trust_context_falls_back_to_mistral_keystone_url(
    cloud, monkeypatch, volume_body
):
    """Cron-trigger contexts have no auth_uri: Mistral's own
    [keystone_authtoken] www_authenticate_uri is used."""
    conf = cfg.ConfigOpts()
    conf.register_opt(
        cfg.StrOpt("www_authenticate_uri"), group="keystone_authtoken"
    )
    conf([], project="test")
    conf.set_override(
        "www_authenticate_uri",
        "https://identity.example.com",
        group="keystone_authtoken",
    )
    monkeypatch.setattr(cfg, "CONF", conf)
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )

    volume = _get_volume(
        cloud.context(auth_uri=None, is_trust_scoped=True, trust_id="t-1")
    )

    assert volume.id == VOLUME_ID
    assert cloud.keystone.call_count == 1


def test_mistral_keystone_url_absent_outside_mistral(monkeypatch):
    monkeypatch.setattr(cfg, "CONF", cfg.ConfigOpts())
    assert common._mistral_auth_uri() is None


def test_token_is_never_logged(cloud, caplog, volume_body):
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )
    with caplog.at_level(logging.DEBUG):
        _get_volume(cloud.context())
    assert "auth/tokens" in caplog.text  # keystoneauth did log the requests
    assert cloud.token not in caplog.text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://id.example.com", "https://id.example.com/v3"),
        ("https://id.example.com/", "https://id.example.com/v3"),
        ("https://id.example.com/v3", "https://id.example.com/v3"),
        (
            "https://id.example.com/identity/v3/",
            "https://id.example.com/identity/v3",
        ),
    ],
)
def test_v3_url(url, expected):
    assert common.v3_url(url) == expected


@pytest.mark.parametrize(
    ("insecure", "cacert", "expected"),
    [
        (False, None, True),
        (None, None, True),
        (True, "/etc/ssl/ca.pem", False),
        ("True", None, False),
        (False, "/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
    ],
)
def test_verify_setting(insecure, cacert, expected):
    sec = types.SimpleNamespace(insecure=insecure, auth_cacert=cacert)
    assert common.verify_setting(sec) == expected


def test_token_body_fills_project_from_context():
    sec = types.SimpleNamespace(
        service_catalog=[{"type": "compute", "endpoints": []}],
        project_id="p-1",
        project_name="demo",
    )
    body = common.token_body(sec)
    assert body["token"]["project"] == {"id": "p-1", "name": "demo"}


@pytest.mark.parametrize("catalog", [None, {}, [], {"catalog": []}, "x"])
def test_token_body_ignores_unusable_catalogs(catalog):
    sec = types.SimpleNamespace(service_catalog=catalog, project_id="p")
    assert common.token_body(sec) is None


# --------------------------------------------------------------------------
# api_errors()
# --------------------------------------------------------------------------


def test_api_errors_not_found():
    with pytest.raises(ActionException, match="volume 'v-1' not found"):
        with common.api_errors("volume", "v-1"):
            raise openstack.exceptions.NotFoundException("404")


def test_api_errors_other_sdk_and_keystone_errors():
    with pytest.raises(ActionException, match="volume 'v-1': boom"):
        with common.api_errors("volume", "v-1"):
            raise openstack.exceptions.SDKException("boom")
    with pytest.raises(ActionException, match="^image list: .*catalog"):
        with common.api_errors("image list"):
            raise ks_exceptions.EndpointNotFound("no image in the catalog")


def test_api_errors_leaves_other_exceptions_alone():
    with pytest.raises(KeyError):
        with common.api_errors("volume", "v-1"):
            raise KeyError("x")


# --------------------------------------------------------------------------
# wait_for_status()
# --------------------------------------------------------------------------


class _Sequence:
    """fetch() returning resources with the given statuses, in order."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self):
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        if isinstance(status, Exception):
            raise status
        return types.SimpleNamespace(id="r-1", status=status)


def _wait(fetch, **kwargs):
    kwargs.setdefault("resource_type", "volume")
    kwargs.setdefault("resource_id", "r-1")
    kwargs.setdefault("expected", "available")
    return common.wait_for_status(fetch, **kwargs)


def test_wait_checks_once_by_default(fake_clock):
    fetch = _Sequence("creating", "available")
    with pytest.raises(ActionException) as exc:
        _wait(fetch)
    assert str(exc.value) == (
        "volume 'r-1' is in status 'creating', expected 'available'"
    )
    assert fetch.calls == 1
    assert fake_clock == []


def test_wait_returns_at_once_when_status_matches(fake_clock):
    fetch = _Sequence("AVAILABLE")
    assert _wait(fetch, timeout=60).status == "AVAILABLE"
    assert fetch.calls == 1
    assert fake_clock == []


def test_wait_polls_until_status(fake_clock):
    fetch = _Sequence("creating", "creating", "available")
    resource = _wait(fetch, timeout=60, interval=10)
    assert resource.status == "available"
    assert fetch.calls == 3
    assert fake_clock == [10, 10]


def test_wait_times_out_with_message(fake_clock):
    fetch = _Sequence("creating")
    with pytest.raises(ActionException) as exc:
        _wait(fetch, timeout=25, interval=10)
    assert str(exc.value) == (
        "volume 'r-1' is in status 'creating', expected 'available' "
        "(waited 25s)"
    )
    assert fake_clock == [10, 10, 5]  # never sleeps past the deadline
    assert fetch.calls == 4


def test_wait_stops_on_failure_status(fake_clock):
    fetch = _Sequence("creating", "error", "available")
    with pytest.raises(ActionException, match="status 'error', expected"):
        _wait(fetch, timeout=60, interval=10, failure=("error",))
    assert fetch.calls == 2


def test_wait_for_a_failure_status_is_allowed(fake_clock):
    fetch = _Sequence("error")
    assert _wait(fetch, expected="error", failure=("error",)).status == "error"


def test_wait_reports_not_found(fake_clock):
    fetch = _Sequence("creating", openstack.exceptions.NotFoundException())
    with pytest.raises(ActionException, match="^volume 'r-1' not found$"):
        _wait(fetch, timeout=60)


def test_wait_uses_read_and_attribute_label(fake_clock):
    def fetch():
        return types.SimpleNamespace(power_state=4)

    with pytest.raises(ActionException) as exc:
        _wait(
            fetch,
            resource_type="server",
            expected="RUNNING",
            attribute="power state",
            read=lambda r: {1: "RUNNING", 4: "SHUTDOWN"}[r.power_state],
        )
    assert str(exc.value) == (
        "server 'r-1' is in power state 'SHUTDOWN', expected 'RUNNING'"
    )


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [(-1, 5), (10, 0), (10, -2), ("soon", 5), (10, "often")],
)
def test_wait_rejects_bad_arguments(timeout, interval):
    with pytest.raises(ActionException, match="timeout"):
        _wait(_Sequence("available"), timeout=timeout, interval=interval)


def test_check_wait_args_defaults():
    assert common.check_wait_args(None, None) == (0.0, common.DEFAULT_INTERVAL)
    assert common.check_wait_args("30", "2.5") == (30.0, 2.5)


# --------------------------------------------------------------------------
# StatusAssertion
# --------------------------------------------------------------------------


def test_status_assertion_is_a_base_class():
    """Not exported itself, no public class attributes (the serializer would
    make a dynamic subclass), and a subclass must say how to fetch the
    resource (the daemon reports one without _fetch() as abstract)."""
    base = common.StatusAssertion
    assert base.__dict__["__export__"] is False
    assert inspect_utils.get_public_fields(base) == {}
    assert base._fetch.__isabstractmethod__
