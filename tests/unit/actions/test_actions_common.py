"""Tests for actions/common.py: the error mapping and the check-or-wait
loop. The connection is hotload.sdk's (tests/unit/test_sdk.py); the
curated actions' tests run it against requests-mock (see conftest.py).
"""

from __future__ import annotations

import types

import openstack.exceptions
import pytest
from keystoneauth1 import exceptions as ks_exceptions
from mistral_lib.exceptions import ActionException
from mistral_lib.utils import inspect_utils

from hotload_actions import common

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
