"""Names -> tasks, methods and models, and the capability check (method x task x model).

Everything here is resolved before any download or model load, so that a bad
combination is a usage error (exit code 2) found at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .. import ops
from ..errors import UsageError
from ..rng import Generators
from .catalog import TASK_DEFAULTS, MethodInfo, noise_unit, parse_then, task_default


def parse_set(items: list[str], info: MethodInfo) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs, validated against the method's hyperparameters and typed like their defaults."""
    out: dict[str, Any] = {}
    known = info.cls.defaults
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in known:
            raise UsageError(f"{info.name} has no hyperparameter {key!r}; known: {', '.join(sorted(known))}")
        default = known[key]
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise UsageError(f"--set {key}: {raw!r} is not a valid {type(default).__name__}") from None
        allowed = info.cls.choices.get(key)
        if allowed is not None and value not in allowed:
            raise UsageError(f"--set {key}: must be one of {', '.join(map(str, allowed))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--set {key}: must be a finite number, got {raw!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UsageError(f"--set {key}: must be >= 0, got {value}")
        out[key] = value
    return out


def build_operator(task: str, opts: dict, shape: tuple[int, int, int], gens: Generators, noise_sigma: float) -> ops.Operator:
    """The task's operator for a batch of images of ``shape`` (per-image random parameters from ``gens``);
    ``noise_sigma`` in the papers' units (:func:`noise_unit`).

    ``opts["then"] = "jpeg:Q"``: the task's operator followed by JPEG compression (:class:`ops.Composed`,
    noise added once, after both).  ``jpeg``: ``opts["tables"]`` (per image, ``[B, 2 or 1, 8, 8]``) and
    ``opts["subsampling"]`` from a real file replace ``quality`` (measured mode)."""
    sigma_y = noise_sigma / noise_unit(task)[0]
    opts = {**TASK_DEFAULTS.get(task, {}), **opts}

    def get(key: str):  # a task option, or its default (catalog.TASK_OPTIONS: the CLI's and the suites')
        return opts[key] if opts.get(key) is not None else task_default(task, key)

    if opts.get("then") is not None:
        _, quality = parse_then(opts["then"])
        first = build_operator(task, {k: v for k, v in opts.items() if k != "then"}, shape, gens, 0.0)
        mid = first.out_shape
        return ops.Composed(first, ops.JPEG(mid, quality, sigma_y=0.0), sigma_y)
    c, h, w = shape
    if task == "inpaint":
        mask = get("mask")
        if mask == "box":
            m = ops.box_mask(h, w, gens, placement=get("box_placement"))
        elif mask == "random":
            m = ops.random_mask(h, w, gens, missing=float(get("missing")))
        elif mask == "freeform":
            m = ops.freeform_mask(h, w, gens, coverage=tuple(get("coverage")))
        else:
            m = ops.mask_from_file(Path(mask), h, w).expand(len(gens), -1, -1, -1)
            mask = "file"
        return ops.Inpainting(m, c, sigma_y, kind=mask)
    if task == "deblur":
        kernel = get("kernel")
        if kernel == "nonlinear":  # BKSE's network (DPS Table 4), --kernel-model GOPRO_wVAE.pth
            if not opts.get("kernel_model"):
                raise UsageError("--kernel nonlinear needs --kernel-model PATH (BKSE's GOPRO_wVAE.pth)")
            return ops.load_nonlinear_blur(Path(opts["kernel_model"]), shape, gens, sigma_y)
        size = int(get("kernel_size"))
        if kernel == "gaussian":
            k = ops.gaussian_kernel(size, float(get("kernel_sigma")))
        elif kernel == "motion":
            k = ops.motion_kernel(gens, size, float(get("motion_intensity")))
        elif kernel == "uniform":
            k = ops.uniform_kernel(9)  # DDRM's and PiGDM's 9x9 box (--kernel-size is the gaussian and motion kernels')
        else:
            k, kernel = ops.kernel_from_file(Path(kernel)), "file"
        return ops.Blur(k, shape, sigma_y, border=get("border"), kind=kernel)
    if task == "superres":
        return ops.SuperResolution(shape, int(get("scale")), get("filter"), sigma_y)
    if task == "phase-retrieval":
        return ops.PhaseRetrieval(shape, float(get("oversample")), sigma_y)
    if task == "hdr":
        return ops.HDR(shape, float(get("hdr_scale")), sigma_y)
    if task == "jpeg":
        tables = opts.get("tables")
        return ops.JPEG(shape, int(get("quality")), None if tables is None else torch.as_tensor(tables),
                        opts.get("subsampling") or "4:2:0", get("rounding"), sigma_y=sigma_y)
    raise UsageError(f"unknown task {task!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device 'mps' requested but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}")
    return dev


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; use fp32, fp16 or bf16")
    if name == "fp16" and device.type == "cpu":
        raise UsageError("fp16 needs a cuda or mps device; use bf16 or fp32 on the CPU")
    if name == "bf16" and device.type == "mps":
        raise UsageError("bf16 is not supported on mps; use fp16 or fp32")
    return DTYPES[name]
