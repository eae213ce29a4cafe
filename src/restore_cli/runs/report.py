"""What a run records: the environment (library versions) and the summary of per-image results."""

from __future__ import annotations

import functools
import math
import platform
import sys

import torch

from ..version import __version__

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
    env["restore_source"] = source_revision()
    return env


@functools.cache
def source_revision() -> dict | None:
    """The git commit restore's code was run from, and whether its files differed from it (``dirty``),
    when the package lives in a git work tree (a clone installed with ``pip install -e``); None for an
    installed release, whose ``restore`` version says it.  Asked once per process."""
    from pathlib import Path

    return git_revision(Path(__file__).resolve().parents[1])  # the restore_cli package


def git_revision(folder) -> dict | None:
    """``{"commit", "dirty"}`` of the git work tree whose tracked files include ``folder/__init__.py``
    (dirty: tracked files under ``folder`` differ from the commit); None when git is missing or the
    files are not tracked there (an installed copy, even in a virtual environment inside a repository)."""
    import os
    import subprocess
    from pathlib import Path

    folder = Path(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=10, env=env)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode:
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        if head.returncode or dirty.returncode:
            return None
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


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
