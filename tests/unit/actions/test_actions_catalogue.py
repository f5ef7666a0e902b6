"""The action catalogue as the daemon will see it, and the example workflows.

The daemon's export rules are applied here independently of the daemon (it
lives in another package): every class defined in a module that subclasses
``mistral_lib.actions.Action`` is exported unless its name starts with ``_``
or it sets ``__export__ = False`` in its own body; the name is
``hotload.<module path>.<snake_case class name>``; the input spec is
``get_arg_list_as_str(cls.__init__)``; the description is the first
paragraph of the class docstring.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import re

import pytest
import yaml
from mistral_lib import actions as ml_actions
from mistral_lib import serialization
from mistral_lib.utils import inspect_utils

ROOT = pathlib.Path(__file__).resolve().parents[3] / "actions"
PACKAGE = "hotload_actions"
PREFIX = "hotload"

EXPECTED = {
    "hotload.examples.notify.volume_status": "volume_id, url, timeout=30",
    "hotload.cinder.backups.assert_status": (
        'backup_id, status="available", timeout=0, interval=5'
    ),
    "hotload.cinder.backups.create": (
        "volume_id, backup_name, snapshot_id=null, description=null, "
        "container=null, incremental=true, force=true, max_chain_length=5"
    ),
    "hotload.cinder.snapshots.assert_status": (
        'snapshot_id, status="available", timeout=0, interval=5'
    ),
    "hotload.cinder.snapshots.create": (
        "volume_id, snapshot_name=null, description=null, force=false"
    ),
    "hotload.cinder.volumes.assert_status": (
        'volume_id, status="available", timeout=0, interval=5'
    ),
    "hotload.glance.images.assert_status": (
        'image_id, status="active", timeout=0, interval=5'
    ),
    "hotload.glance.images.filter_by": (
        "image_id=null, name=null, status=null, visibility=null, "
        "owner=null, tag=null, fail_if_empty=false"
    ),
    "hotload.nova.servers.assert_power_status": (
        'server_id, power_state="RUNNING", timeout=0, interval=5'
    ),
    "hotload.nova.servers.assert_status": (
        'server_id, status="ACTIVE", timeout=0, interval=5'
    ),
    "hotload.nova.servers.get_status": "server_id",
    "hotload.system.exec": "cmd, timeout=60",
    "hotload.trove.backups.assert_status": (
        'backup_id, status="COMPLETED", timeout=0, interval=5'
    ),
    "hotload.trove.backups.create": (
        "instance_id, backup_name, description=null, incremental=false, "
        "parent_id=null, container=null"
    ),
}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            yield (
                ".".join(parts),
                importlib.import_module(".".join([PACKAGE, *parts])),
            )


def _exported():
    found = {}
    for dotted, module in _modules():
        for cls_name, cls in vars(module).items():
            if not (
                inspect.isclass(cls)
                and issubclass(cls, ml_actions.Action)
                and cls.__module__ == module.__name__
            ):
                continue
            if cls_name.startswith("_"):
                continue
            if cls.__dict__.get("__export__", True) is False:
                continue
            found[f"{PREFIX}.{dotted}.{_snake(cls_name)}"] = cls
    return found


CATALOGUE = _exported()


def test_catalogue_names_and_input_specs():
    specs = {
        name: inspect_utils.get_arg_list_as_str(cls.__init__)
        for name, cls in CATALOGUE.items()
    }
    assert specs == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_action_implements_run(name):
    cls = CATALOGUE[name]
    assert cls.run is not ml_actions.Action.run
    assert not inspect.isabstract(cls)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_action_is_documented(name):
    cls = CATALOGUE[name]
    doc = inspect.getdoc(cls) or ""
    description = doc.split("\n\n")[0]
    assert description and len(description) < 80, description
    for param in inspect.signature(cls.__init__).parameters:
        if param != "self":
            assert f":param {param}:" in doc, f"{name}: {param} undocumented"


def _sample_args(cls):
    return {
        param.name: f"value-of-{param.name}"
        for param in inspect.signature(cls.__init__).parameters.values()
        if param.name != "self" and param.default is inspect.Parameter.empty
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_action_survives_mistral_serialization(name):
    """The engine serializes the action to send it to an executor: only
    plain, JSON-able instance attributes and no public class attributes
    (those would make the serializer build a dynamic subclass)."""
    cls = CATALOGUE[name]
    action = cls(**_sample_args(cls))
    serializer = serialization.get_polymorphic_serializer()

    wire = json.loads(json.dumps(serializer.serialize(action)))
    copy = serializer.deserialize(wire)

    assert type(copy) is cls
    assert vars(copy) == vars(action)
    assert inspect_utils.get_public_fields(cls) == {}


def test_shared_module_exports_nothing():
    assert not [n for n in CATALOGUE if n.startswith(f"{PREFIX}.common.")]


def test_in_tree_imports_are_relative():
    """actions/ is mounted under a configurable package name, so modules
    must not import each other by an absolute name."""
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert not re.search(
            r"^\s*(from|import)\s+(actions|hotload_actions)\b", text, re.M
        ), path


# --------------------------------------------------------------------------
# Example workflows
# --------------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_seed_examples_are_all_there():
    assert [p.stem for p in EXAMPLES] == [
        "create_image",
        "create_volume_backup",
        "start_server",
    ]


def _tasks(path):
    document = yaml.safe_load(path.read_text())
    assert document.pop("version") == "2.0"
    assert list(document) == [path.stem]
    workflow = document[path.stem]
    assert workflow["type"] == "direct"
    return workflow["tasks"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_uses_existing_actions_and_parameters(path):
    used = 0
    for task_name, task in _tasks(path).items():
        words = task["action"].split()
        action = words[0]
        inline = {w.split("=", 1)[0] for w in words[1:] if "=" in w}
        params = set(task.get("input", {})) | inline
        if not action.startswith(f"{PREFIX}."):
            continue
        used += 1
        assert action in CATALOGUE, f"{task_name}: unknown action {action}"
        accepted = set(
            inspect.signature(CATALOGUE[action].__init__).parameters
        )
        assert params <= accepted, f"{task_name}: {params - accepted}"
        required = set(_sample_args(CATALOGUE[action]))
        assert required <= params, f"{task_name}: missing {required - params}"
    assert used
