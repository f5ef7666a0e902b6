"""Fixtures for the curated actions' tests.

``actions/`` is not an installed package: the daemon mounts it under a
configurable name. These tests mount it the same way, with importlib only,
as ``hotload_actions``, so ``import hotload_actions.cinder.backups`` works
and the in-tree relative imports (``from .. import common``) resolve.

No OpenStack cloud is reachable from the test environment, so requests-mock
stands in for one, the way openstacksdk's own unit tests do it: Keystone
answers the token validation with a realistic v3 token body and service
catalog, each service answers its version discovery document, and each test
registers the resource responses it needs (bodies shaped like the real
Nova / Cinder / Glance / Trove API responses).
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import pathlib
import sys
import types
from typing import Any

import pytest
import requests_mock
from mistral_lib.actions import context as ml_context

from hotload import _sdk_openstack

PACKAGE = "hotload_actions"
ACTIONS_DIR = pathlib.Path(__file__).resolve().parents[3] / "actions"


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _mount_actions() -> dict[str, types.ModuleType]:
    """Import ``actions/`` as the package ``hotload_actions``.

    :returns: every module of the package, by name, all imported.
    """
    for name in [m for m in sys.modules if _ours(m)]:
        del sys.modules[name]
    init = ACTIONS_DIR / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            PACKAGE, init, submodule_search_locations=[str(ACTIONS_DIR)]
        )
    else:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(ACTIONS_DIR)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
    for path in sorted(ACTIONS_DIR.rglob("*.py")):
        parts = path.relative_to(ACTIONS_DIR).with_suffix("").parts
        parts = tuple(p for p in parts if p != "__init__")
        if parts:
            importlib.import_module(".".join((PACKAGE, *parts)))
    return {name: mod for name, mod in sys.modules.items() if _ours(name)}


_MOUNTED = _mount_actions()


@pytest.fixture(autouse=True)
def _actions_package():
    """Keep ``hotload_actions`` pointing at ``actions/`` during each test.

    The daemon's own tests mount other trees under the same package name
    (and remove them from ``sys.modules`` afterwards); this puts ours back
    for the duration of each test here, and theirs after it.
    """
    saved = {name: mod for name, mod in sys.modules.items() if _ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(_MOUNTED)
    yield
    for name in [m for m in sys.modules if _ours(m)]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture(autouse=True)
def _no_kept_validations():
    """Each test starts with no token validation kept by
    :func:`hotload.sdk.openstack_connection` (a process-wide cache), so
    that what a test registers on its fake Keystone is what answers."""
    _sdk_openstack.VALIDATIONS.clear()
    yield
    _sdk_openstack.VALIDATIONS.clear()


# --------------------------------------------------------------------------
# A fake cloud
# --------------------------------------------------------------------------

TOKEN = "gAAAAABfake-token-for-unit-tests"
PROJECT_ID = "0c4e939acacf4376bdcd1129f1a054ad"
AUTH_URL = "https://identity.example.com/v3"
COMPUTE = "https://compute.example.com/v2.1"
BLOCK_STORAGE = f"https://block-storage.example.com/v3/{PROJECT_ID}"
IMAGE = "https://image.example.com"
DATABASE = f"https://database.example.com/v1.0/{PROJECT_ID}"


def _endpoints(url: str) -> list[dict[str, str]]:
    return [
        {
            "id": f"{iface}-{url.split('/')[2].split('.')[0]}",
            "interface": iface,
            "region": "RegionOne",
            "region_id": "RegionOne",
            "url": url,
        }
        for iface in ("public", "internal", "admin")
    ]


CATALOG = [
    {
        "id": "a0f8c6f1b5e94a8e9c3d2b1a0f8c6f1b",
        "type": "identity",
        "name": "keystone",
        "endpoints": _endpoints("https://identity.example.com"),
    },
    {
        "id": "b1e9d7a2c6f04b9f8d4e3c2b1a0e9d7a",
        "type": "compute",
        "name": "nova",
        "endpoints": _endpoints(COMPUTE),
    },
    {
        "id": "c2fae8b3d7015cae9e5f4d3c2b1fae8b",
        "type": "volumev3",
        "name": "cinderv3",
        "endpoints": _endpoints(BLOCK_STORAGE),
    },
    {
        "id": "d30bf9c4e8126dbfaf605e4d3c20bf9c",
        "type": "image",
        "name": "glance",
        "endpoints": _endpoints(IMAGE),
    },
    {
        "id": "e41c0ad5f9237ec0b0716f5e4d31c0ad",
        "type": "database",
        "name": "trove",
        "endpoints": _endpoints(DATABASE),
    },
]

# The inner "token" of Keystone's GET /v3/auth/tokens response, which is
# also what Mistral stores as the security context's service_catalog.
TOKEN_DATA = {
    "methods": ["password", "token"],
    "user": {
        "id": "9a8b7c6d5e4f40a1b2c3d4e5f6a7b8c9",
        "name": "alice",
        "domain": {"id": "default", "name": "Default"},
        "password_expires_at": None,
    },
    "audit_ids": ["mAjXQhiYRyKwkB4qygdLVg"],
    "expires_at": "2099-01-01T00:00:00.000000Z",
    "issued_at": "2024-05-01T08:00:00.000000Z",
    "project": {
        "id": PROJECT_ID,
        "name": "demo",
        "domain": {"id": "default", "name": "Default"},
    },
    "is_domain": False,
    "roles": [{"id": "3c5e2f0e0d6a4b8c9d1e2f3a4b5c6d7e", "name": "member"}],
    "catalog": CATALOG,
}

CINDER_VERSIONS = {
    "versions": [
        {
            "id": "v3.0",
            "status": "CURRENT",
            "version": "3.70",
            "min_version": "3.0",
            "updated": "2023-08-31T00:00:00Z",
            "links": [
                {
                    "href": "https://docs.openstack.org/",
                    "type": "text/html",
                    "rel": "describedby",
                },
                {
                    "href": "https://block-storage.example.com/v3/",
                    "rel": "self",
                },
            ],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.volume+json;version=3",
                }
            ],
        }
    ]
}

NOVA_VERSION = {
    "version": {
        "id": "v2.1",
        "status": "CURRENT",
        "version": "2.96",
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"href": f"{COMPUTE}/", "rel": "self"}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }
}

GLANCE_VERSIONS = {
    "versions": [
        {
            "id": f"v2.{minor}",
            "status": "CURRENT" if minor == 16 else "SUPPORTED",
            "links": [{"href": f"{IMAGE}/v2/", "rel": "self"}],
        }
        for minor in range(16, -1, -1)
    ]
}


def security_context(**overrides: Any) -> ml_context.SecurityContext:
    """A security context like the one Mistral builds for a user request.

    :param overrides: attributes to change, e.g. ``service_catalog=None``.
    """
    values: dict[str, Any] = {
        "auth_token": TOKEN,
        "auth_uri": AUTH_URL,
        "project_id": PROJECT_ID,
        "project_name": "demo",
        "user_name": "alice",
        "region_name": "RegionOne",
        "insecure": False,
        "auth_cacert": None,
        "service_catalog": None,
    }
    values.update(overrides)
    return ml_context.SecurityContext(**values)


def action_context(**overrides: Any) -> ml_context.ActionContext:
    """An action context (see :func:`security_context`)."""
    return ml_context.ActionContext(
        security_ctx=security_context(**overrides),
        execution_ctx=ml_context.ExecutionContext(
            workflow_execution_id="wf-1", task_execution_id="task-1"
        ),
    )


class FakeCloud:
    """requests-mock routes for Keystone and the four services."""

    token = TOKEN
    project_id = PROJECT_ID
    auth_url = AUTH_URL
    compute = COMPUTE
    block_storage = BLOCK_STORAGE
    image = IMAGE + "/v2"
    database = DATABASE
    token_data = TOKEN_DATA

    def __init__(self, mocker: requests_mock.Mocker) -> None:
        self.mock = mocker
        self.keystone = mocker.get(
            f"{AUTH_URL}/auth/tokens",
            json={"token": copy.deepcopy(TOKEN_DATA)},
            headers={"X-Subject-Token": TOKEN},
        )
        mocker.get(
            "https://block-storage.example.com/v3/", json=CINDER_VERSIONS
        )
        mocker.get(COMPUTE, json=NOVA_VERSION)
        mocker.get(IMAGE + "/", json=GLANCE_VERSIONS, status_code=300)

    def fail(self, method: str, url: str, status: int, body: Any) -> Any:
        """Register an error response the way OpenStack services send them.

        :param method: HTTP method.
        :param url: full URL.
        :param status: HTTP status code.
        :param body: JSON error body (dict) or plain text (str).
        """
        kwargs: dict[str, Any] = {
            "status_code": status,
            "headers": {
                "x-openstack-request-id": "req-6c1b4a5e-test",
                "Content-Type": "application/json"
                if isinstance(body, dict)
                else "text/plain",
            },
        }
        kwargs["json" if isinstance(body, dict) else "text"] = body
        return self.mock.register_uri(method, url, **kwargs)

    def fault(
        self, method: str, url: str, status: int, name: str, message: str
    ) -> Any:
        """Register an error response with the fault body Nova, Cinder and
        Trove send: ``{name: {"code": status, "message": message}}``.

        :param method: HTTP method.
        :param url: full URL.
        :param status: HTTP status code.
        :param name: the fault's name, e.g. ``"itemNotFound"``.
        :param message: the service's message.
        """
        body = {name: {"code": status, "message": message}}
        return self.fail(method, url, status, body)

    def context(self, **overrides: Any) -> ml_context.ActionContext:
        """An action context for this cloud (no catalog: Keystone is asked).

        :param overrides: security context attributes to change.
        """
        return action_context(**overrides)

    def calls(self, method: str | None = None, prefix: str = "") -> list:
        """Requests made so far, optionally by method and URL prefix.

        :param method: e.g. ``"POST"``.
        :param prefix: URL prefix, e.g. ``cloud.block_storage``.
        """
        return [
            r
            for r in self.mock.request_history
            if (method is None or r.method == method)
            and r.url.startswith(prefix)
        ]


@pytest.fixture
def cloud():
    """A fake cloud; register resource responses on ``cloud.mock``."""
    with requests_mock.Mocker() as mocker:
        yield FakeCloud(mocker)


def _volume_body(volume_id: str, status: str = "available") -> dict:
    return {
        "volume": {
            "id": volume_id,
            "name": "data",
            "status": status,
            "size": 10,
            "availability_zone": "nova",
            "bootable": "false",
            "encrypted": False,
            "multiattach": False,
            "created_at": "2024-05-01T10:00:00.000000",
            "updated_at": "2024-05-01T10:00:05.000000",
            "attachments": [],
            "volume_type": "lvmdriver-1",
            "metadata": {},
            "os-vol-tenant-attr:tenant_id": PROJECT_ID,
            "links": [],
        }
    }


@pytest.fixture
def volume_body():
    """Build Cinder's ``GET /volumes/<id>`` response body:
    ``volume_body(volume_id, status="available")``."""
    return _volume_body


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the wait loop's clock and sleep; returns the sleep log."""
    from hotload_actions import common

    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(common, "_clock", lambda: now[0])
    monkeypatch.setattr(common, "_sleep", sleep)
    return slept
