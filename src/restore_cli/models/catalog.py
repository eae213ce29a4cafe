"""What ``restore`` knows by name, without importing torch: tasks, methods (their solver classes load
lazily), the capability check (method x task x model), the noise unit of ``--noise-sigma`` and the
prompt rule.  Usage errors found here come before torch is imported, so they are fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .config import ModelSpec


@dataclass(frozen=True)
class MethodInfo:
    name: str
    solver: str  # the class in restore_cli.solvers (imported when first needed: this module is torch-free)
    spaces: tuple[str, ...]  # model kinds it runs on: pixel, latent
    tasks: tuple[str, ...]
    steps_key: str  # the hyperparameter that --steps sets
    nfe: str  # network evaluations per image at the defaults
    summary: str
    default_model: str = ""  # the models.toml default it runs on without --model: its first space, or "analytic"
    gradient_guided: bool = True  # takes a measurement gradient (DiffStateGrad applies); = the solver class's

    @property
    def default_kind(self) -> str:
        return self.default_model or self.spaces[0]

    @property
    def cls(self):
        """The solver class (imports torch and the solvers on first use)."""
        from .. import solvers

        return getattr(solvers, self.solver)


ALL_TASKS = ("inpaint", "deblur", "superres", "phase-retrieval", "hdr", "jpeg")
LINEAR_TASKS = ("inpaint", "deblur", "superres")

METHODS: dict[str, MethodInfo] = {
    "dps": MethodInfo("dps", "DPS", ("pixel", "latent"), ALL_TASKS, "steps", "1000",
                      "Diffusion Posterior Sampling (Chung et al. 2023); on a latent model: Latent DPS (P2L Eq. 6)"),
    "pigdm": MethodInfo("pigdm", "PiGDM", ("pixel",), ("inpaint", "deblur", "superres", "hdr", "jpeg"), "steps", "100",
                        "Pseudoinverse-guided diffusion (Song et al. 2023)"),
    "daps": MethodInfo("daps", "DAPS", ("pixel", "latent"), ALL_TASKS, "annealing_steps",
                       "1000 (200 x 5 ODE); latent 100 (50 x 2 ODE)",
                       "Decoupled annealing posterior sampling (Zhang et al. 2024); on a latent model: latent DAPS"),
    "latent-daps": MethodInfo("latent-daps", "LatentDAPS", ("latent",), ALL_TASKS, "annealing_steps", "100 (50 x 2 ODE)",
                              "Latent DAPS (Zhang et al. 2024, code's LatentDAPS): annealing on z, HMC through the decoder"),
    "latent-dps": MethodInfo("latent-dps", "DPS", ("latent",), ALL_TASKS, "steps", "1000",
                             "Latent DPS (P2L Eq. 6): DPS through the decoder"),
    "gml-dps": MethodInfo("gml-dps", "GMLDPS", ("latent",), ALL_TASKS, "steps", "1000",
                          "Latent DPS + autoencoder fixed-point term (P2L Eq. 44)"),
    "psld": MethodInfo("psld", "PSLD", ("latent",), LINEAR_TASKS, "steps", "1000",
                       "Posterior sampling with latent diffusion, gluing term (Rout et al. 2023)"),
    "resample": MethodInfo("resample", "ReSample", ("latent",), ALL_TASKS, "steps", "~665 (500 DDIM + look-ahead)",
                           "Hard data consistency + stochastic resampling (Song et al. 2024)"),
    "p2l": MethodInfo("p2l", "P2L", ("latent",), LINEAR_TASKS, "steps", "1000 (+K prompt-tuning passes per step; K = 1-5, Table 6)",
                      "Prompt tuning + LDPS + projection onto the encoder's range (Chung et al. 2024)"),
    "ddrm": MethodInfo("ddrm", "DDRM", ("pixel",), LINEAR_TASKS, "steps", "20",
                       "Denoising diffusion restoration models, sampling in H's SVD (Kawar et al. 2022)",
                       gradient_guided=False),
    "diffpir": MethodInfo("diffpir", "DiffPIR", ("pixel",), LINEAR_TASKS, "steps", "99 (100 timesteps; the last is not evaluated)",
                          "Plug-and-play: exact proximal data step + zeta-mixed DDIM (Zhu et al. 2023)",
                          gradient_guided=False),
    "dds": MethodInfo("dds", "DDS", ("pixel",), LINEAR_TASKS, "steps", "100",
                      "Decomposed diffusion sampler: 5 CG steps on data consistency per DDIM step (Chung et al. 2024)",
                      gradient_guided=False),
    # classical baselines (no learned prior, no steps)
    "pseudo-inverse": MethodInfo("pseudo-inverse", "PseudoInverse", ("pixel",), ("inpaint", "deblur", "superres", "hdr", "jpeg"),
                                 "steps", "0", "Baseline: A^+ y (zero-filled for inpainting; PiGDM's h^+ for HDR, the decoded image for JPEG)",
                                 default_model="analytic", gradient_guided=False),
    "posterior-mean": MethodInfo("posterior-mean", "PosteriorMean", ("pixel",), LINEAR_TASKS, "steps", "0",
                                 "Baseline: exact posterior mean under an analytic Gaussian model (Wiener filter)",
                                 default_model="analytic", gradient_guided=False),
    "posterior-sample": MethodInfo("posterior-sample", "PosteriorSample", ("pixel",), LINEAR_TASKS, "steps", "0",
                                   "Baseline: exact posterior sample under an analytic Gaussian model (Matheron's rule; "
                                   "with --samples N, the reference mean and std map)",
                                   default_model="analytic", gradient_guided=False),
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
    "jpeg": TaskInfo("jpeg", "undo JPEG compression (a quality factor, or a real .jpg's own tables with --measured)", True),
}


# the task options' defaults (the CLI's): a run records its options merged over these, so a rerun through
# the CLI and one through the library with the same effective options compare equal
TASK_DEFAULTS: dict[str, dict] = {
    "inpaint": {"mask": "box"},
    "deblur": {"kernel": "gaussian", "kernel_size": 61, "border": "reflect"},
    "superres": {"scale": 4, "filter": "bicubic"},
    "phase-retrieval": {"oversample": 2.0},
    "hdr": {"hdr_scale": 2.0},
    "jpeg": {"quality": 10, "rounding": "ste"},  # PiGDM Table 4's middle quality factor (5, 10, 20) and its Fig. 8's
}

# `--then jpeg:Q` (PiGDM Sec. 5.3, composed measurements): the tasks whose measurement may be JPEG-compressed
# afterwards; methods that accept the non-linear JPEG task accept the composition
THEN_TASKS = ("inpaint", "deblur", "superres", "hdr")
JPEG_QUALITY_RANGE = (2, 100)


def parse_then(text: str) -> tuple[str, int]:
    """``--then jpeg:Q`` -> ``("jpeg", Q)``; a UsageError for anything else."""
    name, _, raw = str(text).strip().partition(":")
    lo, hi = JPEG_QUALITY_RANGE
    if name.strip().lower() != "jpeg" or not raw.strip().isdigit() or not lo <= int(raw) <= hi:
        raise UsageError(f"--then expects jpeg:Q with an integer quality Q in {lo}..{hi} (e.g. jpeg:10), got {text!r}")
    return "jpeg", int(raw)


def check_method(method: str, task: str, model: ModelSpec) -> MethodInfo:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    info = METHODS[method]
    if task not in info.tasks:
        raise UsageError(f"method {method!r} does not support {task!r} (it supports: {', '.join(info.tasks)})")
    if model.kind not in info.spaces:
        raise UsageError(f"method {method!r} needs a {' or '.join(info.spaces)} model; "
                         f"{model.name!r} is a {model.kind} model")
    if info.name in ("posterior-mean", "posterior-sample") and model.source != "analytic":
        raise UsageError(f"method {method!r} needs an analytic Gaussian model (gaussian, gaussian-grey, "
                         f"gaussian-fmnist); {model.name!r} is not one")
    return info


# the blur kernels DDRM has an SVD for with every border (separable); the others need --border circular (ops/svd.py)
DDRM_SEPARABLE_KERNELS = ("gaussian", "uniform")
# --kernel nonlinear (BKSE's network) is neither linear nor has a pseudo-inverse: the methods that run any
# differentiable forward model (those that take phase retrieval) take it; PiGDM, PSLD, P2L and the baselines refuse
NONLINEAR_BLUR_METHODS = tuple(m for m, info in METHODS.items() if "phase-retrieval" in info.tasks)


def check_method_options(info: MethodInfo, task: str, task_opts: dict, diffstategrad: bool) -> None:
    """What a method needs of the run's other options: DiffStateGrad needs a measurement gradient; the
    non-linear blur needs a method for any differentiable forward model; DDRM needs the operator's SVD (a
    kernel file's separability is only known once it is read: ops.svd.svd_of)."""
    if diffstategrad and not info.gradient_guided:
        raise UsageError(f"--diffstategrad: method {info.name!r} takes no measurement gradient for DiffStateGrad "
                         f"to project (methods that do: {', '.join(m.name for m in METHODS.values() if m.gradient_guided)})")
    if task == "deblur" and task_opts.get("kernel") == "nonlinear" and info.name not in NONLINEAR_BLUR_METHODS:
        raise UsageError(f"method {info.name!r} needs a linear blur or a pseudo-inverse; --kernel nonlinear has "
                         f"neither (use {', '.join(NONLINEAR_BLUR_METHODS)})")
    if info.name == "ddrm" and task == "deblur":
        opts = {**TASK_DEFAULTS["deblur"], **task_opts}
        if opts["kernel"] == "motion" and opts["border"] != "circular":
            raise UsageError(f"ddrm needs the SVD of the blur: a motion kernel is not separable, so use "
                             f"--border circular (not {opts['border']}), or a gaussian or uniform kernel with any border")




# --noise-sigma is in the papers' units: the std their codes add to measurements of images in [-1, 1]
# (DPS, DAPS, PSLD, ReSample, DiffStateGrad), except phase retrieval, where DAPS measures the [0, 1]
# image.  Operators add noise in restore's [0, 1] units: sigma_y = noise_sigma / scale.  The scale is
# each operator's residual_scale (tests/test_ops.py checks that they agree).
DEFAULT_NOISE_SIGMA = 0.01  # --noise-sigma's default, in the papers' units: DiffStateGrad's (its tables run every method there)
NOISE_UNITS = {"phase-retrieval": (1.0, "std of the noise on |FFT| of [0, 1] images (DAPS's phase retrieval)")}
DEFAULT_NOISE_UNIT = (2.0, "std of the noise on measurements of [-1, 1] images (the papers' codes)")


def default_noise_sigma(task: str, task_opts: dict | None = None) -> float:
    """``--noise-sigma``'s default for a task: 0 for a JPEG measurement (``restore jpeg``, ``--then jpeg:Q``), as
    PiGDM's JPEG runs are noiseless (the decoded file is the measurement); :data:`DEFAULT_NOISE_SIGMA` otherwise."""
    return 0.0 if task == "jpeg" or (task_opts or {}).get("then") is not None else DEFAULT_NOISE_SIGMA


def noise_unit(task: str) -> tuple[float, str]:
    """``(scale, description)`` of ``--noise-sigma`` for ``task``: ``sigma_y([0, 1] units) = noise_sigma / scale``."""
    return NOISE_UNITS.get(task, DEFAULT_NOISE_UNIT)


DAPS_SD_PROMPT = "a natural looking image"  # the DAPS code's Stable Diffusion prompt


def resolve_prompt(model: ModelSpec, method: str, prompt: str | None = None) -> str | None:
    """The prompt a text-conditioned model runs with: ``prompt`` if given, else the model's
    ``default_prompt``, except on a model with a text encoder (Stable Diffusion): PSLD uses the empty
    prompt as PSLD's code does, and DAPS / latent DAPS "a natural looking image", the DAPS code's
    (``configs/model/stable-diffusion-v1.5.yaml``; the solvers.daps docstring).  None for a model
    without text conditioning."""
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
    if method in ("daps", "latent-daps") and "text_encoder" in model.components:
        return DAPS_SD_PROMPT
    return model.default_prompt or ""



