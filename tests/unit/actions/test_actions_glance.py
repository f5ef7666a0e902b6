"""Tests for the Glance actions.

No OpenStack cloud is reachable here: requests-mock stands in for Keystone
and Glance (see conftest.py); bodies are shaped like Glance v2 responses.
"""

from __future__ import annotations

import json

import pytest
from mistral_lib.exceptions import ActionException

from hotload_actions.glance import images

IMAGE_ID = "b2173dd3-7ad6-4362-baa6-a68bce3565cb"
OWNER = "0c4e939acacf4376bdcd1129f1a054ad"


def _image(
    image_id: str = IMAGE_ID, name: str = "cirros", status: str = "active"
) -> dict:
    return {
        "id": image_id,
        "name": name,
        "status": status,
        "visibility": "private",
        "owner": OWNER,
        "protected": False,
        "os_hidden": False,
        "checksum": "443b7623e27ecf03dc9e01ee93f67afe",
        "os_hash_algo": "sha512",
        "container_format": "bare",
        "disk_format": "qcow2",
        "size": 12716032,
        "virtual_size": 46137344,
        "min_disk": 0,
        "min_ram": 0,
        "tags": ["nightly"],
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:02Z",
        "self": f"/v2/images/{image_id}",
        "file": f"/v2/images/{image_id}/file",
        "schema": "/v2/schemas/image",
    }


class TestAssertStatus:
    def url(self, cloud):
        return f"{cloud.image}/images/{IMAGE_ID}"

    def test_matches(self, cloud):
        cloud.mock.get(self.url(cloud), json=_image())
        result = images.AssertStatus(IMAGE_ID).run(cloud.context())
        assert result["id"] == IMAGE_ID
        assert result["status"] == "active"

    def test_wrong_status(self, cloud):
        cloud.mock.get(self.url(cloud), json=_image(status="queued"))
        with pytest.raises(ActionException) as exc:
            images.AssertStatus(IMAGE_ID).run(cloud.context())
        assert str(exc.value) == (
            f"image '{IMAGE_ID}' is in status 'queued', expected 'active'"
        )

    def test_killed_image_ends_the_wait(self, cloud, fake_clock):
        cloud.mock.get(
            self.url(cloud),
            [
                {"json": _image(status="saving")},
                {"json": _image(status="killed")},
            ],
        )
        with pytest.raises(ActionException, match="'killed', expected"):
            images.AssertStatus(IMAGE_ID, timeout=300, interval=10).run(
                cloud.context()
            )
        assert fake_clock == [10]

    def test_not_found(self, cloud):
        cloud.fail(
            "GET",
            self.url(cloud),
            404,
            "404 Not Found\n\nNo image found with ID " + IMAGE_ID,
        )
        with pytest.raises(ActionException) as exc:
            images.AssertStatus(IMAGE_ID).run(cloud.context())
        assert str(exc.value) == f"image '{IMAGE_ID}' not found"

    def test_api_error(self, cloud):
        cloud.fail(
            "GET",
            self.url(cloud),
            500,
            "500 Internal Server Error\n\nThe server has either erred or is "
            "incapable of performing the requested operation.",
        )
        with pytest.raises(ActionException) as exc:
            images.AssertStatus(IMAGE_ID).run(cloud.context())
        assert str(exc.value).startswith(f"image '{IMAGE_ID}': HTTP 500 ")


class TestFilterBy:
    def url(self, cloud):
        return f"{cloud.image}/images"

    def test_filters_are_sent_to_glance(self, cloud):
        listing = cloud.mock.get(
            self.url(cloud),
            json={
                "images": [_image()],
                "schema": "/v2/schemas/images",
                "first": "/v2/images?name=cirros&status=active",
            },
        )
        result = images.FilterBy(name="cirros", status="active").run(
            cloud.context()
        )
        assert [i["id"] for i in result] == [IMAGE_ID]
        assert result[0]["tags"] == ["nightly"]
        assert json.loads(json.dumps(result)) == result  # storable result
        assert listing.last_request.qs == {
            "name": ["cirros"],
            "status": ["active"],
        }

    def test_by_id_owner_visibility_tag(self, cloud):
        listing = cloud.mock.get(
            self.url(cloud), json={"images": [_image()], "first": ""}
        )
        images.FilterBy(
            image_id=IMAGE_ID, owner=OWNER, visibility="private", tag="nightly"
        ).run(cloud.context())
        assert listing.last_request.qs == {
            "id": [IMAGE_ID],
            "owner": [OWNER],
            "visibility": ["private"],
            "tag": ["nightly"],
        }

    def test_follows_pagination(self, cloud):
        second = "ffffffff-7ad6-4362-baa6-a68bce3565cb"
        cloud.mock.get(
            self.url(cloud),
            [
                {
                    "json": {
                        "images": [_image()],
                        "next": f"/v2/images?marker={IMAGE_ID}",
                    }
                },
                {"json": {"images": [_image(second, name="cirros-2")]}},
            ],
        )
        result = images.FilterBy().run(cloud.context())
        assert [i["id"] for i in result] == [IMAGE_ID, second]

    def test_empty_result_is_a_list(self, cloud):
        cloud.mock.get(self.url(cloud), json={"images": []})
        assert images.FilterBy(name="nope").run(cloud.context()) == []

    def test_fail_if_empty(self, cloud):
        cloud.mock.get(self.url(cloud), json={"images": []})
        with pytest.raises(ActionException) as exc:
            images.FilterBy(
                name="snap-1", status="active", fail_if_empty=True
            ).run(cloud.context())
        assert str(exc.value) == (
            "no image matches name='snap-1', status='active'"
        )

    def test_api_error(self, cloud):
        cloud.fail(
            "GET",
            self.url(cloud),
            400,
            "400 Bad Request\n\nInvalid status value: sleeping",
        )
        with pytest.raises(ActionException) as exc:
            images.FilterBy(status="sleeping").run(cloud.context())
        assert str(exc.value).startswith("image list: HTTP 400 from GET ")
        assert "Invalid status value: sleeping" in str(exc.value)
