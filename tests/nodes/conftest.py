"""Fixtures for the ComfyUI integration tests; every helper is imported lazily so that the
tests are still collected (and skipped with a reason) when no ComfyUI is found."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny():
    from . import tiny as module

    return module


@pytest.fixture(scope="session")
def helpers():
    from . import helpers as module

    return module


@pytest.fixture(scope="session")
def patching():
    from tlora_nodes.nodes import patching as module

    return module


@pytest.fixture
def loras_dir(tmp_path, monkeypatch):
    """A temporary models/loras folder that folder_paths (and so the nodes) use."""
    import folder_paths

    folder = tmp_path / "loras"
    folder.mkdir()
    # the extensions ComfyUI itself lists in models/loras (.pt included)
    extensions = set(folder_paths.supported_pt_extensions)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(folder)], extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder
