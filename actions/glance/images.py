"""Glance image actions."""

from __future__ import annotations

from typing import Any

from mistral_lib import actions

from hotload import sdk

from .. import common

#: Image statuses from which waiting for another status is pointless.
FAILURE_STATUSES = ("killed", "deleted", "pending_delete")


class AssertStatus(common.StatusAssertion):
    """Assert an image is in a given status, optionally waiting for it.

    Fails with the image's id, its actual and the expected status. With
    ``timeout`` > 0 the image is checked every ``interval`` seconds until
    it reaches the status; ``killed`` or ``deleted`` fails at once.

    :param image_id: ID of the image.
    :param status: expected status, e.g. ``active``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "image"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        image_id: str,
        status: str = "active",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(image_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return conn.image.get_image(self.resource_id)


class FilterBy(actions.Action):
    """List images filtered by id, name, status, visibility, owner or tag.

    Filters left empty are not applied; the filtering is done by Glance.
    Returns a list of images (dicts). With ``fail_if_empty`` an empty result
    is an error, so a task with a ``retry`` policy can wait for an image to
    appear (e.g. ``name=... status=active``).

    :param image_id: only the image with this ID.
    :param name: only images with exactly this name.
    :param status: only images in this status, e.g. ``active``.
    :param visibility: only images with this visibility (``public``,
        ``private``, ``shared``, ``community``).
    :param owner: only images owned by this project ID.
    :param tag: only images carrying this tag.
    :param fail_if_empty: fail when no image matches.
    """

    def __init__(
        self,
        image_id: str | None = None,
        name: str | None = None,
        status: str | None = None,
        visibility: str | None = None,
        owner: str | None = None,
        tag: str | None = None,
        fail_if_empty: bool = False,
    ) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.status = status
        self.visibility = visibility
        self.owner = owner
        self.tag = tag
        self.fail_if_empty = fail_if_empty

    def filters(self) -> dict[str, str]:
        """Return the Glance query filters that were given.

        :returns: filter name to value, without the empty ones.
        """
        given = {
            "id": self.image_id,
            "name": self.name,
            "status": self.status,
            "visibility": self.visibility,
            "owner": self.owner,
            "tag": self.tag,
        }
        return {k: v for k, v in given.items() if v is not None}

    def run(self, context: Any) -> list[dict[str, Any]]:
        query = self.filters()
        with sdk.openstack_connection(context) as conn:
            with common.api_errors("image list"):
                images = [
                    common.as_dict(i) for i in conn.image.images(**query)
                ]
        if not images and self.fail_if_empty:
            shown = ", ".join(f"{k}={v!r}" for k, v in query.items())
            raise common.fail(f"no image matches {shown or 'the filters'}")
        return images
