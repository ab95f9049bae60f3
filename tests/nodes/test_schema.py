"""The nodes' public API: ids, display names, inputs in order, outputs. Shipped workflows store
widget values by position, so this snapshot may only ever grow at the end of an input list."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

SNAPSHOT = Path(__file__).with_name("node_schema_snapshot.json")


def describe(node_cls) -> dict:
    info = node_cls.GET_NODE_INFO_V1()
    inputs = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            options = spec[1] if len(spec) > 1 else {}
            inputs.append({"name": name, "type": kind, "section": section, "default": options.get("default")})
    return {
        "display_name": info["display_name"],
        "category": info["category"],
        "inputs": inputs,
        "outputs": list(info["output"]),
    }


def current() -> dict:
    from tlora_nodes.nodes import NODES

    return {cls.GET_SCHEMA().node_id: describe(cls) for cls in NODES}


def test_entrypoint_registers_exactly_the_four_nodes():
    import tlora_nodes

    extension = asyncio.run(tlora_nodes.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    assert [n.GET_SCHEMA().display_name for n in nodes] == ["T-LoRA Train", "T-LoRA Load", "Timestep-Aware Apply", "T-LoRA Export"]
    assert {n.GET_SCHEMA().category for n in nodes} == {"T-LoRA"}


def _entrypoint_nodes():
    import tlora_nodes

    extension = asyncio.run(tlora_nodes.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_a_comfyui_older_than_the_minimum_gets_no_nodes_and_one_line_saying_why(monkeypatch, caplog):
    import comfyui_version

    monkeypatch.setattr(comfyui_version, "__version__", "0.3.40")
    with caplog.at_level("WARNING"):
        assert _entrypoint_nodes() == []
    lines = [r.getMessage() for r in caplog.records if "tlora-nodes" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "ComfyUI 0.3.40 is older than 0.3.64" in lines[0] and "Update ComfyUI" in lines[0]


def test_a_comfyui_without_part_of_the_v3_api_gets_no_nodes_and_one_line_saying_why(monkeypatch, caplog):
    from comfy_api.latest import io

    monkeypatch.delattr(io, "LossMap")
    with caplog.at_level("WARNING"):
        assert _entrypoint_nodes() == []
    lines = [r.getMessage() for r in caplog.records if "tlora-nodes" in r.getMessage()]
    assert len(lines) == 1 and "lacks comfy_api.latest.io.LossMap" in lines[0]


def test_every_input_has_a_tooltip():
    from tlora_nodes.nodes import NODES

    for cls in NODES:
        info = cls.GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{info['display_name']}.{name} has no tooltip"


def test_node_inputs_match_the_shipped_snapshot():
    snapshot = json.loads(SNAPSHOT.read_text())
    now = current()
    for node_id, shipped in snapshot.items():
        assert node_id in now, f"node {node_id} was removed or renamed: shipped workflows use it"
        got = now[node_id]
        shipped_names = [i["name"] for i in shipped["inputs"]]
        got_names = [i["name"] for i in got["inputs"]]
        assert got_names[: len(shipped_names)] == shipped_names, (
            f"{node_id}: inputs were reordered or removed; only append new inputs (with defaults that keep old behaviour)"
        )
        for old, new in zip(shipped["inputs"], got["inputs"]):
            assert old == new, f"{node_id}.{old['name']} changed type or default"
        assert got["outputs"][: len(shipped["outputs"])] == shipped["outputs"]
        assert got["display_name"] == shipped["display_name"]


def test_pyproject_declares_the_same_minimum_comfyui():
    import tomllib

    import tlora_nodes

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    need = ".".join(map(str, tlora_nodes.REQUIRES_COMFYUI))
    assert project["tool"]["comfy"]["requires-comfyui"] == f">={need}"
