"""Where ComfyUI is, which Python runs it, and how a fresh machine gets one.

One rule, used by scripts/run.sh, scripts/test.sh, the tests (tests/comfyui_env.py) and the
benchmarks. Standard library only: it runs before any environment exists.

ComfyUI trees, looked up in this order (the first rule that finds any wins):
  1. $COMFYUI_PATH: one folder or several, separated by ':' (os.pathsep). Every entry must be a
     ComfyUI checkout.
  2. The ComfyUI this pack sits in (<ComfyUI>/custom_nodes/<pack>).
  3. ~/ComfyUI and every ~/ComfyUI-<version> folder, newest version first.
scripts/run.sh starts the first tree found, scripts/test.sh tests each of them.
None found: scripts/run.sh and scripts/test.sh clone the newest tested ComfyUI (TESTED[-1]) at
its release tag from $TLORA_COMFYUI_URL (default: upstream on GitHub) into ~/ComfyUI-<version>.

Environments (virtualenvs) live outside the repository, under
$TLORA_ENV_ROOT (default ~/.cache/tlora-nodes/envs), one per ComfyUI version and set of
requirements: ``comfyui-<version>-<hash>``, the hash covering that tree's requirements.txt, the
pack's requirements, the torch that was asked for and the Python version. A fresh clone of the
pack finds the environment built before; a changed requirements file builds a new one (and
removes environments of the same version unused for STALE_AFTER_S: one that another checkout or a
running process still uses is kept).

    python3 scripts/comfyui.py trees                 # the trees found: "<path>\t<version>\t<how found>"
    python3 scripts/comfyui.py python [TREE]         # the env's python for TREE (built if needed); no TREE: torch only
    python3 scripts/comfyui.py fetch [DEST]          # git clone the newest tested ComfyUI
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
# ComfyUI releases the whole suite runs against (CI: both). The last one is what a fresh machine gets.
TESTED = ("0.3.64", "0.33.0")
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI"
DEFAULT_TORCH = "torch==2.13.0"
# Never installed from a tree's requirements: the torch family comes from TORCH_SPEC alone (so no
# requirement can pull another, multi-GB build), and the optional extras that need torchvision
# (spandrel: upscale models) or GL libraries (PyOpenGL, comfy-angle: the GLSL nodes) are left out.
# The tests give ComfyUI stand-ins for torchvision, torchaudio and spandrel (tests/stubs).
EXCLUDED = ("torch", "torchvision", "torchaudio", "spandrel", "pyopengl", "comfy-angle")
# Imported by ComfyUI's server but missing from some trees' requirements.txt (0.3.64).
UNLISTED = ("requests",)


class ComfyUIError(RuntimeError):
    """Something the user must fix; the message says what."""


@dataclass(frozen=True)
class Tree:
    path: Path
    found_by: str

    @property
    def version(self) -> str:
        return comfyui_version(self.path)


def is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "folder_paths.py").is_file()


def comfyui_version(path: Path) -> str:
    file = path / "comfyui_version.py"
    match = re.search(r"""__version__\s*=\s*["']([^"']+)""", file.read_text()) if file.is_file() else None
    return match.group(1) if match else "unknown"


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-]", version))


def find_trees(environ: dict | None = None, home: Path | None = None, pack: Path = PACK) -> tuple[list[Tree], str]:
    """(trees, why none) by the rule in the module docstring; why is "" when trees were found."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    listed = environ.get("COMFYUI_PATH", "")
    if listed:
        trees, bad = [], []
        for entry in filter(None, listed.split(os.pathsep)):
            path = Path(entry).expanduser()
            (trees if is_comfyui(path) else bad).append(path)
        if bad:
            return [], f"COMFYUI_PATH entry {bad[0]} is not a ComfyUI checkout (no comfy/model_patcher.py)"
        return [Tree(p.resolve(), f"COMFYUI_PATH ({p})") for p in trees], ""
    if pack.parent.name == "custom_nodes" and is_comfyui(pack.parent.parent):
        return [Tree(pack.parent.parent.resolve(), f"the ComfyUI this pack sits in ({pack.parent.parent})")], ""
    candidates = [home / "ComfyUI", *home.glob("ComfyUI-*")]
    trees = [Tree(p.resolve(), f"~/{p.name}") for p in candidates if p.is_dir() and is_comfyui(p)]
    if trees:
        return sorted(trees, key=lambda t: _version_key(t.version), reverse=True), ""
    return [], "no ComfyUI found (set COMFYUI_PATH, or put the pack in ComfyUI/custom_nodes, or use ~/ComfyUI)"


# -- a fresh machine --------------------------------------------------------------------------------
def fetch(dest: Path | None = None, url: str | None = None, version: str = TESTED[-1]) -> Path:
    """git clone ComfyUI at the release tag of ``version`` into ``dest`` (default
    ~/ComfyUI-<version>); the URL is $TLORA_COMFYUI_URL or upstream. Raises ComfyUIError with one
    line of advice when it can't (no git, no network)."""
    url = url or os.environ.get("TLORA_COMFYUI_URL") or UPSTREAM
    dest = dest or Path.home() / f"ComfyUI-{version}"
    if is_comfyui(dest):
        return dest
    advice = (f"clone ComfyUI {version} yourself (git clone --branch v{version} {UPSTREAM} {dest}) or set "
              f"COMFYUI_PATH to your ComfyUI folder, then run this again")
    if shutil.which("git") is None:
        raise ComfyUIError(f"no ComfyUI found and git is not installed: {advice}")
    if dest.exists() and any(dest.iterdir()):
        raise ComfyUIError(f"no ComfyUI found and {dest} is not empty: {advice}")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = ["git", "clone", "--quiet", "--depth", "1", "--branch", f"v{version}", url, str(partial)]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0 or not is_comfyui(partial):
        shutil.rmtree(partial, ignore_errors=True)
        why = "timed out" if done is None else (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise ComfyUIError(f"could not clone ComfyUI {version} from {url} ({why}): {advice}")
    if dest.exists():
        dest.rmdir()
    partial.rename(dest)
    return dest


# -- environments -----------------------------------------------------------------------------------
def env_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlora-nodes" / "envs"
    return Path(os.environ.get("TLORA_ENV_ROOT") or default)


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=~!;\[ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def tree_requirements(tree: Path) -> list[str]:
    """The tree's requirements.txt without the torch family and the torch-pulling extras."""
    lines = (tree / "requirements.txt").read_text().splitlines() if (tree / "requirements.txt").is_file() else []
    wanted = [ln.strip() for ln in lines
              if ln.strip() and not ln.strip().startswith("#") and _requirement_name(ln) not in EXCLUDED]
    listed = {_requirement_name(ln) for ln in wanted}
    return wanted + [name for name in UNLISTED if name not in listed]


def _pack_requirements() -> list[str]:
    return [ln.strip() for ln in (PACK / "requirements-test.txt").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#") and not ln.strip().startswith("-r")] + \
           [ln.strip() for ln in (PACK / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#") and _requirement_name(ln) != "torch"]


def env_spec(tree: Path | None, torch_spec: str | None = None) -> tuple[str, list[str], str]:
    """(folder name, requirements to install after torch, torch spec) of a tree's environment."""
    torch_spec = torch_spec or os.environ.get("TORCH_SPEC") or DEFAULT_TORCH
    requirements = _pack_requirements() + (tree_requirements(tree) if tree else [])
    digest = hashlib.sha256("\n".join([sys.version.split()[0], torch_spec, *requirements]).encode()).hexdigest()[:12]
    label = f"comfyui-{comfyui_version(tree)}" if tree else "core"
    return f"{label}-{digest}", requirements, torch_spec


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two runs at once: the second waits for the first's build
        yield


def ensure_env(tree: Path | None, torch_spec: str | None = None, log=sys.stderr) -> Path:
    """The python of the environment for ``tree`` (None: torch and the pack's test needs only),
    built on first use and reused while the requirements stay the same."""
    name, requirements, torch_spec = env_spec(tree, torch_spec)
    root = env_root()
    folder = root / name
    python = folder / "bin" / "python"
    with _locked(root / f".{name}.lock"):
        if (folder / ".complete").is_file():
            (folder / ".complete").touch()  # its mtime is when it was last used (see prune_stale)
            return python
        print(f"tlora-nodes: building the environment {folder} (once per set of requirements)", file=log, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
        # torch first and on its own, then everything else constrained to it: nothing can pull
        # another (multi-GB) torch build
        subprocess.run([*pip, torch_spec], check=True)
        installed = subprocess.run([str(python), "-c", "import torch; print(torch.__version__.split('+')[0])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
        constraints = folder / "constraints.txt"
        constraints.write_text(f"torch=={installed}\n")
        (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
        subprocess.run([*pip, "-c", str(constraints), "-r", str(folder / "requirements.txt")], check=True)
        (folder / ".complete").write_text(name + "\n")
        prune_stale(root, folder)
    return python


STALE_AFTER_S = 2 * 24 * 3600


def prune_stale(root: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Remove the environments of ``keep``'s ComfyUI version built for other requirements and not
    used for STALE_AFTER_S (their ``.complete`` is touched on every use). Another checkout of the
    pack on other requirements, or a test run still inside one, keeps its environment: deleting
    it under a running process breaks that process. Returns what was removed."""
    label = keep.name.rsplit("-", 1)[0]
    cutoff = (time.time() if now is None else now) - STALE_AFTER_S
    removed = []
    for stale in sorted(root.glob(f"{label}-*")):
        if stale == keep or stale.is_symlink() or not stale.is_dir():
            continue
        if not re.fullmatch(rf"{re.escape(label)}-[0-9a-f]{{12}}", stale.name):
            continue
        marker = stale / ".complete"
        last_used = marker.stat().st_mtime if marker.is_file() else stale.stat().st_mtime
        if last_used < cutoff:
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def own_python(tree: Path) -> Path | None:
    """The Python a ComfyUI install already runs with, if it has one: its venv/.venv, or this
    interpreter when it already imports ComfyUI's requirements (a user's ComfyUI Python)."""
    for name in ("venv", ".venv"):
        candidate = tree / name / "bin" / "python"
        if candidate.is_file():
            return candidate
    probe = "import torch, torchsde, aiohttp, yarl, av, safetensors, einops, yaml, PIL, scipy, psutil"
    ok = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False).returncode == 0
    return Path(sys.executable) if ok else None


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "trees"
    try:
        if command == "trees":
            trees, why = find_trees()
            for tree in trees:
                print(f"{tree.path}\t{tree.version}\t{tree.found_by}")
            if not trees:
                print(why, file=sys.stderr)
            return 0
        if command == "python":
            print(ensure_env(Path(argv[1]).resolve() if len(argv) > 1 else None))
            return 0
        if command == "own-python":
            found = own_python(Path(argv[1]).resolve())
            print(found or "")
            return 0
        if command == "fetch":
            print(fetch(Path(argv[1]).expanduser().resolve() if len(argv) > 1 else None))
            return 0
    except ComfyUIError as err:
        print(f"tlora-nodes: {err}", file=sys.stderr)
        return 3
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
