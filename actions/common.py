"""Shared helpers for the curated OpenStack actions.

Every OpenStack action module imports this one (``from .. import common``)
for what the curated actions share beyond :mod:`hotload.sdk`:

* :func:`wait_for_status` is the check-or-wait loop behind every
  ``assert_status`` action, all subclasses of :class:`StatusAssertion` (a
  base class, not exported: ``__export__ = False``);
* :func:`api_errors` turns SDK and Keystone errors into
  :class:`mistral_lib.exceptions.ActionException` with a message that names
  the resource.

The connection itself is :func:`hotload.sdk.openstack_connection`, public
for every module of the actions directory: the workflow's token as it is,
the catalog from the context or from Keystone, never re-scoped, never
logged (see its documentation).
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import openstack.connection
import openstack.exceptions
from keystoneauth1 import exceptions as ks_exceptions
from mistral_lib import actions as ml_actions
from mistral_lib import exceptions as ml_exceptions

from hotload import sdk

#: Default seconds between two status checks when waiting.
DEFAULT_INTERVAL = 5

# Indirections so tests can drive the wait loop with a fake clock.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def fail(message: str) -> ml_exceptions.ActionException:
    """Build the exception an action raises to fail with ``message``.

    :param message: text shown as the action's error in Mistral.
    :returns: an :class:`~mistral_lib.exceptions.ActionException`.
    """
    return ml_exceptions.ActionException(message)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@contextlib.contextmanager
def api_errors(
    resource_type: str, resource_id: str | None = None
) -> Iterator[None]:
    """Turn SDK / Keystone errors raised in the block into ActionException.

    :param resource_type: human name of the resource, e.g. ``"volume"``.
    :param resource_id: its id when there is one; named in the message.
    :raises ActionException: "<type> '<id>' not found" for HTTP 404, else
        "<type> '<id>': HTTP <code> from <request>: <service's message>", or
        the SDK / keystoneauth message for errors without a response.
    """
    what = f"{resource_type} {resource_id!r}" if resource_id else resource_type
    try:
        yield
    except openstack.exceptions.NotFoundException:
        raise fail(f"{what} not found") from None
    except openstack.exceptions.HttpException as exc:
        raise fail(f"{what}: {describe_http_error(exc)}") from None
    except (
        openstack.exceptions.SDKException,
        ks_exceptions.ClientException,
    ) as exc:
        raise fail(f"{what}: {exc}") from None


def describe_http_error(exc: openstack.exceptions.HttpException) -> str:
    """Describe an HTTP error answered by a service, for an error message.

    :param exc: the SDK exception.
    :returns: e.g. ``HTTP 400 from POST https://...: Invalid volume: ...
        (request id req-...)``.
    """
    text = f"HTTP {exc.status_code}"
    if exc.method and exc.url:
        text += f" from {exc.method} {exc.url}"
    details = str(exc.details or "").strip()
    if details:
        text += f": {details}"
    if exc.request_id:
        text += f" (request id {exc.request_id})"
    return text


# --------------------------------------------------------------------------
# Status checks
# --------------------------------------------------------------------------


def wait_for_status(
    fetch: Callable[[], Any],
    *,
    resource_type: str,
    resource_id: str,
    expected: str,
    timeout: float = 0,
    interval: float = DEFAULT_INTERVAL,
    failure: Iterable[str] = (),
    attribute: str = "status",
    read: Callable[[Any], Any] | None = None,
) -> Any:
    """Check (and optionally wait) until a resource reaches a status.

    Statuses compare case-insensitively (Nova says ``ACTIVE``, Cinder
    ``available``). The resource is fetched once; if it is not in the
    expected status and ``timeout`` is positive, it is fetched again every
    ``interval`` seconds until ``timeout`` seconds have passed. A status in
    ``failure`` (e.g. ``error``) ends the wait at once.

    :param fetch: callable returning the current resource (an SDK resource);
        it may raise SDK errors, which are reported by :func:`api_errors`.
    :param resource_type: human name of the resource, e.g. ``"volume"``.
    :param resource_id: the resource's id, named in the messages.
    :param expected: the status to reach.
    :param timeout: seconds to wait; 0 (default) checks once.
    :param interval: seconds between two checks while waiting.
    :param failure: statuses that fail immediately (unless expected).
    :param attribute: the resource attribute holding the status (also the
        word used in messages).
    :param read: callable extracting the status from the resource, for
        values that need translating; default ``getattr(r, attribute)``.
    :returns: the resource, once in the expected status.
    :raises ActionException: wrong status, not found, API error, bad
        arguments.
    """
    timeout, interval = check_wait_args(timeout, interval)
    want = str(expected).lower()
    failed = {str(s).lower() for s in failure} - {want}
    deadline = _clock() + timeout
    while True:
        with api_errors(resource_type, resource_id):
            resource = fetch()
        actual = read(resource) if read else getattr(resource, attribute, None)
        if actual is not None and str(actual).lower() == want:
            return resource
        message = (
            f"{resource_type} {resource_id!r} is in {attribute} {actual!r}, "
            f"expected {expected!r}"
            if actual is not None
            else f"{resource_type} {resource_id!r} reports no {attribute}, "
            f"expected {expected!r}"
        )
        if actual is not None and str(actual).lower() in failed:
            raise fail(message)
        remaining = deadline - _clock()
        if remaining <= 0:
            if timeout:
                message += f" (waited {timeout:g}s)"
            raise fail(message)
        _sleep(min(interval, remaining))


class StatusAssertion(ml_actions.Action):
    """Base of the ``assert_status`` actions; not an action itself.

    :meth:`run` checks (and with ``timeout`` > 0 waits) until the resource
    reaches the expected status, through :func:`wait_for_status` on a fresh
    connection, and returns the resource as a dict. A subclass keeps only
    what differs:

    * its docstring and an explicit ``__init__`` (Mistral shows the
      parameters of ``__init__``: the input names and defaults) that hands
      its inputs on with ``super().__init__(resource_id, expected, timeout,
      interval)``;
    * :attr:`_resource_type` and :attr:`_failure_statuses`;
    * :meth:`_fetch`, how to get the resource;
    * for a status other than the resource's ``status`` attribute,
      :attr:`_status_label`, :meth:`_read_status` and
      :meth:`_expected_status`.

    The settings are private class attributes: mistral-lib's serializer
    rebuilds an action with public class attributes as a dynamic subclass.
    """

    __export__ = False

    #: Human name of the resource in messages, e.g. ``"volume"``.
    _resource_type = "resource"
    #: Statuses that end the wait at once (unless expected).
    _failure_statuses: tuple[str, ...] = ()
    #: The word for the status in messages.
    _status_label = "status"

    def __init__(
        self, resource_id: str, expected: str, timeout: float, interval: float
    ) -> None:
        super().__init__()
        self.resource_id = resource_id
        self.expected = expected
        self.timeout = timeout
        self.interval = interval

    @abc.abstractmethod
    def _fetch(self, conn: openstack.connection.Connection) -> Any:
        """Get the resource ``self.resource_id``; SDK errors it raises are
        reported by :func:`api_errors`.

        :param conn: the connection.
        :returns: the SDK resource.
        """
        raise NotImplementedError

    def _expected_status(self) -> str:
        """Return the status to reach, checked before any request.

        :returns: the ``expected`` input as given.
        :raises ActionException: when the input is not a valid status.
        """
        return self.expected

    def _read_status(self, resource: Any) -> Any:
        """Return the resource's current status (``None`` if unknown)."""
        return getattr(resource, "status", None)

    def run(self, context: Any) -> dict[str, Any]:
        """Check the status, waiting up to ``timeout`` seconds.

        :param context: the action context (see
            :func:`hotload.sdk.openstack_connection`).
        :returns: the resource as a dict, once in the expected status.
        :raises ActionException: see :func:`wait_for_status`.
        """
        expected = self._expected_status()
        check_wait_args(self.timeout, self.interval)
        with sdk.openstack_connection(context) as conn:
            resource = wait_for_status(
                lambda: self._fetch(conn),
                resource_type=self._resource_type,
                resource_id=self.resource_id,
                expected=expected,
                timeout=self.timeout,
                interval=self.interval,
                failure=self._failure_statuses,
                attribute=self._status_label,
                read=self._read_status,
            )
            return as_dict(resource)


def check_wait_args(timeout: Any, interval: Any) -> tuple[float, float]:
    """Validate the ``timeout`` / ``interval`` inputs of an action.

    :param timeout: seconds to wait, ``>= 0`` (``None`` means 0).
    :param interval: seconds between checks, ``> 0`` (``None`` means the
        default).
    :returns: both as floats.
    :raises ActionException: when a value is not a number or out of range.
    """
    try:
        timeout = float(timeout or 0)
        interval = float(DEFAULT_INTERVAL if interval is None else interval)
    except (TypeError, ValueError):
        raise fail(
            f"timeout and interval must be numbers, got {timeout!r} and "
            f"{interval!r}"
        ) from None
    if timeout < 0 or interval <= 0:
        raise fail(
            f"timeout must be >= 0 and interval > 0, got {timeout:g} and "
            f"{interval:g}"
        )
    return timeout, interval


def as_dict(resource: Any) -> dict[str, Any]:
    """Return an SDK resource as a JSON-serialisable dict (action result).

    :param resource: an :class:`openstack.resource.Resource`.
    :returns: its body and header attributes, without computed ones.
    """
    return resource.to_dict(computed=False)
