"""What the Comfy Registry checks before publishing (comfy-cli's `comfy node validate`: ruff's
S102 exec, S307 eval and E702 statements joined by ';') and the pyproject fields it reads,
checked without network or extra tools."""

from __future__ import annotations

import ast
import io
import subprocess
import tokenize
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in listed.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but environments
        files = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return [f for f in files if f.is_file()]


def test_no_exec_or_eval_anywhere():
    calls = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}()")
    assert python_files() and not calls, calls


def test_no_statements_joined_by_semicolons():
    joined = []
    for path in python_files():
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type == tokenize.OP and token.string == ";":
                joined.append(f"{path.relative_to(ROOT)}:{token.start[0]}")
    assert not joined, joined


def test_pyproject_has_what_the_registry_reads():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = config["project"], config["tool"]["comfy"]
    assert project["name"] and project["version"] and project["description"] and project["license"]
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    icon = comfy["Icon"].rsplit("/main/", 1)[-1]
    assert (ROOT / icon).is_file(), f"the Icon URL points at {icon}, which isn't in the repository"
