"""Everything about a run that can be checked without torch or a model: names, option ranges, input and
output paths, and the output names each input will get.

``restore <task>`` calls :func:`check` before it imports torch, so a usage error (exit code 2) is
reported in well under a second, and :func:`restore_cli.runs.execute.resolve` calls it again for library
users.  Nothing here writes a file or decodes an input image: it reads the inputs' headers (their
sizes, with Pillow) and the files that options name (``--mask``, ``--kernel``: Pillow, numpy).
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..images.files import FITS, IMAGE_SUFFIXES, list_images, max_pixels_limit
from ..models.catalog import (
    METHODS,
    NOISE_UNIT_NAMES,
    TASK_DEFAULTS,
    TASK_OPTION,
    TASKS,
    THEN_TASKS,
    MethodInfo,
    check_method,
    check_method_options,
    check_task_options,
    default_noise_sigma,
    noise_in_papers_units,
    parse_then,
    resolve_prompt,
)
from ..models.config import ConfigError, ModelSpec, load_registry

RANK_MODES = ("channels", "paper", "reference")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("fp32", "fp16", "bf16")
LPIPS_NETS = ("alex", "vgg")
RESTART_RULES = ("residual", "oracle")
KINDS_OF = {k: TASK_OPTION[k].choices for k in ("mask", "kernel")}  # (the task options: models/catalog.py)
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
    noise_sigma: float | None = None  # None: the task's default (catalog.default_noise_sigma), set by check
    # --noise-unit: None, the papers' units; "pm1" or "01": noise_sigma is a std on [-1, 1] or [0, 1] images,
    # which check turns into the papers' units (noise_given keeps the value and unit as given)
    noise_unit: str | None = None
    noise_given: tuple | None = None
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
    _number("--noise-sigma", cfg.noise_sigma, 0, MAX_NOISE_SIGMA if cfg.noise_given is not None or cfg.noise_unit is None
            else MAX_NOISE_SIGMA / 2 if cfg.noise_unit == "01" else MAX_NOISE_SIGMA)
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
    check_task_options(cfg.task, o)  # names, types, ranges, and each applies to the kernel or mask chosen
    if o.get("then") is not None:
        o["then"] = "jpeg:%d" % parse_then(o["then"])[1]  # recorded as parsed: JPEG:010 is jpeg:10
        if cfg.task not in THEN_TASKS:
            raise UsageError(f"--then applies to {', '.join(THEN_TASKS)}, not {cfg.task}")
        if cfg.measured:
            raise UsageError("--then with --measured is not supported yet: restore the measurement as `restore jpeg "
                             "--measured` or give clean reference images")
    for key, kinds in KINDS_OF.items():
        v = o.get(key)
        if v is not None and v not in kinds and not Path(v).exists():
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
    fs = pseudo_filesystem(probe) if probe.exists() else None
    if fs:
        raise UsageError(f"-o {out}: {probe} is on the kernel's {fs} file system, not a disk: choose an output "
                         "folder elsewhere")
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


# -- the environment, the device and the files that options name: read before any model ----------------

# file systems that are the kernel's windows, not storage: an output folder cannot be made there
PSEUDO_FILESYSTEMS = {"proc", "sysfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                      "configfs", "pstore", "bpf", "fusectl", "mqueue", "binfmt_misc", "efivarfs", "autofs"}


def cuda_possible() -> bool:
    """False when CUDA surely is not available, known without importing torch: macOS, ``CUDA_VISIBLE_DEVICES``
    empty or -1, or Linux without a GPU driver's device (NVIDIA, ROCm, WSL); otherwise torch decides."""
    if sys.platform == "darwin":
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return False
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd",
                                           "/dev/dxg"))


def check_device(cfg: RunConfig) -> None:
    """``--device`` and ``--dtype`` where the answer needs no torch (the rest: registry.resolve_device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return  # under a launcher each process is given its device
    dev = cfg.device.split(":")[0]
    if dev == "cuda" and not cuda_possible():
        raise UsageError(f"device {cfg.device!r} requested but CUDA is not available (no GPU driver on this machine); "
                         "use --device cpu or auto")
    if dev == "mps" and sys.platform != "darwin":
        raise UsageError("device 'mps' requested but MPS is not available (Apple GPUs, macOS only)")
    on_cpu = dev == "cpu" or (dev == "auto" and sys.platform != "darwin" and not cuda_possible())
    if cfg.dtype == "fp16" and on_cpu:
        raise UsageError("fp16 needs a cuda or mps device; use bf16 or fp32 on the CPU")


def _why(e: BaseException) -> str:
    """What went wrong reading a file, in words (no exception class names)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return " ".join(str(e).split()) or "unreadable"


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def check_named_file(option: str, path) -> Path:
    """A file an option or the command line names must be a regular file (a named pipe would hang the read)."""
    p = Path(path)
    try:
        kind = _file_kind(os.stat(p).st_mode)
    except OSError as e:
        raise UsageError(f"{option}{p}: {_why(e)}") from None
    if kind is not None:
        hint = "" if option else ": give an image file (or a folder of them)"
        raise UsageError(f"{option}{p} is {kind}, not a file{hint}")
    return p


def check_input_files(inputs: list[Path]) -> None:
    """Files given by name: regular files with an image suffix, the rule a folder's files are picked by."""
    for p in inputs:
        if Path(p).is_dir():
            continue
        check_named_file("", p)
        if Path(p).suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"{p}: not an image file name; restore reads {', '.join(sorted(IMAGE_SUFFIXES))} files, "
                             "given by name or in a folder")


def read_kernel_file(path) -> "Any":
    """A ``--kernel`` file (a ``.npy`` array, or a grey image) as a checked 2-D float64 numpy array; a
    UsageError saying what is wrong with it otherwise (never unpickled)."""
    import numpy as np

    p = check_named_file("--kernel ", path)
    try:
        if p.suffix.lower() == ".npy":
            k = np.load(p, allow_pickle=False)
        else:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(p) as im:
                    k = np.asarray(im.convert("F"), dtype=np.float64)
    except ValueError as e:
        why = "it holds Python objects, not numbers" if "allow_pickle" in str(e) else _why(e)
        raise UsageError(f"--kernel {p}: not a kernel restore can read ({why}); give a 2-D .npy array of numbers "
                         "or a grey image") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise UsageError(f"--kernel {p}: not a kernel restore can read ({_why(e)}); give a 2-D .npy array of "
                         "numbers or a grey image") from None
    if k.dtype.kind not in "biuf":
        raise UsageError(f"--kernel {p}: holds {k.dtype} values; a kernel holds real numbers")
    if k.ndim != 2:
        raise UsageError(f"--kernel {p}: a blur kernel is a 2-D array; this one is "
                         f"{k.ndim}-D ({'x'.join(map(str, k.shape)) or 'a single number'})")
    k = k.astype(np.float64)
    if not np.isfinite(k).all():
        raise UsageError(f"--kernel {p}: {int((~np.isfinite(k)).sum())} of its {k.size} values are NaN or infinite")
    if k.min() < 0 or k.sum() <= 0:
        raise UsageError(f"--kernel {p}: a blur kernel has no negative values and a positive sum "
                         f"(this one: smallest {k.min():g}, sum {k.sum():g})")
    return k


def read_mask_size(path) -> tuple[int, int]:
    """A ``--mask`` file's (H, W), after checking that it decodes as an image."""
    p = check_named_file("--mask ", path)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                im.convert("L")
                w, h = im.size
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a broken file
        raise UsageError(f"--mask {p}: not a mask image restore can read ({_why(e)}); give an image, "
                         "white = missing") from None
    return h, w


def image_size(path: Path) -> tuple[int, int] | None:
    """An image's upright (H, W) from its header; None if the header cannot be read (the run then reports
    the file as unreadable, per image)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                try:
                    o = im.getexif().get(0x0112)
                except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as when reading
                    o = None
    except Exception:  # noqa: BLE001
        return None
    return (w, h) if o in (5, 6, 7, 8) else (h, w)


def native_size(model: ModelSpec) -> int | None:
    """The side of the square a model works at, to which ``--fit`` adapts images; None: any size (the analytic
    Gaussians, the Hub's latent models, whose latents follow the image)."""
    if model.source == "analytic" or (model.kind == "latent" and model.source != "bundled"):
        return None
    return model.resolution


def _wxh(hw) -> str:
    return f"{hw[1]}x{hw[0]}"


def min_side(cfg: RunConfig) -> tuple[int, str] | None:
    """The smallest side a task can work at, and why; None when any size will do."""
    o = {**TASK_DEFAULTS.get(cfg.task, {}), **cfg.task_opts}
    if cfg.task == "inpaint" and o.get("mask") == "box" and not cfg.measured:
        return 2, "for a box mask (half its height and width)"
    if cfg.task == "superres" and not cfg.measured:
        return int(o["scale"]), f"to downscale by --scale {o['scale']}"
    return None


def working_size(cfg: RunConfig, model: ModelSpec, hw: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) an input of ``hw`` is solved at (run.py's _measurement_inputs: the model's size with --fit
    resize or pad; measured super-resolution: the upscaled size)."""
    n = native_size(model)
    f = int(cfg.task_opts.get("scale", 4)) if cfg.measured and cfg.task == "superres" else 1
    if n is None or cfg.fit == "none":
        return hw[0] * f, hw[1] * f
    return n // f * f, n // f * f


def check_sizes(cfg: RunConfig, model: ModelSpec, images: list[Path]) -> None:
    """What the inputs' sizes must be for the options: --fit pad needs images no larger than the model; a task
    needs a smallest size (a box mask, the super-resolution factor); a --mask file must be the size of the
    image or of the size it is restored at (never stretched otherwise).  Sizes come from the headers; a file
    whose header cannot be read is left to fail when it is read, on its own."""
    mask = cfg.task_opts.get("mask") if cfg.task == "inpaint" else None
    mask_hw = read_mask_size(mask) if mask is not None and mask not in KINDS_OF["mask"] else None
    n = native_size(model)
    f = int(cfg.task_opts.get("scale", 4)) if cfg.measured and cfg.task == "superres" else 1
    pad = cfg.fit == "pad" and n is not None
    small = min_side(cfg) if n is None or cfg.fit == "none" else None
    if not (pad or small or mask_hw):
        return
    for p in images:
        hw = image_size(p)
        if hw is None:
            continue
        if pad and max(hw) > n // f:
            raise UsageError(f"--fit pad: {p} is {_wxh(hw)} pixels, larger than {model.name}'s {n // f}x{n // f}"
                             f"{' (its size / --scale)' if f > 1 else ''}: use --fit resize, or crop it")
        work = working_size(cfg, model, hw)
        if small and min(work) < small[0]:
            raise UsageError(f"{p} is {_wxh(hw)} pixels: too small {small[1]}; the smallest is "
                             f"{small[0]}x{small[0]}")
        if mask_hw and mask_hw != work and not (mask_hw == hw and cfg.fit == "resize"):
            at = "" if work == hw else f" and is restored at {_wxh(work)} ({model.name}'s size, --fit {cfg.fit})"
            sizes = _wxh(work) if cfg.fit == "pad" or work == hw else f"{_wxh(hw)} or {_wxh(work)}"
            raise UsageError(f"--mask {mask} is {_wxh(mask_hw)} pixels, but {p} is {_wxh(hw)}{at}: give a {sizes} "
                             "mask (white = missing); a mask of another size is not stretched")


def pseudo_filesystem(path: Path) -> str | None:
    """The type of the kernel file system (proc, sysfs, ...) that ``path`` (existing) is on; None otherwise."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    real = str(Path(path).resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind if kind in PSEUDO_FILESYSTEMS else None


def default_method(cfg: RunConfig) -> str:
    """The method when no --method is given: on an analytic (Gaussian) model, the exact posterior of a linear
    task (its mean, which looks right; exact samples of it with --samples N; a sampler's samples of a
    Gaussian fill holes with coloured noise), unless a sampler's options are given (--steps, --set,
    --diffstategrad); otherwise DPS."""
    try:
        analytic = cfg.model is not None and load_registry(cfg.models_file).get(cfg.model).source == "analytic"
    except ConfigError:
        return "dps"  # check reports the model
    sampler = cfg.steps is not None or cfg.sets or cfg.diffstategrad
    if not analytic or sampler or cfg.task not in METHODS["posterior-mean"].tasks:
        return "dps"
    return "posterior-sample" if (cfg.samples or 1) > 1 else "posterior-mean"


def check(cfg: RunConfig) -> Checked:
    """Every check that needs neither torch nor a model; raises :class:`UsageError`."""
    if cfg.task not in TASKS:
        raise UsageError(f"unknown task {cfg.task!r}; available: {', '.join(TASKS)}")
    if cfg.method is None:
        cfg.method = default_method(cfg)
    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}; available: {', '.join(METHODS)}")
    if cfg.noise_unit is not None and cfg.noise_given is None:
        _choice("--noise-unit", cfg.noise_unit, NOISE_UNIT_NAMES)
        _number("--noise-sigma", cfg.noise_sigma, 0, MAX_NOISE_SIGMA / 2 if cfg.noise_unit == "01" else MAX_NOISE_SIGMA)
        given = cfg.noise_sigma
        if given is None:  # the default (papers' units), said in the unit asked for
            given = noise_in_papers_units(cfg.task, default_noise_sigma(cfg.task, cfg.task_opts), cfg.noise_unit,
                                          inverse=True)
        cfg.noise_sigma = noise_in_papers_units(cfg.task, given, cfg.noise_unit)  # once (check runs twice)
        cfg.noise_given = (given, cfg.noise_unit)
    if cfg.noise_sigma is None:
        cfg.noise_sigma = default_noise_sigma(cfg.task, cfg.task_opts)
    check_options(cfg)
    check_device(cfg)
    max_pixels_limit()  # RESTORE_MAX_PIXELS is a number
    if cfg.task == "deblur" and cfg.task_opts.get("kernel", "gaussian") not in KINDS_OF["kernel"]:
        read_kernel_file(cfg.task_opts["kernel"])
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
    resolve_prompt(model, info.name, cfg.prompt)  # --prompt on a model without text conditioning
    if cfg.task_opts.get("then") is not None and "jpeg" not in info.tasks:
        raise UsageError(f"method {cfg.method!r} needs a linear operator; --then {cfg.task_opts['then']} makes the "
                         f"measurement non-linear (methods that take it: "
                         f"{', '.join(m.name for m in METHODS.values() if 'jpeg' in m.tasks)})")
    missing = [p for p in cfg.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing[0]}")
    check_input_files(cfg.inputs)
    seen: set[Path] = set()
    images = [p for p in list_images(cfg.inputs) if not (p.resolve() in seen or seen.add(p.resolve()))]  # a file given twice: once
    if not images:
        raise UsageError("no input images found")
    if cfg.measured and cfg.task == "jpeg":
        other = [p for p in images if p.suffix.lower() not in JPEG_SUFFIXES]
        if other:
            raise UsageError(f"restore jpeg --measured reads each file's own quantisation tables: {other[0]} is not a "
                             f"JPEG file ({', '.join(JPEG_SUFFIXES)})")
    check_sizes(cfg, model, images)
    stems = output_stems(images, cfg.samples or 1)
    check_paths(cfg, images, stems)
    restarts = cfg.restarts if cfg.restarts is not None else TASKS[cfg.task].default_restarts
    return Checked(model, info, images, stems, restarts)

