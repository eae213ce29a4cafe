"""What a run records: the environment (library versions) and the summary of per-image results."""

from __future__ import annotations

import math
import platform
import sys

import torch

from . import __version__

SCHEMA_VERSION = 2  # 2: config.method.overrides, config.warnings, status "pending"
METRIC_KEYS = ("psnr", "ssim", "lpips", "residual", "nfe", "n_backward", "seconds", "peak_memory_mb")


def environment() -> dict:
    import numpy
    import PIL

    env = {"restore": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "torch": torch.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__}
    for mod in ("diffusers", "transformers", "huggingface_hub", "safetensors", "skimage", "lpips"):
        try:
            env[mod] = __import__(mod).__version__ if mod != "lpips" else _dist_version("lpips")
        except Exception:  # noqa: BLE001
            env[mod] = None
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def mean_std(vals: list) -> dict:
    """Mean and population std of the finite numbers among ``vals`` (None where there are none)."""
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    return {"mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)), "n": len(vals)}


def summarize(records: list[dict]) -> dict:
    out = {}
    for k in METRIC_KEYS:
        out[k] = mean_std([r.get(k) for r in records if r.get("status") in ("ok", "skipped")])
    out["images"] = {s: sum(r.get("status") == s for r in records) for s in ("ok", "failed", "skipped", "pending")}
    return out
