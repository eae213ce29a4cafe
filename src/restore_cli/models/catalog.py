"""What ``restore`` knows by name, without importing torch: tasks, methods (their solver classes load
lazily), the task options (one table for ``restore <task>``'s options and a suite's task keys), the
capability check (method x task x model), the noise unit of ``--noise-sigma`` and the prompt rule.  Usage errors found here come before torch is imported, so they are fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

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


# `--then jpeg:Q` (PiGDM Sec. 5.3, composed measurements): the tasks whose measurement may be JPEG-compressed
# afterwards; methods that accept the non-linear JPEG task accept the composition
THEN_TASKS = ("inpaint", "deblur", "superres", "hdr")
JPEG_QUALITY_RANGE = (2, 100)


# -- the task options: one table for `restore <task>`'s options and a suite's task keys ------------------

@dataclass(frozen=True)
class TaskOption:
    """One option of the task operators: ``restore <task> --kernel-sigma`` and a suite's ``kernel_sigma``.

    ``applies``: ``(kind option, kinds)`` when the option belongs to some kernels or masks only (a file's kind
    is ``"file"``); given with another kind it is a usage error.  ``recorded``: the default is recorded in a
    run's task options even when not given (:data:`TASK_DEFAULTS`, as runs always recorded it); the others
    appear only when given, so earlier runs and suite cells keep their records and keys."""
    name: str  # the Python name and suite key; the CLI's flag is --name-with-dashes
    tasks: tuple[str, ...]
    type: str  # "str", "int", "float", "path" or "pair" (LO,HI on the command line, [lo, hi] in a suite)
    default: Any  # what the operator uses when the option is not given (None: nothing)
    help: str  # what it is, without its default and unit (added by :meth:`cli_help`)
    unit: str = ""  # of the default and the values: "px", "x", "of the pixels", ...
    applies: tuple[str, tuple[str, ...]] | None = None
    choices: tuple[str, ...] = ()  # the values it takes (a kind option: its kinds, or a PATH)
    path_ok: bool = False  # a kind option whose value may also be a file
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    recorded: bool = False
    default_text: str | None = None  # the default as the help says it, where it is not just the value
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def say_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        d = self.default
        text = ",".join(f"{v:g}" for v in d) if isinstance(d, (tuple, list)) else f"{d:g}" if isinstance(d, float) else str(d)
        return f"{text}{'' if not self.unit or self.unit == 'x' else ' '}{self.unit}"

    def cli_help(self) -> str:
        """The option's help: what it is, which kernels or masks it applies to, its default with its unit."""
        parts = []
        if self.applies is not None:
            kind, kinds = self.applies
            others = [k for k in TASK_OPTION[kind].choices if k not in kinds]
            parts.append(f"not --{kind} {'/'.join(others)}" if "file" in kinds and others
                         else f"--{kind} {'/'.join(kinds)}")
        if self.default is not None or self.default_text is not None:
            parts.append(f"default {self.say_default()}")
        return self.help + (f" ({'; '.join(parts)})." if parts else ".")


_KERNELS = ("gaussian", "motion", "uniform", "nonlinear")
_MASKS = ("box", "random", "freeform")
TASK_OPTIONS: tuple[TaskOption, ...] = (
    TaskOption("mask", ("inpaint",), "str", "box", "box (half the side), random, freeform, or a PATH, white = missing",
               choices=_MASKS, path_ok=True, recorded=True),
    TaskOption("box_placement", ("inpaint",), "str", "random", "Box position: random (DPS's 1/16 margin) or "
               "center", applies=("mask", ("box",)), choices=("random", "center")),
    TaskOption("missing", ("inpaint",), "float", 0.7, "Share of the pixels missing", applies=("mask", ("random",)),
               lo=0.0, hi=1.0, hi_open=True),
    TaskOption("coverage", ("inpaint",), "pair", (0.2, 0.3), "LO,HI: share of the pixels the strokes cover",
               applies=("mask", ("freeform",)), lo=0.0, hi=1.0, lo_open=True, hi_open=True, metavar="LO,HI"),
    TaskOption("kernel", ("deblur",), "str", "gaussian", "gaussian, motion, uniform (9x9), nonlinear, or a "
               ".npy or image PATH", choices=_KERNELS, path_ok=True, recorded=True),
    TaskOption("kernel_size", ("deblur",), "int", 61, "Kernel side", "px", applies=("kernel", ("gaussian", "motion")),
               lo=1, hi=1025, recorded=True),
    TaskOption("kernel_sigma", ("deblur",), "float", 3.0, "Gaussian kernel's std", "px",
               applies=("kernel", ("gaussian",)), lo=0.0, hi=1000.0, lo_open=True),
    TaskOption("motion_intensity", ("deblur",), "float", 0.5, "Camera shake, 0-1", applies=("kernel", ("motion",)),
               lo=0.0, hi=1.0),
    TaskOption("border", ("deblur",), "str", "reflect", "reflect, circular or zeros",
               applies=("kernel", ("gaussian", "motion", "uniform", "file")),
               choices=("reflect", "circular", "zeros"), recorded=True),
    TaskOption("kernel_model", ("deblur",), "path", None, "BKSE's GOPRO_wVAE.pth", applies=("kernel", ("nonlinear",))),
    TaskOption("scale", ("superres",), "int", 4, "Integer factor", "x", lo=1, hi=64, recorded=True),
    TaskOption("filter", ("superres",), "str", "bicubic", "bicubic or avgpool", choices=("bicubic", "avgpool"),
               recorded=True),
    TaskOption("oversample", ("phase-retrieval",), "float", 2.0, "Fourier oversampling: pads oversample/8 of the "
               "side each way", lo=0.0, hi=16.0, lo_open=True, recorded=True),
    TaskOption("hdr_scale", ("hdr",), "float", 2.0, "Scale before clipping", "x", lo=0.0, hi=1000.0, lo_open=True,
               recorded=True),
    TaskOption("quality", ("jpeg",), "int", 10, "Quality 2-100", lo=JPEG_QUALITY_RANGE[0], hi=JPEG_QUALITY_RANGE[1], recorded=True,
               default_text="10; --measured: the file's"),
    TaskOption("rounding", ("jpeg",), "str", "ste", "ste or cubic (README)", choices=("ste", "cubic"), recorded=True),
    TaskOption("then", THEN_TASKS, "str", None, "Then JPEG-compress: jpeg:Q "
               "(e.g. jpeg:10)"),
)
TASK_OPTION = {o.name: o for o in TASK_OPTIONS}


def task_options(task: str) -> list[TaskOption]:
    """The options of a task's operator, in the table's order."""
    return [o for o in TASK_OPTIONS if task in o.tasks]


# the task options' defaults (the CLI's): a run records its options merged over these, so a rerun through
# the CLI and one through the library with the same effective options compare equal
TASK_DEFAULTS: dict[str, dict] = {t: {o.name: o.default for o in task_options(t) if o.recorded} for t in ALL_TASKS}


def task_default(task: str, name: str):
    """What the operator of ``task`` uses for option ``name`` when it is not given."""
    o = TASK_OPTION[name]
    if task not in o.tasks:
        raise KeyError(f"{task} has no option {name}")
    return o.default


def kind_of(value) -> str:
    """A ``mask`` or ``kernel`` value's kind: its name, or ``"file"`` for a path."""
    return value if value in _MASKS or value in _KERNELS else "file"


def check_task_options(task: str, opts: dict, suite: bool = False) -> None:
    """The task options' names, types, ranges, choices, and whether each applies to the kernel or mask chosen
    (torch-free).  ``suite``: say them as a suite's keys (``kernel_sigma``), not as options (``--kernel-sigma``).
    A ``pair`` given as text ("0.1,0.2", the command line's) becomes ``[0.1, 0.2]`` in ``opts``."""
    known = {o.name: o for o in task_options(task)}
    where = f"task {task}: " if suite else ""
    for key in list(opts):
        if key not in known:
            if key in TASK_OPTION:
                raise UsageError(f"{where}{key if suite else TASK_OPTION[key].flag} applies to "
                                 f"{', '.join(TASK_OPTION[key].tasks)}, not {task}")
            raise UsageError(f"{where}unknown option(s) {key}; {task}'s are {', '.join(known) or 'none'}")
        o, v = known[key], opts[key]
        name = o.name if suite else o.flag
        if v is None:
            continue
        if o.path_ok and hasattr(v, "__fspath__"):  # a pathlib.Path from Python (restore_cli.restore): its text
            v = opts[key] = os.fspath(v)
        if o.type == "pair":
            if isinstance(v, str):
                try:
                    v = [float(x) for x in v.replace(":", ",").split(",")]
                except ValueError:
                    v = None
            ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float))
                  and not isinstance(x, bool) for x in v) and o.lo < v[0] <= v[1] < o.hi)
            if not ok:
                raise UsageError(f"{where}{name} must be {o.metavar or '[lo, hi]'} with {o.lo:g} < lo <= hi < {o.hi:g} "
                                 f"({o.help.split(': ', 1)[-1]}), got {opts[key]!r}")
            if isinstance(opts[key], str):
                opts[key] = v
        elif o.type in ("int", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (o.type == "int" and int(v) != v):
                raise UsageError(f"{where}{name} must be {'an integer' if o.type == 'int' else 'a number'}, got {v!r}")
            if not math.isfinite(v):
                raise UsageError(f"{where}{name} must be a finite number, got {v}")
            if o.lo is not None and (v <= o.lo if o.lo_open else v < o.lo):
                raise UsageError(f"{where}{name} must be {'>' if o.lo_open else '>='} {o.lo:g}, got {v:g}")
            if o.hi is not None and (v >= o.hi if o.hi_open else v > o.hi):
                raise UsageError(f"{where}{name} must be {'<' if o.hi_open else '<='} {o.hi:g}, got {v:g}")
        elif not isinstance(v, str):
            raise UsageError(f"{where}{name} must be text, got {v!r}")
        elif o.choices and not o.path_ok and v not in o.choices:
            raise UsageError(f"{where}{name} must be one of {', '.join(o.choices)}, got {v!r}")
    for key, value in opts.items():
        o = known[key]
        if o.applies is None or value is None:
            continue
        kind_key, kinds = o.applies
        kind = kind_of(opts.get(kind_key, known[kind_key].default))
        if kind not in kinds:
            k = known[kind_key]
            what = {"file": "a file", **{c: c for c in k.choices}}
            named = [f'"{x}"' if suite else x for x in kinds if x != "file"]
            only = (f"{k.name} = " if suite else f"{k.flag} ") + " or ".join(named)
            if "file" in kinds:
                only += f" or a {k.name} file"
            desc = {"coverage": " (the free-form mask's share of missing pixels)"}.get(key, "")
            raise UsageError(f"{where}{o.name if suite else o.flag} applies to {only} only{desc}, not "
                             f"{what.get(kind, kind)}")




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
# image.  The texts may say otherwise (PLoRG 000:252: sigma_y = 0.01 on images in [0, 1]): --noise-unit 01.  Operators add noise in restore's [0, 1] units: sigma_y = noise_sigma / scale.  The scale is
# each operator's residual_scale (tests/test_ops.py checks that they agree).
DEFAULT_NOISE_SIGMA = 0.01  # --noise-sigma's default, in the papers' units: DiffStateGrad's (its tables run every method there)
NOISE_UNITS = {"phase-retrieval": (1.0, "std of the noise on |FFT| of [0, 1] images (DAPS's phase retrieval)")}
DEFAULT_NOISE_UNIT = (2.0, "std of the noise on measurements of [-1, 1] images (the papers' codes)")


def default_noise_sigma(task: str, task_opts: dict | None = None) -> float:
    """``--noise-sigma``'s default for a task: 0 for a JPEG measurement (``restore jpeg``, ``--then jpeg:Q``), as
    PiGDM's JPEG runs are noiseless (the decoded file is the measurement); :data:`DEFAULT_NOISE_SIGMA` otherwise."""
    return 0.0 if task == "jpeg" or (task_opts or {}).get("then") is not None else DEFAULT_NOISE_SIGMA


# --noise-unit: the images a --noise-sigma's std is relative to; a std on [-1, 1] images is twice the same noise
# on [0, 1] images.  Unset, --noise-sigma is in the papers' units (noise_unit: [-1, 1], phase retrieval [0, 1]).
NOISE_UNIT_RANGES = {"pm1": 2.0, "01": 1.0}
NOISE_UNIT_NAMES = tuple(NOISE_UNIT_RANGES)


def noise_in_papers_units(task: str, value: float, unit: str, inverse: bool = False) -> float:
    """``value``, a std on ``unit`` images (``"pm1"``: [-1, 1], ``"01"``: [0, 1]), in the papers' units of
    ``task`` (:func:`noise_unit`); ``inverse``: the other way."""
    ratio = noise_unit(task)[0] / NOISE_UNIT_RANGES[unit]
    return value / ratio if inverse else value * ratio


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



