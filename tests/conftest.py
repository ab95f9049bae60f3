"""Test set-up shared by every suite.

The pack is imported the way ComfyUI imports it: as a package (here named ``tlora_nodes``)
loaded from the repository root, so relative imports and module identity match production.
The repository root itself is never put on sys.path, because its ``nodes/`` package would
shadow ComfyUI's ``nodes`` module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tlora_nodes"


def load_pack():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


load_pack()


# -- ComfyUI integration tests: find ComfyUI, skip honestly, report counts ------------------------
import pytest  # noqa: E402

from tests.comfyui_env import comfyui_version, find_comfyui, prepare_in_process  # noqa: E402

COMFYUI_PATH, COMFYUI_FOUND_BY = find_comfyui()
CATEGORIES = (
    ("comfyui", "ComfyUI integration tests (in-process, tiny models)"),
    ("e2e", "end-to-end tests (real ComfyUI server on 127.0.0.1)"),
    ("browser", "browser tests (real frontend in headless Chromium)"),
)
_outcomes: dict[str, dict[str, int]] = {c: {"passed": 0, "failed": 0, "skipped": 0} for c, _ in CATEGORIES}
_skip_reasons: dict[str, set[str]] = {c: set() for c, _ in CATEGORIES}


def pytest_configure(config):
    if COMFYUI_PATH is not None:
        prepare_in_process(COMFYUI_PATH)


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH is not None:
        return
    skip = pytest.mark.skip(reason=f"ComfyUI integration: {COMFYUI_FOUND_BY}")
    for item in items:
        if any(item.get_closest_marker(c) for c, _ in CATEGORIES):
            item.add_marker(skip)


def _category(report) -> str | None:
    for name, _ in reversed(CATEGORIES):  # most specific first
        if name in report.keywords:
            return name
    return None


def pytest_runtest_logreport(report):
    category = _category(report)
    if category is None:
        return
    if report.skipped:
        _outcomes[category]["skipped"] += 1
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skip_reasons[category].add(reason.removeprefix("Skipped: "))
    elif report.when == "call":
        _outcomes[category]["passed" if report.passed else "failed"] += 1
    elif report.failed:  # an error in setup or teardown
        _outcomes[category]["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    where = (
        f"ComfyUI {comfyui_version(COMFYUI_PATH)} found via {COMFYUI_FOUND_BY}"
        if COMFYUI_PATH is not None
        else COMFYUI_FOUND_BY
    )
    terminalreporter.section("ComfyUI integration summary")
    terminalreporter.write_line(where)
    for name, label in CATEGORIES:
        o = _outcomes[name]
        ran = o["passed"] + o["failed"]
        line = f"{label}: {ran} ran ({o['passed']} passed, {o['failed']} failed), {o['skipped']} skipped"
        terminalreporter.write_line(line)
        for reason in sorted(_skip_reasons[name]):
            terminalreporter.write_line(f"    skipped because: {reason}")
