"""scripts/comfyui.py: how ComfyUI trees are found, how a fresh machine gets one, and which
environment each gets. Standard library and git only; no network (the clone is tested against a
local repository with a release tag)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rule():
    spec = importlib.util.spec_from_file_location("tlora_comfyui_rule_under_test", ROOT / "scripts" / "comfyui.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def fake_comfyui(path: Path, version: str) -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "comfy" / "model_patcher.py").write_text("")
    (path / "folder_paths.py").write_text("")
    (path / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (path / "requirements.txt").write_text("torch\ntorchvision\naiohttp>=3.11\n# comment\nspandrel\nkornia>=0.7.1\n")
    return path


def test_comfyui_path_lists_several_trees_in_order(rule, tmp_path):
    a, b = fake_comfyui(tmp_path / "a", "0.33.0"), fake_comfyui(tmp_path / "b", "0.3.64")
    trees, why = rule.find_trees({"COMFYUI_PATH": f"{a}{os.pathsep}{b}"}, home=tmp_path / "home", pack=tmp_path / "pack")
    assert [t.path for t in trees] == [a, b] and [t.version for t in trees] == ["0.33.0", "0.3.64"] and not why


def test_a_wrong_comfyui_path_entry_is_named(rule, tmp_path):
    a = fake_comfyui(tmp_path / "a", "0.33.0")
    trees, why = rule.find_trees({"COMFYUI_PATH": f"{a}{os.pathsep}{tmp_path / 'nope'}"}, home=tmp_path, pack=tmp_path / "pack")
    assert trees == [] and "nope is not a ComfyUI checkout" in why


def test_the_comfyui_the_pack_sits_in_wins_over_home_folders(rule, tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI", "0.33.0")
    pack = comfy / "custom_nodes" / "tlora-nodes"
    pack.mkdir(parents=True)
    fake_comfyui(tmp_path / "home" / "ComfyUI", "0.3.64")
    trees, _ = rule.find_trees({}, home=tmp_path / "home", pack=pack)
    assert [t.path for t in trees] == [comfy.resolve()]


def test_home_folders_newest_version_first(rule, tmp_path):
    home = tmp_path / "home"
    fake_comfyui(home / "ComfyUI", "0.3.64")
    fake_comfyui(home / "ComfyUI-0.33.0", "0.33.0")
    fake_comfyui(home / "ComfyUI-0.4.2", "0.4.2")
    (home / "ComfyUI-notes").mkdir()
    trees, _ = rule.find_trees({}, home=home, pack=tmp_path / "pack")
    assert [t.version for t in trees] == ["0.33.0", "0.4.2", "0.3.64"]
    assert trees[0].found_by == "~/ComfyUI-0.33.0"


def test_nothing_found_says_how_to_point_at_comfyui(rule, tmp_path):
    trees, why = rule.find_trees({}, home=tmp_path, pack=tmp_path / "pack")
    assert trees == [] and "COMFYUI_PATH" in why


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_fresh_machine_clones_the_pinned_release_tag(rule, tmp_path):
    upstream = fake_comfyui(tmp_path / "upstream", "0.33.0")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(upstream)]
    subprocess.run(["git", "init", "-q", str(upstream)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "release"], check=True)
    subprocess.run([*git, "tag", "v0.33.0"], check=True)
    (upstream / "comfyui_version.py").write_text('__version__ = "0.34.0-dev"\n')  # main moved on after the tag
    subprocess.run([*git, "commit", "-qam", "later"], check=True)

    dest = tmp_path / "home" / "ComfyUI-0.33.0"
    got = rule.fetch(dest, url=upstream.as_uri(), version="0.33.0")
    assert got == dest and rule.comfyui_version(dest) == "0.33.0"
    assert rule.fetch(dest, url="file:///nowhere", version="0.33.0") == dest  # already there: nothing to do


def test_without_network_the_fetch_says_in_one_line_what_to_do(rule, tmp_path):
    dest = tmp_path / "ComfyUI-0.33.0"
    with pytest.raises(rule.ComfyUIError) as caught:
        rule.fetch(dest, url=(tmp_path / "no-such-repository").as_uri(), version="0.33.0")
    message = str(caught.value)
    assert "\n" not in message and "COMFYUI_PATH" in message and "git clone --branch v0.33.0" in message
    assert not dest.exists() and not (tmp_path / "ComfyUI-0.33.0.partial").exists()


def test_a_trees_environment_leaves_out_the_torch_family_and_is_keyed_by_its_requirements(rule, tmp_path):
    tree = fake_comfyui(tmp_path / "c", "0.33.0")
    reqs = rule.tree_requirements(tree)
    assert reqs == ["aiohttp>=3.11", "kornia>=0.7.1", "requests"]  # requests: imported unlisted by some versions
    name, _, torch_spec = rule.env_spec(tree, "torch==2.13.0")
    assert name.startswith("comfyui-0.33.0-") and torch_spec == "torch==2.13.0"
    (tree / "requirements.txt").write_text("aiohttp>=3.12\n")
    assert rule.env_spec(tree, "torch==2.13.0")[0] != name  # changed requirements: another environment
    assert rule.env_spec(tree, "torch==2.14.1")[0] != name
    assert rule.env_spec(None, "torch==2.13.0")[0].startswith("core-")


def test_run_uses_comfyuis_own_venv_when_it_has_one(rule, tmp_path):
    tree = fake_comfyui(tmp_path / "c", "0.33.0")
    python = tree / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert rule.own_python(tree) == python


def test_a_new_environment_removes_only_same_version_environments_unused_for_two_days(rule, tmp_path):
    """Another checkout on other requirements (or a test run inside its environment) must not lose
    its environment when this one builds a new one; only long-unused ones are removed."""
    now = 1_000_000_000.0

    def env(name: str, last_used: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / ".complete").write_text(name)
        os.utime(folder / ".complete", (last_used, last_used))
        return folder

    keep = env("comfyui-0.33.0-aaaaaaaaaaaa", now)
    old = env("comfyui-0.33.0-bbbbbbbbbbbb", now - rule.STALE_AFTER_S - 60)
    recent = env("comfyui-0.33.0-cccccccccccc", now - 3600)
    other_version = env("comfyui-0.3.64-dddddddddddd", now - 10 * rule.STALE_AFTER_S)
    not_ours = env("comfyui-0.33.0-mine", now - 10 * rule.STALE_AFTER_S)
    (tmp_path / "comfyui-0.33.0-eeeeeeeeeeee").symlink_to(keep)

    assert rule.prune_stale(tmp_path, keep, now=now) == [old]
    assert not old.exists()
    assert keep.is_dir() and recent.is_dir() and other_version.is_dir() and not_ours.is_dir()
    assert (tmp_path / "comfyui-0.33.0-eeeeeeeeeeee").is_symlink()
