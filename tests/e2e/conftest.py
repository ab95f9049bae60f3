"""Fixtures for the end-to-end and browser tests: one real ComfyUI server per test session.

Nothing here imports ComfyUI at collection time: the tests are collected (and skipped by the
top-level conftest, with the reason) when no ComfyUI checkout is found.

Model files in the server's base directory (``<base>/models``):
- ``diffusion_models/tiny_sd2_unet.safetensors``: a tiny random SD2-style UNet (tiny_files.py).
- ``diffusion_models/flux1-dev.safetensors``: the same tiny UNet under the FLUX workflow's name.
- ``vae/ae.safetensors``: a tiny random TAESD under the FLUX workflow's VAE name.
- ``diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors``, ``vae/wan_2.1_vae.safetensors``: a tiny
  random Wan 2.1 T2V model and Wan 2.1 VAE under the Wan workflow's names (tiny_files.py; only
  ComfyUI 0.33 loads them).
- ``checkpoints/sd_xl_base_1.0.safetensors``, ``text_encoders/clip_l.safetensors``,
  ``text_encoders/t5xxl_fp16.safetensors``, ``text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors``:
  EMPTY placeholders, so that the frontend's model lists contain the names the shipped workflows
  use. They are never loaded: SDXL/FLUX checkpoints and CLIP/T5/umT5 encoders exist only at full
  size (see test_workflows.py).
- ``input/sks_dog.png``: a 64x64 picture under the name the training workflows load.
Server logs of failed tests are copied to ``test-artifacts/e2e/``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .build_workflows import UMT5, WAN, WAN_VAE
from .server import REPO, ComfyServer, server_pythonpath

ARTIFACTS = REPO / "test-artifacts"
TINY_UNET = "tiny_sd2_unet.safetensors"
PLACEHOLDERS = (
    "checkpoints/sd_xl_base_1.0.safetensors",
    "text_encoders/clip_l.safetensors",
    "text_encoders/t5xxl_fp16.safetensors",
    f"text_encoders/{UMT5}",
)


def comfyui_path() -> Path:
    from tests.comfyui_env import find_comfyui

    path, why = find_comfyui()
    if path is None:
        pytest.skip(f"ComfyUI integration: {why}")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def save_log(server: ComfyServer, name: str) -> Path:
    folder = ARTIFACTS / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:150] + ".server.log")
    if server.log_path.exists():
        shutil.copyfile(server.log_path, target)
    return target


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny model files, written once per session and linked into every server's base dir."""
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -r requirements-test.txt)")
    comfyui_path()
    return write_model_files(tmp_path_factory.mktemp("tiny-models"))


def write_model_files(folder: Path) -> dict[str, Path]:
    """The tiny files populate() links into a server's base dir (ComfyUI must be importable)."""
    from . import tiny_files

    return {
        "unet": tiny_files.write_tiny_unet(folder / "tiny_sd2_unet.safetensors"),
        "taesd": tiny_files.write_tiny_taesd(folder / "tiny_taesd.safetensors"),
        "wan": tiny_files.write_tiny_wan(folder / "tiny_wan21_t2v.safetensors"),
        "wan_vae": tiny_files.write_tiny_wan_vae(folder / "tiny_wan21_vae.safetensors"),
        "png": tiny_files.write_png(folder / "sks_dog.png"),
    }


def populate(base: Path, files: dict[str, Path]) -> None:
    models = base / "models"
    links = {
        models / "diffusion_models" / TINY_UNET: files["unet"],
        models / "diffusion_models" / "flux1-dev.safetensors": files["unet"],
        models / "vae" / "ae.safetensors": files["taesd"],
        models / "diffusion_models" / WAN: files["wan"],
        models / "vae" / WAN_VAE: files["wan_vae"],
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target)
    for placeholder in PLACEHOLDERS:
        path = models / placeholder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (base / "input").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files["png"], base / "input" / "sks_dog.png")


def start_server(base: Path, files: dict[str, Path]) -> ComfyServer:
    populate(base, files)
    server = ComfyServer(comfyui_path(), base, server_pythonpath())
    try:
        return server.start()
    except Exception:
        save_log(server, f"startup-{base.name}")
        raise


@pytest.fixture(scope="session")
def comfy_session(tmp_path_factory, model_files):
    server = start_server(tmp_path_factory.mktemp("comfy-base"), model_files)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sdxl_adapter(comfy_session) -> str:
    """A real (small) SDXL T-LoRA file, rank 64 / min_rank 32, in the session server's loras
    folder under the name workflows/load_and_compare.json loads (what train_from_one_image
    writes first). Returns that name."""
    from tlora_nodes.tlora_core import TLoRA, TLoRAConfig, save_tlora

    from .build_workflows import LORA_FROM_A

    path = loras_dir(comfy_session) / LORA_FROM_A
    if not path.exists():
        config = TLoRAConfig(variant="tlora", rank=64, min_rank=32, schedule_power=1.0, model_family="sdxl")
        layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
        save_tlora(str(path), TLoRA.create(config, {layer: (64, 64)}, seed=0))
    return LORA_FROM_A


@pytest.fixture
def comfy(request, comfy_session):
    """The session's server; its log is saved under test-artifacts/e2e/ when the test fails."""
    if not comfy_session.alive():
        pytest.fail(f"the session's ComfyUI server died earlier.\n{comfy_session.log_tail()}")
    yield comfy_session
    if _failed(request):
        save_log(comfy_session, request.node.nodeid)


@pytest.fixture
def fresh_comfy(request, tmp_path, model_files):
    """A server of this test's own (for tests that kill it); always stopped, log kept on failure."""
    servers: list[ComfyServer] = []

    def start(base: Path | None = None) -> ComfyServer:
        server = start_server(base or tmp_path / f"base{len(servers)}", model_files)
        servers.append(server)
        return server

    yield start
    for i, server in enumerate(servers):
        server.stop()
        if _failed(request):
            save_log(server, f"{request.node.nodeid}-{i}")


def loras_dir(server: ComfyServer) -> Path:
    return server.base_dir / "models" / "loras"


def read_latent(server: ComfyServer, entry: dict):
    """A SaveLatent output ({filename, subfolder, type}) as a tensor."""
    from safetensors.torch import load_file

    path = server.base_dir / entry["type"] / entry["subfolder"] / entry["filename"]
    return load_file(str(path))["latent_tensor"]

