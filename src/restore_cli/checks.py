"""Everything about a run that can be checked without torch or a model: names, option ranges, input and
output paths, and the output names each input will get.

``restore <task>`` calls :func:`check` before it imports torch, so a usage error (exit code 2) is
reported in well under a second, and :func:`restore_cli.run.resolve` calls it again for library
users.  Nothing here reads an image or writes a file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import (JPEG_QUALITY_RANGE, METHODS, TASKS, THEN_TASKS, MethodInfo, UsageError, check_method,
                      check_method_options, parse_then)
from .config import ConfigError, ModelSpec, load_registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
FITS = ("resize", "pad", "none")
RANK_MODES = ("channels", "paper", "reference")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("fp32", "fp16", "bf16")
LPIPS_NETS = ("alex", "vgg")
RESTART_RULES = ("residual", "oracle")
KINDS_OF = {"mask": ("box", "random", "freeform"), "kernel": ("gaussian", "motion", "uniform", "nonlinear")}
CHOICES = {"border": ("reflect", "circular", "zeros"), "filter": ("bicubic", "avgpool"), "rounding": ("ste", "cubic")}
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
# the files a run writes per input, besides metrics.json (see run.py)
OUTPUT_SUFFIXES = (".png", ".measurement.png", ".compare.png")
# ... and with --samples N > 1 (and <stem>.sample-K.png, K = 0 .. N-1: see output_names)
SAMPLES_SUFFIXES = (".std.png", ".std.npy")
# --samples: each is a whole diffusion run; a thousand pin the std map down to about 2 %
MAX_SAMPLES = 1000
# methods whose result is a function of the measurement: more than one sample would repeat it
DETERMINISTIC = ("pseudo-inverse", "posterior-mean")
# the largest --noise-sigma that means anything: a std of the whole [-1, 1] range
MAX_NOISE_SIGMA = 2.0


@dataclass
class RunConfig:
    task: str
    inputs: list[Path]
    method: str = "dps"
    model: str | None = None
    models_file: Path | None = None
    prompt: str | None = None
    output: Path = Path("restored")
    measured: bool = False
    diffstategrad: bool = False
    var_cutoff: float = 0.99
    period: int | None = None
    rank_mode: str = "channels"
    device: str = "auto"
    dtype: str = "fp32"
    steps: int | None = None
    seed: int = 0
    noise_sigma: float = 0.01
    batch_size: int = 1
    sets: list[str] = field(default_factory=list)
    task_opts: dict[str, Any] = field(default_factory=dict)
    fit: str = "resize"
    compare: bool = False
    overwrite: bool = False
    lpips_net: str = "alex"
    restarts: int | None = None
    restart_rule: str = "residual"
    low_memory: bool = False
    samples: int = 1
    argv: list[str] = field(default_factory=list)


@dataclass
class Checked:
    """What :func:`check` found: the model entry, the method, the images and each one's output stem."""
    model: ModelSpec
    method: MethodInfo
    images: list[Path]
    stems: list[str]
    restarts: int


def _number(name: str, value, lo=None, hi=None, *, lo_open=False, integer=False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    if integer and int(value) != value:
        raise UsageError(f"{name} must be an integer, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise UsageError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise UsageError(f"{name} must be <= {hi}, got {value}")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def check_sets(items: list[str]) -> None:
    """``--set KEY=VALUE`` syntax and finiteness (names and types are checked against the method later)."""
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            v = float(raw)
        except ValueError:
            continue
        if not math.isfinite(v):
            raise UsageError(f"--set {key.strip()}: must be a finite number, got {raw!r}")


def check_options(cfg: RunConfig) -> None:
    """The range and choice of every option (no names looked up, no files read)."""
    _number("--steps", cfg.steps, 1, integer=True)
    _number("--batch-size", cfg.batch_size, 1, integer=True)
    _number("--restarts", cfg.restarts, 1, integer=True)
    _number("--samples", cfg.samples, 1, MAX_SAMPLES, integer=True)
    _number("--noise-sigma", cfg.noise_sigma, 0, MAX_NOISE_SIGMA)
    _number("--var-cutoff", cfg.var_cutoff, 0, 1, lo_open=True)
    _number("--period", cfg.period, 1, integer=True)
    _number("--seed", cfg.seed, 0, 2 ** 63 - 1, integer=True)
    _choice("--rank-mode", cfg.rank_mode, RANK_MODES)
    _choice("--fit", cfg.fit, FITS)
    _choice("--dtype", cfg.dtype, DTYPES)
    _choice("--lpips-net", cfg.lpips_net, LPIPS_NETS)
    _choice("--restart-rule", cfg.restart_rule, RESTART_RULES)
    dev = cfg.device.split(":")[0]
    if dev not in DEVICES or (":" in cfg.device and (dev != "cuda" or not cfg.device.split(":", 1)[1].isdigit())):
        raise UsageError(f"unknown device {cfg.device!r}; use auto, cpu, cuda, cuda:N or mps")
    o = cfg.task_opts
    _number("--scale", o.get("scale"), 1, 64, integer=True)
    _number("--kernel-size", o.get("kernel_size"), 1, 1025, integer=True)
    _number("--hdr-scale", o.get("hdr_scale"), 0, 1000, lo_open=True)
    _number("--oversample", o.get("oversample"), 0, 16, lo_open=True)
    _number("--quality", o.get("quality"), *JPEG_QUALITY_RANGE, integer=True)
    if o.get("then") is not None:
        o["then"] = "jpeg:%d" % parse_then(o["then"])[1]  # recorded as parsed: JPEG:010 is jpeg:10
        if cfg.task not in THEN_TASKS:
            raise UsageError(f"--then applies to {', '.join(THEN_TASKS)}, not {cfg.task}")
        if cfg.measured:
            raise UsageError("--then with --measured is not supported yet: restore the measurement as `restore jpeg "
                             "--measured` or give clean reference images")
    for key, allowed in CHOICES.items():
        if key in o:
            _choice(f"--{key}", o[key], allowed)
    for key, kinds in KINDS_OF.items():
        v = o.get(key)
        if v is not None and v not in kinds and not Path(v).is_file():
            raise UsageError(f"--{key} {v!r}: not one of {', '.join(kinds)} nor an existing file")
    km = o.get("kernel_model")
    if o.get("kernel") == "nonlinear":
        if km is None:
            raise UsageError("--kernel nonlinear needs --kernel-model PATH: BKSE's GOPRO_wVAE.pth "
                             "(README, 'Non-linear blur', says where to get it)")
        if not Path(km).is_file():
            raise UsageError(f"--kernel-model {km}: no such file")
        o["kernel_model"] = str(Path(km).resolve())  # recorded as one path, however it was given
        if cfg.measured:
            raise UsageError("--kernel nonlinear draws a random blur for a clean image; a measured (really blurred) "
                             "photo's blur is not known to it: give clean reference images")
    elif km is not None:
        raise UsageError("--kernel-model applies to --kernel nonlinear only")
    if cfg.measured and not TASKS[cfg.task].measured:
        raise UsageError(f"{cfg.task} has no measured mode (give a clean reference image instead)")
    if cfg.measured and cfg.task == "inpaint" and o.get("mask", "box") in KINDS_OF["mask"]:
        raise UsageError("measured inpainting needs the mask of the damaged pixels: --mask PATH (white = missing)")
    if cfg.restart_rule == "oracle" and cfg.measured:
        raise UsageError("the oracle restart rule needs reference images (not --measured)")
    if cfg.samples > 1 and cfg.method in DETERMINISTIC:
        raise UsageError(f"{cfg.method} is deterministic: its {cfg.samples} samples would all be the same image; "
                         "use --samples 1 or a sampling method")
    check_sets(cfg.sets)


def list_images(paths: list[Path]) -> list[Path]:
    """Files given directly, and every image file (by suffix) inside given folders (not their subfolders), sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


_SAMPLE_NAME = re.compile(r"^(.*)\.sample-(0|[1-9][0-9]*)\.png$", re.IGNORECASE)


def name_key(name: str, samples: int = 1) -> str:
    """The key under which an output file name is compared with others: the name itself, except that the
    ``N`` sample files of one stem (``STEM.sample-K.png``, ``K < N``) share the key ``STEM.sample-*.png``."""
    m = _SAMPLE_NAME.match(name) if samples > 1 else None
    return f"{m.group(1)}.sample-*.png" if m and int(m.group(2)) < samples else name


def output_names(stem: str, samples: int = 1) -> list[str]:
    """The keys (:func:`name_key`) of the files a run writes for one stem."""
    names = [stem + s for s in OUTPUT_SUFFIXES]
    if samples > 1:
        names += [stem + s for s in SAMPLES_SUFFIXES] + [f"{stem}.sample-*.png"]
    return [name_key(n, samples) if not n.endswith(".sample-*.png") else n for n in names]


def output_stems(images: list[Path], samples: int = 1) -> list[str]:
    """The stem of each input's outputs (``STEM.png``, ``STEM.measurement.png``, ``STEM.compare.png``; with
    ``samples > 1`` also ``STEM.sample-K.png``, ``STEM.std.png``, ``STEM.std.npy``).

    An input's stem is its file's stem; inputs whose outputs would share a name (``a.png`` and ``a.jpg``;
    ``b.png`` and ``b.measurement.png``; with samples, ``c.png`` and ``c.std.png``) keep their extension
    instead (``a.png``, ``a.jpg``).  The same file given twice is one input.  Names that still collide
    (``x/a.png`` and ``y/a.png``) are a usage error."""
    def names(stem: str) -> list[str]:
        return output_names(stem, samples)

    stems = [p.stem for p in images]
    while True:  # each round gives clashing inputs their full names; it ends when nothing clashes or changes
        owners: dict[str, list[int]] = {}
        for i, s in enumerate(stems):
            for n in names(s):
                owners.setdefault(n.lower(), []).append(i)
        clash = {i for own in owners.values() if len(own) > 1 for i in own}
        if not clash:
            return stems
        renamed = [images[i].name if i in clash else s for i, s in enumerate(stems)]
        if renamed == stems:
            break
        stems = renamed
    a, b = next(own for own in owners.values() if len(own) > 1)[:2]
    raise UsageError(f"{images[a]} and {images[b]} would both be written as {stems[a]}.png in the output folder; "
                     "rename one or restore them in separate runs")


def check_paths(cfg: RunConfig, images: list[Path], stems: list[str]) -> None:
    """``-o`` must be a folder we can write, and no output may be an input or an input's folder."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"-o {out}: {probe} is a file, so the folder cannot be made")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"-o {out}: cannot write in {probe} (permission denied)")
    out_r = out.resolve()
    for p in cfg.inputs:
        if Path(p).is_dir() and Path(p).resolve() == out_r:
            raise UsageError(f"-o {out} is the input folder {p}: results would be mixed with (or written over) "
                             "the inputs; choose another output folder")
    samples = cfg.samples or 1
    inside = {name_key(p.resolve().name, samples): p for p in images if p.resolve().parent == out_r}
    for stem in stems:
        for n in output_names(stem, samples):
            if n in inside:
                raise UsageError(f"-o {out}: the output {out / inside[n].resolve().name} would overwrite the input of "
                                 "the same name; choose another output folder")
    if (out_r / "metrics.json") in {p.resolve() for p in images}:
        raise UsageError(f"-o {out}: an input is named metrics.json in the output folder")


def check(cfg: RunConfig) -> Checked:
    """Every check that needs neither torch nor a model; raises :class:`UsageError`."""
    if cfg.task not in TASKS:
        raise UsageError(f"unknown task {cfg.task!r}; available: {', '.join(TASKS)}")
    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}; available: {', '.join(METHODS)}")
    check_options(cfg)
    try:
        reg = load_registry(cfg.models_file)
        name = cfg.model
        if name is None:
            name = reg.defaults.get(METHODS[cfg.method].default_kind, "gaussian")
        model = reg.get(name)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    info = check_method(cfg.method, cfg.task, model)
    check_method_options(info, cfg.task, cfg.task_opts, cfg.diffstategrad)
    if cfg.task_opts.get("then") is not None and "jpeg" not in info.tasks:
        raise UsageError(f"method {cfg.method!r} needs a linear operator; --then {cfg.task_opts['then']} makes the "
                         f"measurement non-linear (methods that take it: "
                         f"{', '.join(m.name for m in METHODS.values() if 'jpeg' in m.tasks)})")
    missing = [p for p in cfg.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing[0]}")
    seen: set[Path] = set()
    images = [p for p in list_images(cfg.inputs) if not (p.resolve() in seen or seen.add(p.resolve()))]  # a file given twice: once
    if not images:
        raise UsageError("no input images found")
    if cfg.measured and cfg.task == "jpeg":
        other = [p for p in images if p.suffix.lower() not in JPEG_SUFFIXES]
        if other:
            raise UsageError(f"restore jpeg --measured reads each file's own quantisation tables: {other[0]} is not a "
                             f"JPEG file ({', '.join(JPEG_SUFFIXES)})")
    stems = output_stems(images, cfg.samples or 1)
    check_paths(cfg, images, stems)
    restarts = cfg.restarts if cfg.restarts is not None else TASKS[cfg.task].default_restarts
    return Checked(model, info, images, stems, restarts)

