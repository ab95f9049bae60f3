"""Shared set-up for the benchmarks: find ComfyUI, import the pack, build full-size models.

Benchmarks are scripts, not tests. They import ComfyUI at run time from a checkout (never copied
into this repository) and the pack as the package ``tlora_nodes``, the way ComfyUI imports it.
Models are ComfyUI's own classes at their real sizes with random weights: the timings depend on
the architecture and the resolution, not on what the weights learned.
"""

from __future__ import annotations

import argparse
import logging
import contextlib
import copy
import datetime
import importlib
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tlora_nodes"

# The real unet_config of each architecture (comfy/model_detection.py), dtype added at build.
UNET_CONFIGS = {
    "sd15": dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
        use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1,
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        use_temporal_attention=False, use_temporal_resblock=False,
    ),
    "sdxl": dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
        num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
        transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
        num_heads=-1, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
        use_temporal_attention=False, use_temporal_resblock=False,
    ),
}
# SDXL's layer graph at 1/10 of its width (context 256 wide): the same 560 adapted projections in the same blocks, so
# the same number of ops, autograd nodes and Python calls per step, at a fraction of the FLOPs.
# At a small resolution its step time on a CPU is the host-side cost of an SDXL step (what an
# H100 step is bound by, bench/RESULTS.md), measurable without a GPU.
UNET_CONFIGS["sdxl-host"] = dict(UNET_CONFIGS["sdxl"], model_channels=32, num_head_channels=16, context_dim=256)
# Qwen-Image (20B) at its real width: 3072 = 24 heads x 128, text 3584 wide; ``--blocks`` of its 60
# double-stream blocks (the full model is beyond this machine; per-block figures extrapolate).
UNET_CONFIGS["qwen-image"] = dict(image_model="qwen_image", in_channels=64, out_channels=16, patch_size=2, num_layers=60,
                                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                                  axes_dims_rope=(16, 56, 56))
CONTEXT = {"sd15": (77, 768), "sdxl": (77, 2048), "sdxl-host": (77, 256), "qwen-image": (77, 3584)}
CONFIG_CLASSES = {"sd15": "SD15", "sdxl": "SDXL", "sdxl-host": "SDXL", "qwen-image": "QwenImage"}
BLOCKS_KEY = {"qwen-image": "num_layers"}  # the unet_config entry --blocks sets
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- ComfyUI and the pack ---------------------------------------------------------------------------
def _comfyui_env():
    """tests/comfyui_env.py (the pack's rule for finding ComfyUI, and the stand-ins for packages
    ComfyUI imports at start-up), loaded by path: the repository root is never put on sys.path,
    its ``nodes/`` would shadow ComfyUI's ``nodes`` module."""
    name = "tlora_bench_comfyui_env"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "comfyui_env.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def find_comfyui(explicit: str | None) -> Path:
    """--comfyui PATH, else the first tree of the pack's rule (scripts/comfyui.py: COMFYUI_PATH,
    the ComfyUI the pack sits in, ~/ComfyUI-<version>, newest first), else .bench/ComfyUI (the
    offline GPU run, prepare_gpu.sh)."""
    if explicit:
        return Path(explicit).resolve()
    found, _ = _comfyui_env().find_comfyui()
    if found is None and (ROOT / ".bench" / "ComfyUI" / "comfy" / "model_patcher.py").is_file():
        found = ROOT / ".bench" / "ComfyUI"
    if found is None:
        raise SystemExit("bench: no ComfyUI found; pass --comfyui PATH or set COMFYUI_PATH.")
    return Path(found).resolve()


def setup_comfyui(path: Path, device: str) -> None:
    """Make ``import comfy`` work in this process like ComfyUI's main.py would (CPU or CUDA), with
    the stand-ins the tests use where torchvision / torchaudio / spandrel can't be imported
    (their uses are lazy: benchmarks never reach them)."""
    for position, extra in enumerate([str(path), *_comfyui_env().extra_pythonpath()]):
        sys.path.insert(position, extra)
    from comfy.cli_args import args

    args.disable_api_nodes = True
    if device == "cpu":
        args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args once, at import)


def load_pack():
    """The pack as package ``tlora_nodes`` (tests/conftest.py does the same)."""
    global PACK_VERSION_AT_START
    if PACK_VERSION_AT_START is None:
        PACK_VERSION_AT_START = pack_version()  # the code this process runs, even if the tree changes later
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def start(args: argparse.Namespace) -> Path:
    """What every ComfyUI benchmark does first: logging, ComfyUI importable for the chosen device,
    torch's thread count, the pack loaded. Returns the ComfyUI checkout used."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    comfyui = find_comfyui(args.comfyui)
    setup_comfyui(comfyui, args.device)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    load_pack()
    return comfyui


def common_arguments(parser: argparse.ArgumentParser, resolution: int, steps: int, repeats: int) -> None:
    parser.add_argument("--arch", choices=sorted(UNET_CONFIGS), default="sd15")
    parser.add_argument("--blocks", type=int, default=None,
                        help="DiTs (qwen-image): keep only this many transformer blocks (full width); figures per block")
    parser.add_argument("--resolution", type=int, default=resolution, help="image side in pixels (latent = /8)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH, .bench/ComfyUI, ~/ComfyUI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="OUT", help="write the result as JSON here")
    parser.add_argument("--fast-init", action="store_true",
                        help="T-LoRA init without its SVD (random orthonormal factors, same shapes): timing-neutral, "
                             "saves minutes of set-up on a CPU")


def resolve_dtype(args: argparse.Namespace) -> torch.dtype:
    if args.dtype is None:
        args.dtype = "fp32" if args.device == "cpu" else "bf16"
    return DTYPES[args.dtype]


def torch_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench: --device cuda but torch sees no CUDA device.")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- models ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _fill(model: torch.nn.Module, seed: int) -> None:
    """Fan-in scaled random weights, unit norm scales, small biases (as tests/nodes/tiny.py):
    activations of order one through a deep random UNet, so nothing overflows in bf16."""
    g = None
    for name, p in model.named_parameters():
        if g is None:
            g = torch.Generator(device=p.device).manual_seed(seed)
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).div_(p[0].numel() ** 0.5))
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).mul_(0.02))
        else:
            p.fill_(1.0)


def unet_config(arch: str, blocks: int | None = None) -> dict:
    """The architecture's config; ``blocks`` keeps only that many transformer blocks (DiTs)."""
    config = dict(UNET_CONFIGS[arch])
    if blocks is not None:
        if arch not in BLOCKS_KEY:
            raise SystemExit(f"bench: --blocks applies to {', '.join(BLOCKS_KEY)} only.")
        config[BLOCKS_KEY[arch]] = blocks
    return config


def build_model(arch: str, dtype: torch.dtype, device: torch.device, seed: int = 0, blocks: int | None = None):
    """A full-width ComfyUI model of ``arch`` with random weights, built straight on ``device``."""
    import comfy.model_patcher
    import comfy.supported_models

    config_class = getattr(comfy.supported_models, CONFIG_CLASSES[arch])
    model_config = config_class(dict(unet_config(arch, blocks), dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=device)
    _fill(model.diffusion_model, seed)
    model.to(device)  # parameters are already in ``dtype``; model_sampling's tables stay float32
    model.eval()
    # offload = load device: every copy stays resident, so no timed run pays for moving weights
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    if hasattr(patcher, "cached_patcher_init"):
        # ComfyUI 0.33's TrainLoraNode clones with force_deepcopy, which rebuilds the model the way
        # its loader made it: here, a copy of these weights
        patcher.cached_patcher_init = (_rebuilt, (patcher,))
    return patcher


def _rebuilt(patcher, disable_dynamic: bool = True):
    return copy_model(patcher)


def copy_model(patcher):
    """An independent model (own weights) with the same values, for a contender that merges
    weights in place while the other keeps running on the original."""
    import comfy.model_patcher

    config = patcher.model.model_config  # shared: ComfyUI 0.33's model config can't be deep-copied
    base = copy.deepcopy(patcher.model, memo={id(config): config})
    return comfy.model_patcher.ModelPatcher(base, load_device=patcher.load_device,
                                            offload_device=patcher.offload_device)


def count_params(patcher) -> int:
    return sum(p.numel() for p in patcher.model.diffusion_model.parameters())


def conditioning(arch: str, resolution: int, seed: int, scale: float = 1.0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens, width = CONTEXT[arch]
    extra: dict = {}
    if arch.startswith("sdxl"):
        extra = {"pooled_output": torch.randn(batch, 1280, generator=g) * scale, "width": resolution,
                 "height": resolution, "target_width": resolution, "target_height": resolution}
    if arch == "qwen-image":
        extra = {"attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
    return [[torch.randn(batch, tokens, width, generator=g) * scale, extra]]


def latent_shape(resolution: int, arch: str = "sd15") -> tuple[int, ...]:
    if resolution % 16:
        raise SystemExit(f"bench: --resolution ({resolution}) must be a multiple of 16.")
    if arch == "qwen-image":  # its latents are 5-D: 16 channels, one frame
        return (16, 1, resolution // 8, resolution // 8)
    return (4, resolution // 8, resolution // 8)


def make_adapter(patcher, rank: int, min_rank: int, seed: int, svd_device: torch.device | None = None,
                 scale: float = 0.01):
    """A T-LoRA for this model's layers (nodes.model_kinds.find_targets), moved away from its init
    (where the Ortho delta is exactly zero)."""
    from tlora_nodes.nodes import model_kinds
    from tlora_nodes.tlora_core import TLoRA, TLoRAConfig

    targets = model_kinds.find_targets(patcher, "bench")
    config = TLoRAConfig(variant="tlora", rank=rank, min_rank=min_rank, model_family=model_kinds.kind_of(patcher, "bench").family)
    adapter = TLoRA.create(config, model_kinds.layer_shapes(targets), seed=seed, svd_device=svd_device)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return adapter.requires_grad_(False)


@contextlib.contextmanager
def fast_init():
    """TLoRALayer.reset_ without the SVD: random orthonormal Q rows and P columns (QR of a small
    Gaussian), λ > 0, frozen copies equal, as the real init leaves them. Same shapes, parameters
    and maths, other values: for timing only. The real init's full SVD of an (in, out) Gaussian
    costs minutes per model on a small CPU (SD1.5: 128 SVDs up to 1280x1280; SDXL: 560)."""
    from tlora_nodes.tlora_core.adapter import TLoRALayer

    original = TLoRALayer.reset_

    @torch.no_grad()
    def reset_(self, init, generator, svd_device=None):
        if self.variant == "vanilla":
            return original(self, init, generator, svd_device)
        r = self.rank
        q = torch.linalg.qr(torch.randn(self.in_features, r, generator=generator))[0].t()
        p = torch.linalg.qr(torch.randn(self.out_features, r, generator=generator))[0]
        lam = torch.rand(r, generator=generator) * 2.0 / r
        for name, value in (("q", q), ("p", p), ("lam", lam)):
            getattr(self, name).copy_(value)
            getattr(self, name + "0").copy_(value)

    TLoRALayer.reset_ = reset_
    try:
        yield
    finally:
        TLoRALayer.reset_ = original


# -- timing and machine facts -----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[float, object]:
    seconds, _, out = timed_cpu(device, fn)
    return seconds, out


def timed_cpu(device: torch.device, fn) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, result). On a shared CPU machine the CPU time
    is far less disturbed by other processes than the wall time."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def comfyui_version(path: Path) -> str:
    f = path / "comfyui_version.py"
    if f.is_file():
        for line in f.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def pack_version() -> str:
    """The pack's git commit, with "+changes" when nodes/ or tlora_core/ differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "nodes", "tlora_core"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


PACK_VERSION_AT_START = None


def machine_info(device: torch.device, comfyui: Path) -> dict:
    info = {
        "pack": PACK_VERSION_AT_START or pack_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "comfyui": comfyui_version(comfyui),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": memory_total_gib(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def write_json(path: str | None, result: dict) -> None:
    text = json.dumps(result, indent=2, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
