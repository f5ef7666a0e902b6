"""Nova server actions."""

from __future__ import annotations

from typing import Any

from mistral_lib import actions

from hotload import sdk

from .. import common

#: Server statuses from which waiting for another status is pointless.
FAILURE_STATUSES = ("ERROR", "DELETED", "SOFT_DELETED")

#: Nova's power state codes (``OS-EXT-STS:power_state``) and their names.
POWER_STATES = {
    0: "NOSTATE",
    1: "RUNNING",
    3: "PAUSED",
    4: "SHUTDOWN",
    6: "CRASHED",
    7: "SUSPENDED",
}


def power_state_name(code: Any) -> str | None:
    """Return the name of a Nova power state code.

    :param code: the ``OS-EXT-STS:power_state`` value (int), or ``None``
        when Nova does not report it.
    :returns: e.g. ``"RUNNING"``; ``None`` when unknown.
    """
    if code is None:
        return None
    try:
        return POWER_STATES.get(int(code), f"UNKNOWN({code})")
    except (TypeError, ValueError):
        return str(code).upper()


def _get_server(conn: Any, server_id: str) -> Any:
    return conn.compute.get_server(server_id)


class AssertStatus(common.StatusAssertion):
    """Assert a server is in a given status, optionally waiting for it.

    Fails with the server's id, its actual and the expected status. With
    ``timeout`` > 0 the server is checked every ``interval`` seconds until
    it reaches the status; ``ERROR`` or ``DELETED`` fails at once.

    :param server_id: ID of the server.
    :param status: expected status, e.g. ``ACTIVE``, ``SHUTOFF``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "server"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        server_id: str,
        status: str = "ACTIVE",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(server_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return _get_server(conn, self.resource_id)


class GetStatus(actions.Action):
    """Return a server's status, power state, task state and VM state.

    The result is a dict: ``id``, ``name``, ``status`` (e.g. ``ACTIVE``),
    ``power_state`` (name, e.g. ``RUNNING``), ``task_state`` and
    ``vm_state``.

    :param server_id: ID of the server.
    """

    def __init__(self, server_id: str) -> None:
        super().__init__()
        self.server_id = server_id

    def run(self, context: Any) -> dict[str, Any]:
        with sdk.openstack_connection(context) as conn:
            with common.api_errors("server", self.server_id):
                server = _get_server(conn, self.server_id)
        return {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "power_state": power_state_name(server.power_state),
            "task_state": server.task_state,
            "vm_state": server.vm_state,
        }


class AssertPowerStatus(common.StatusAssertion):
    """Assert a server is in a given power state, optionally waiting for it.

    Power states are Nova's: ``RUNNING``, ``SHUTDOWN``, ``PAUSED``,
    ``SUSPENDED``, ``CRASHED``, ``NOSTATE`` (names or their numeric codes).
    With ``timeout`` > 0 the server is checked every ``interval`` seconds
    until it reaches the power state.

    :param server_id: ID of the server.
    :param power_state: expected power state, e.g. ``RUNNING``.
    :param timeout: seconds to wait for the power state; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "server"
    _status_label = "power state"

    def __init__(
        self,
        server_id: str,
        power_state: str = "RUNNING",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(server_id, power_state, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return _get_server(conn, self.resource_id)

    def _expected_status(self) -> str:
        expected = power_state_name(self.expected)
        if expected not in POWER_STATES.values():
            known = ", ".join(POWER_STATES.values())
            raise common.fail(
                f"unknown power state {self.expected!r}; use one of {known}"
            )
        return expected

    def _read_status(self, resource: Any) -> str | None:
        return power_state_name(resource.power_state)
