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
import os  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tests import run_summary  # noqa: E402
from tests.comfyui_env import comfyui_version, find_comfyui, prepare_in_process  # noqa: E402

COMFYUI_PATH, COMFYUI_FOUND_BY = find_comfyui()
MARKED = ("comfyui", "e2e", "browser")  # the ComfyUI tiers; every other test is a core test
_outcomes = run_summary.empty()
_started = time.monotonic()


def pytest_configure(config):
    if COMFYUI_PATH is not None:
        prepare_in_process(COMFYUI_PATH)


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH is not None:
        return
    skip = pytest.mark.skip(reason=f"ComfyUI integration: {COMFYUI_FOUND_BY}")
    for item in items:
        if any(item.get_closest_marker(c) for c in MARKED):
            item.add_marker(skip)


def _category(report) -> str:
    for name in reversed(MARKED):  # most specific first
        if name in report.keywords:
            return name
    return "core"


def pytest_runtest_logreport(report):
    outcome = _outcomes[_category(report)]
    if report.skipped:
        outcome["skipped"] += 1
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason not in outcome["reasons"]:
            outcome["reasons"].append(reason)
    elif report.when == "call":
        outcome["passed" if report.passed else "failed"] += 1
    elif report.failed:  # an error in setup or teardown
        outcome["failed"] += 1


def _where() -> str:
    if COMFYUI_PATH is None:
        return COMFYUI_FOUND_BY
    return f"ComfyUI {comfyui_version(COMFYUI_PATH)} found via {COMFYUI_FOUND_BY}"


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("ComfyUI integration summary")
    terminalreporter.write_line(_where())
    for name, label in run_summary.CATEGORIES:
        if name == "core":
            continue
        o = _outcomes[name]
        ran = o["passed"] + o["failed"]
        terminalreporter.write_line(f"{label}: {ran} ran ({o['passed']} passed, {o['failed']} failed), {o['skipped']} skipped")
        for reason in o["reasons"]:
            terminalreporter.write_line(f"    skipped because: {reason}")
    target = os.environ.get("TLORA_TEST_SUMMARY")
    if target:  # scripts/test.sh prints one summary over all ComfyUI versions from these
        run_summary.write(target, _where(), _outcomes, time.monotonic() - _started)
