"""Tests for actions/examples/notify.py, the example of hotload.sdk.

requests-mock stands in for Keystone, Cinder and the web hook (see
conftest.py). Mistral is not installed here, so ``std.http`` is served by
a mistral-lib provider of :class:`Http`, which has the input and result
of Mistral's (the parts the example uses); run_action() asks it through
:func:`hotload.sdk.set_providers`, as it asks Mistral's providers in an
executor.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from mistral_lib import actions as ml_actions
from mistral_lib.exceptions import ActionException

from hotload import sdk
from hotload_actions.examples import notify

VOLUME_ID = "5aa119a8-d25b-45a7-8d1b-88e127885635"
HOOK = "https://chat.example.com/hooks/storage"


class Http(ml_actions.Action):
    """Stands in for Mistral's std.http (same input, same result keys)."""

    def __init__(
        self,
        url: str,
        method: str = "GET",
        json: Any = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.method = method
        self.json = json
        self.timeout = timeout

    def run(self, context: Any) -> dict[str, Any]:
        try:
            resp = requests.request(
                self.method, self.url, json=self.json, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ActionException(
                f"Failed to send HTTP request: {exc}"
            ) from exc
        return {"status": resp.status_code, "reason": resp.reason}


class Std(ml_actions.ActionProvider):
    def __init__(self) -> None:
        super().__init__("legacy")
        self.http = ml_actions.PythonActionDescriptor("std.http", Http)

    def find(self, action_name, namespace=None):
        return self.http if action_name == "std.http" else None

    def find_all(self, *args, **kwargs):
        return [self.http]


@pytest.fixture(autouse=True)
def std_http():
    previous = sdk.set_providers([Std()])
    yield
    sdk.set_providers(previous)


def test_the_report_is_posted(cloud, volume_body):
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID, "in-use"),
    )
    hook = cloud.mock.post(HOOK, status_code=204)

    result = notify.VolumeStatus(VOLUME_ID, HOOK).run(cloud.context())

    report = {"id": VOLUME_ID, "name": "data", "status": "in-use",
              "size": 10}
    assert result == {"report": report, "status_code": 204}
    (posted,) = hook.request_history
    assert json.loads(posted.body) == report
    # The hook never sees the workflow's token.
    assert cloud.token not in str(posted.headers)


def test_an_error_status_fails_the_action(cloud, volume_body):
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )
    cloud.mock.post(HOOK, status_code=403, reason="Forbidden")
    with pytest.raises(ActionException, match="answered HTTP 403 to the "
                       "report on volume .* Forbidden"):
        notify.VolumeStatus(VOLUME_ID, HOOK).run(cloud.context())


def test_a_failure_of_std_http_fails_the_action_with_its_error(
    cloud, volume_body
):
    cloud.mock.get(
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        json=volume_body(VOLUME_ID),
    )
    cloud.mock.post(HOOK, exc=requests.ConnectionError("refused"))
    with pytest.raises(sdk.InnerActionError) as failed:
        notify.VolumeStatus(VOLUME_ID, HOOK).run(cloud.context())
    assert str(failed.value) == (
        "action std.http failed: Failed to send HTTP request: refused"
    )


def test_a_missing_volume_is_named(cloud):
    cloud.fault(
        "GET",
        f"{cloud.block_storage}/volumes/{VOLUME_ID}",
        404,
        "itemNotFound",
        f"Volume {VOLUME_ID} could not be found.",
    )
    with pytest.raises(ActionException, match=f"volume '{VOLUME_ID}' not"):
        notify.VolumeStatus(VOLUME_ID, HOOK).run(cloud.context())
