"""Names -> tasks, methods and models, and the capability check (method x task x model).

Everything here is resolved before any download or model load, so that a bad
combination is a usage error (exit code 2) found at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import ops
from .config import ModelSpec
from .rng import Generators
from .solvers import DAPS, DPS, GMLDPS, P2L, PSLD, PiGDM, PosteriorMean, PseudoInverse, ReSample, Solver


class UsageError(ValueError):
    """A bad command line: unknown name, incompatible choice, bad value (exit code 2)."""


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type[Solver]
    spaces: tuple[str, ...]  # model kinds it runs on: pixel, latent
    tasks: tuple[str, ...]
    steps_key: str  # the hyperparameter that --steps sets
    nfe: str  # network evaluations per image at the defaults
    summary: str
    default_model: str = ""  # the models.toml default it runs on without --model: its first space, or "analytic"

    @property
    def default_kind(self) -> str:
        return self.default_model or self.spaces[0]


ALL_TASKS = ("inpaint", "deblur", "superres", "phase-retrieval", "hdr")
LINEAR_TASKS = ("inpaint", "deblur", "superres")

METHODS: dict[str, MethodInfo] = {
    "dps": MethodInfo("dps", DPS, ("pixel", "latent"), ALL_TASKS, "steps", "1000",
                      "Diffusion Posterior Sampling (Chung et al. 2023); on a latent model: Latent DPS (P2L Eq. 6)"),
    "pigdm": MethodInfo("pigdm", PiGDM, ("pixel",), ("inpaint", "deblur", "superres", "hdr"), "steps", "100",
                        "Pseudoinverse-guided diffusion (Song et al. 2023)"),
    "daps": MethodInfo("daps", DAPS, ("pixel",), ALL_TASKS, "annealing_steps", "1000 (200 x 5 ODE)",
                       "Decoupled annealing posterior sampling (Zhang et al. 2024)"),
    "latent-dps": MethodInfo("latent-dps", DPS, ("latent",), ALL_TASKS, "steps", "1000",
                             "Latent DPS (P2L Eq. 6): DPS through the decoder"),
    "gml-dps": MethodInfo("gml-dps", GMLDPS, ("latent",), ALL_TASKS, "steps", "1000",
                          "Latent DPS + autoencoder fixed-point term (P2L Eq. 44)"),
    "psld": MethodInfo("psld", PSLD, ("latent",), LINEAR_TASKS, "steps", "1000",
                       "Posterior sampling with latent diffusion, gluing term (Rout et al. 2023)"),
    "resample": MethodInfo("resample", ReSample, ("latent",), ALL_TASKS, "steps", "~665 (500 DDIM + look-ahead)",
                           "Hard data consistency + stochastic resampling (Song et al. 2024)"),
    "p2l": MethodInfo("p2l", P2L, ("latent",), LINEAR_TASKS, "steps", "1000 (+K prompt-tuning passes per step; K = 1-5, Table 6)",
                      "Prompt tuning + LDPS + projection onto the encoder's range (Chung et al. 2024)"),
    # classical baselines (no learned prior, no steps)
    "pseudo-inverse": MethodInfo("pseudo-inverse", PseudoInverse, ("pixel",), ("inpaint", "deblur", "superres", "hdr"),
                                 "steps", "0", "Baseline: A^+ y (zero-filled for inpainting; PiGDM's h^+ for HDR)",
                                 default_model="analytic"),
    "posterior-mean": MethodInfo("posterior-mean", PosteriorMean, ("pixel",), LINEAR_TASKS, "steps", "0",
                                 "Baseline: exact posterior mean under an analytic Gaussian model (Wiener filter)",
                                 default_model="analytic"),
}


@dataclass(frozen=True)
class TaskInfo:
    name: str
    summary: str
    measured: bool  # has a measured mode
    default_restarts: int = 1


TASKS: dict[str, TaskInfo] = {
    "inpaint": TaskInfo("inpaint", "fill in missing pixels (box, random, free-form or a mask file)", True),
    "deblur": TaskInfo("deblur", "remove Gaussian, motion, uniform or a given blur", True),
    "superres": TaskInfo("superres", "upsample by an integer factor (bicubic or average-pool model)", True),
    "phase-retrieval": TaskInfo("phase-retrieval", "recover an image from its Fourier magnitude", False, 4),
    "hdr": TaskInfo("hdr", "undo clipping of an image scaled by a factor (DAPS's HDR)", True),
}


def check_method(method: str, task: str, model: ModelSpec) -> MethodInfo:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    info = METHODS[method]
    if task not in info.tasks:
        raise UsageError(f"method {method!r} does not support {task!r} (it supports: {', '.join(info.tasks)})")
    if model.kind not in info.spaces:
        raise UsageError(f"method {method!r} needs a {' or '.join(info.spaces)} model; "
                         f"{model.name!r} is a {model.kind} model")
    if info.cls is PosteriorMean and model.source != "analytic":
        raise UsageError(f"method {method!r} needs an analytic Gaussian model (gaussian, gaussian-grey, "
                         f"gaussian-fmnist); {model.name!r} is not one")
    return info


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
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UsageError(f"--set {key}: must be >= 0, got {value}")
        out[key] = value
    return out


# --noise-sigma is in the papers' units: the std their codes add to measurements of images in [-1, 1]
# (DPS, DAPS, PSLD, ReSample, DiffStateGrad), except phase retrieval, where DAPS measures the [0, 1]
# image.  Operators add noise in restore's [0, 1] units: sigma_y = noise_sigma / scale.  The scale is
# each operator's residual_scale (tests/test_ops.py checks that they agree).
NOISE_UNITS = {"phase-retrieval": (1.0, "std of the noise on |FFT| of [0, 1] images (DAPS's phase retrieval)")}
DEFAULT_NOISE_UNIT = (2.0, "std of the noise on measurements of [-1, 1] images (the papers' codes)")


def noise_unit(task: str) -> tuple[float, str]:
    """``(scale, description)`` of ``--noise-sigma`` for ``task``: ``sigma_y([0, 1] units) = noise_sigma / scale``."""
    return NOISE_UNITS.get(task, DEFAULT_NOISE_UNIT)


def resolve_prompt(model: ModelSpec, method: str, prompt: str | None = None) -> str | None:
    """The prompt a text-conditioned model runs with: ``prompt`` if given, else the model's
    ``default_prompt``, except PSLD on a model with a text encoder (Stable Diffusion), which uses the
    empty prompt as PSLD's code does.  None for a model without text conditioning."""
    text_conditioned = model.default_prompt is not None or any(
        c in model.components for c in ("text_encoder", "class_prompts"))
    if prompt is not None:
        if not text_conditioned:
            raise UsageError(f"--prompt: model {model.name!r} is not text-conditioned")
        return prompt
    if not text_conditioned:
        return None
    if method == "psld" and "text_encoder" in model.components:
        return ""
    return model.default_prompt or ""


def build_operator(task: str, opts: dict, shape: tuple[int, int, int], gens: Generators, noise_sigma: float) -> ops.Operator:
    """The task's operator for a batch of images of ``shape`` (per-image random parameters from ``gens``);
    ``noise_sigma`` in the papers' units (:func:`noise_unit`)."""
    sigma_y = noise_sigma / noise_unit(task)[0]
    c, h, w = shape
    if task == "inpaint":
        mask = opts.get("mask", "box")
        if mask == "box":
            m = ops.box_mask(h, w, gens, placement=opts.get("box_placement", "random"))
        elif mask == "random":
            m = ops.random_mask(h, w, gens, missing=opts.get("missing", 0.7))
        elif mask == "freeform":
            m = ops.freeform_mask(h, w, gens)
        else:
            m = ops.mask_from_file(Path(mask), h, w).expand(len(gens), -1, -1, -1)
            mask = "file"
        return ops.Inpainting(m, c, sigma_y, kind=mask)
    if task == "deblur":
        kernel = opts.get("kernel", "gaussian")
        size = int(opts.get("kernel_size", 61))
        if kernel == "gaussian":
            k = ops.gaussian_kernel(size, float(opts.get("kernel_sigma", 3.0)))
        elif kernel == "motion":
            k = ops.motion_kernel(gens, size, float(opts.get("motion_intensity", 0.5)))
        elif kernel == "uniform":
            k = ops.uniform_kernel(int(opts.get("kernel_size_uniform", 9)))
        else:
            k, kernel = ops.kernel_from_file(Path(kernel)), "file"
        return ops.Blur(k, shape, sigma_y, border=opts.get("border", "reflect"), kind=kernel)
    if task == "superres":
        return ops.SuperResolution(shape, int(opts.get("scale", 4)), opts.get("filter", "bicubic"), sigma_y)
    if task == "phase-retrieval":
        return ops.PhaseRetrieval(shape, float(opts.get("oversample", 2.0)), sigma_y)
    if task == "hdr":
        return ops.HDR(shape, float(opts.get("hdr_scale", 2.0)), sigma_y)
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
