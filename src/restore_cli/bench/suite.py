"""Reading a ``restore bench`` suite (TOML) into cells; running it is bench.py.

A suite is a TOML file::

    name = "fmnist-regression"
    seeds = [0]                 # every image is restored once per seed
    noise_sigma = 0.05          # measurement noise in the papers' units (--noise-sigma; default: the CLI's, 0.01, or 0 for jpeg), unless a grid says otherwise
    failure_psnr = 15.0         # an image under this PSNR counts as a failure (DiffStateGrad Fig. 3)
    batch_size = 8              # images per solver batch (results depend on it only through CG stopping)
    restart_rule = "residual"   # the cells with restarts: "residual" (the run of least measurement residual),
                                # "oracle" (max PSNR) or "best-per-metric" (the DAPS code's report: each metric's
                                # best run against the ground truth, max PSNR, max SSIM, min LPIPS)
    lpips_net = "alex"          # or "vgg" (DiffStateGrad's code)

    [images]                    # Fashion-MNIST's test split (Debian's dataset-fashion-mnist) ...
    fashion_mnist = "test"
    indices = "0:8"             # "a:b", "a:b:step" or a list
    # paths = ["examples/fmnist"]   # ... or image files / folders (adapted to each model's size)

    [[grid]]                    # the cartesian product of its lists; repeat [[grid]] freely
    tasks = [{ task = "inpaint", mask = "box" }, { task = "deblur", kernel = "gaussian" }]
                                # a task's keys are `restore <task>`'s options (kernel_sigma = --kernel-sigma:
                                # models/catalog.py TASK_OPTIONS), checked as there
    methods = ["dps", "pigdm"]
    models = ["fmnist-ddpm-32"]
    diffstategrad = [false, true]
    steps = 100                 # optional: every method's --steps
    set = { eta = 1.0 }         # optional: fixed hyperparameters (only where the method has them)
    guidance = [1.0, 10.0]      # optional: multiplies each method's measurement-guidance step size
    sweep = { zeta = [0.3, 3] } # optional: explicit values of hyperparameters
    restarts = 4                # optional (phase retrieval: best-of-k by the suite's restart_rule)
    var_cutoff = [0.99, 0.999]  # optional, on the cells with DSG: its tau (also period, rank_mode)

A (task, method, model) that does not go together is listed in the results as skipped with
the reason, so a grid can be written broadly.  Each cell has a key (a hash of everything that
defines it); ``results.json`` is rewritten after every cell and a rerun skips finished cells,
so an interrupted suite resumes.  Randomness is per image and seed (``rng.make_generators``),
so a result depends on neither the batch nor the order of the cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..images.files import list_images
from ..models.catalog import TASK_OPTIONS
from ..images.read import read_image
from ..solvers.projection import DiffStateGrad

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# a task's keys: "task" and its operator's options, from the table `restore <task>`'s options come from
# (models/catalog.py, TASK_OPTIONS), so that the two cannot drift
TASK_KEYS = {"task"} | {o.name for o in TASK_OPTIONS}
DSG_KEYS = ("var_cutoff", "period", "rank_mode")  # DiffStateGrad's options, as `restore <task>` has them


class SuiteError(ValueError):
    """A malformed suite file (a usage error)."""


@dataclass(frozen=True)
class Cell:
    task: str
    task_opts: dict
    method: str
    model: str
    diffstategrad: bool
    hparams: dict  # --set values and sweep points
    guidance: float = 1.0  # multiplier of the method's measurement-guidance step size(s)
    steps: int | None = None
    noise_sigma: float = 0.05
    restarts: int = 1
    dsg_opts: dict = field(default_factory=dict)  # var_cutoff, period, rank_mode when not the defaults

    @property
    def key(self) -> str:
        d = asdict(self)
        if not d["dsg_opts"]:
            del d["dsg_opts"]  # cells written before these options existed keep their keys
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def dsg(self, default_period: int):
        """The cell's DiffStateGrad (None without it): the paper's tau = 0.99 and the method's F
        unless the suite set them."""
        if not self.diffstategrad:
            return None
        return DiffStateGrad(**{"period": default_period, **self.dsg_opts})

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.task_opts.items()))
        extra = [f"{k}={v}" for k, v in sorted(self.hparams.items())] + dsg_setting(self.dsg_opts)
        if self.guidance != 1.0:
            extra.append(f"guidance x{self.guidance:g}")
        return (f"{self.task}[{opts}] {self.method}{'+dsg' if self.diffstategrad else ''} {self.model}"
                + (f" ({', '.join(extra)})" if extra else ""))


def dsg_setting(opts: dict) -> list[str]:
    """DiffStateGrad options as a cell's label and table write them: tau=0.999, F=1, rank=reference."""
    names = {"var_cutoff": "tau", "period": "F", "rank_mode": "rank"}
    return [f"{names[k]}={opts[k]}" for k in names if k in opts]


RESTART_RULES = ("residual", "oracle", "best-per-metric")


@dataclass
class Suite:
    name: str
    path: Path
    images: list[tuple[str, torch.Tensor]]  # (id, [C, H, W] in [0, 1])
    seeds: list[int]
    failure_psnr: float
    batch_size: int
    cells: list[Cell]
    lpips_net: str = "alex"
    restart_rule: str = "residual"  # RESTART_RULES
    description: str = ""
    image_source: dict = field(default_factory=dict)
    models_file: Path | None = None
    paper: dict | None = None  # a paper suite's published table (papers.load_table)
    fid: bool = False  # FID and KID per cell over its restorations (default: when the paper's table reports FID)


# -- reading a suite ------------------------------------------------------------------------

def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _indices(spec, n: int) -> list[int]:
    if isinstance(spec, list):
        idx = [int(i) for i in spec]
    elif isinstance(spec, str) and ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        idx = list(range(n))[slice(*parts)]
    elif isinstance(spec, int):
        idx = list(range(spec))
    else:
        raise SuiteError(f"images.indices must be a list, a count or 'a:b[:step]', got {spec!r}")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise SuiteError(f"image index {bad[0]} out of range (0..{n - 1})")
    return idx


def load_fashion_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as ``[N, 1, 32, 32]`` in ``[0, 1]`` (28x28 padded with the black background,
    as the bundled models were trained) and the labels.  Needs Debian's ``dataset-fashion-mnist``."""
    import gzip

    import numpy as np

    name = {"test": "t10k", "train": "train"}.get(split)
    if name is None:
        raise SuiteError(f"fashion_mnist split must be 'test' or 'train', got {split!r}")
    path = FASHION_MNIST / f"{name}-images-idx3-ubyte.gz"
    if not path.exists():
        raise SuiteError(f"{path} not found: install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    with gzip.open(path) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(FASHION_MNIST / f"{name}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=0.0), torch.from_numpy(y.astype(np.int64))


def _load_images(spec: dict, base: Path) -> list[tuple[str, torch.Tensor]]:
    if "fashion_mnist" in spec:
        split = spec["fashion_mnist"]
        x, _ = load_fashion_mnist(split)
        return [(f"fmnist-{split}-{i}", x[i]) for i in _indices(spec.get("indices", "0:8"), len(x))]
    if "paths" in spec:
        paths = [p if Path(p).is_absolute() else base / p for p in _as_list(spec["paths"])]
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise SuiteError(f"images: no such file or folder {missing[0]}")
        files = list_images(paths)
        if not files:
            raise SuiteError("images: no image files found")
        return [(f.stem, read_image(f)) for f in files]
    raise SuiteError("[images] needs fashion_mnist = 'test' (with indices) or paths = [...]")


def _read(path: Path, what: str, parse, error, fmt: str):
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{what} {path} does not exist")
    try:
        return parse(path.read_text())
    except error as e:
        raise SuiteError(f"{path}: not valid {fmt}: {e}") from None


def load_suite(path: Path, images: Path | None = None, models_file: Path | None = None,
               steps: int | None = None, kernel_model: Path | None = None, overrides: list[str] | None = None) -> Suite:
    """Parse and check a suite file (names of tasks, methods, models and hyperparameters included).

    ``images``: a folder of images instead of the suite's own (a paper suite's ``[images] user =
    "..."`` names the images the paper used, which cannot ship); ``models_file``: extra registry
    entries instead of the suite's; ``steps``: every cell's steps (a quick check of a suite);
    ``kernel_model``: the blur network of the cells with ``kernel = "nonlinear"`` (BKSE's GOPRO_wVAE.pth,
    which cannot ship; without it those cells are skipped, saying so); ``overrides``: ``KEY=VALUE``
    strings set on every cell whose method has ``KEY`` (over the suite's own; a key no method of the
    suite has is an error), e.g. capping ReSample's inner iterations for a quick check."""
    from ..errors import UsageError
    from ..models.catalog import METHODS, TASKS, check_task_options
    from ..models.config import ConfigError, load_registry
    from ..models.registry import parse_set

    path = Path(path)
    data = _read(path, "suite file", tomllib.loads, tomllib.TOMLDecodeError, "TOML")
    known = {"name", "description", "seeds", "noise_sigma", "failure_psnr", "batch_size", "images", "grid", "lpips_net",
             "models_file", "paper", "restart_rule", "fid"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {', '.join(unknown)}")
    rule = str(data.get("restart_rule", "residual"))
    if rule not in RESTART_RULES:
        raise SuiteError(f"{path}: restart_rule must be one of {', '.join(RESTART_RULES)}, got {rule!r}")
    if models_file is None:
        models_file = path.parent / data["models_file"] if "models_file" in data else None
    paper = None
    if "paper" in data:
        from .papers import load_table

        ref = data["paper"]
        if not isinstance(ref, dict) or "published" not in ref or "table" not in ref:
            raise SuiteError(f"{path}: paper must be {{ published = FILE, table = ID }}")
        try:
            paper = load_table(path.parent / ref["published"], ref["table"])
        except ValueError as e:
            raise SuiteError(str(e)) from None
    try:
        reg = load_registry(models_file)
    except ConfigError as e:
        raise SuiteError(str(e)) from None
    noise = data.get("noise_sigma")  # None: each task's default, the CLI's (catalog.default_noise_sigma)
    cells: list[Cell] = []
    grids = data.get("grid") or []
    if not grids:
        raise SuiteError(f"{path}: no [[grid]] tables")
    grid_keys = {"tasks", "methods", "models", "diffstategrad", "steps", "set", "guidance", "sweep", "restarts", "noise_sigma",
                 *DSG_KEYS}
    extra: dict[str, str] = {}
    for item in overrides or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SuiteError(f"--set {item!r}: expected KEY=VALUE")
        extra[key.strip()] = value.strip()
    used: set[str] = set()
    for gi, g in enumerate(grids):
        unknown = sorted(set(g) - grid_keys)
        if unknown:
            raise SuiteError(f"{path}: grid {gi + 1} has unknown key(s) {', '.join(unknown)}")
        for key in ("tasks", "methods", "models"):
            if not g.get(key):
                raise SuiteError(f"{path}: grid {gi + 1} needs {key}")
        tasks = []
        for t in _as_list(g["tasks"]):
            t = {"task": t} if isinstance(t, str) else dict(t)
            if t.get("task") not in TASKS:
                raise SuiteError(f"unknown task {t.get('task')!r}; available: {', '.join(TASKS)}")
            bad = sorted(set(t) - TASK_KEYS)
            if bad:
                raise SuiteError(f"task {t['task']}: unknown option(s) {', '.join(bad)}")
            opts = {k: v for k, v in t.items() if k != "task"}
            try:  # types, ranges, and each key applies to the task and its kernel or mask, as on the command line
                check_task_options(t["task"], opts, suite=True)
            except UsageError as e:
                raise SuiteError(str(e)) from None
            for k, v in opts.items():  # text a check parsed ("0.4,0.5": a pair) as the numbers it means; numbers
                if isinstance(t.get(k), str) and not isinstance(v, str):  # as written (cell keys unchanged)
                    t[k] = v
            if isinstance(opts.get("kernel_model"), str):  # a suite's own blur network: relative to the suite
                t["kernel_model"] = str((path.parent / opts["kernel_model"]).resolve())
            tasks.append(t)
        for m in _as_list(g["methods"]):
            if m not in METHODS:
                raise SuiteError(f"unknown method {m!r}; available: {', '.join(METHODS)}")
        for name in _as_list(g["models"]):
            try:
                reg.get(name)
            except ConfigError as e:
                raise SuiteError(str(e)) from None
        every = set(g.get("set") or {}) | set(g.get("sweep") or {})
        known = set().union(*(METHODS[m].cls.defaults for m in _as_list(g["methods"])))
        used |= known
        if every - known:
            raise SuiteError(f"grid {gi + 1}: no method of the grid has hyperparameter(s) {', '.join(sorted(every - known))}")
        sweep = g.get("sweep") or {}
        sweep_items = [[(k, v) for v in _as_list(vals)] for k, vals in sorted(sweep.items())]
        # DiffStateGrad's own options (its rank study, Figures 8 and 10): swept on the cells with DSG
        dsg_items = [[(k, v) for v in _as_list(g[k])] for k in DSG_KEYS if k in g]
        dsg_points = [dict(p) for p in itertools.product(*dsg_items)] if dsg_items else [{}]
        for p in dsg_points:
            try:
                DiffStateGrad(**p)
            except (ValueError, TypeError) as e:
                raise SuiteError(f"grid {gi + 1}: {e}") from None
        for t, m, model, dsg, guide, point, dsg_opts in itertools.product(
                tasks, _as_list(g["methods"]), _as_list(g["models"]), _as_list(g.get("diffstategrad", [False])),
                _as_list(g.get("guidance", [1.0])), list(itertools.product(*sweep_items)) or [()], dsg_points):
            if not dsg:
                dsg_opts = {}  # without DSG its options do not matter: one cell (duplicates go below)
            defaults = METHODS[m].cls.defaults
            raw = {k: v for k, v in {**(g.get("set") or {}), **dict(point), **extra}.items() if k in defaults}
            if point and any(k not in defaults for k, _ in point):
                continue  # a sweep over a hyperparameter this method does not have
            try:  # typed and checked as --set values are
                hp = parse_set([f"{k}={v}" for k, v in raw.items()], METHODS[m])
            except UsageError as e:
                raise SuiteError(f"grid {gi + 1}: {e}") from None
            task_opts = {k: v for k, v in t.items() if k != "task"}
            if task_opts.get("kernel") == "nonlinear" and kernel_model is not None:  # over the suite's own
                task_opts["kernel_model"] = str(Path(kernel_model).resolve())
            n_steps = steps if steps is not None else int(g["steps"]) if "steps" in g else None
            cells.append(Cell(t["task"], task_opts, m, model, bool(dsg), hp, float(guide),
                              n_steps, _cell_noise(g.get("noise_sigma", noise), t["task"], task_opts),
                              int(g.get("restarts", TASKS[t["task"]].default_restarts)), dict(dsg_opts)))
    if set(extra) - used:
        raise SuiteError(f"--set: no method of the suite has {', '.join(sorted(set(extra) - used))}")
    seen, unique = set(), []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    spec = dict(data.get("images") or {})
    if images is not None:
        spec = {"paths": [str(Path(images).resolve())], **({"protocol": spec["user"]} if "user" in spec else {})}
    elif "user" in spec:
        raise SuiteError(f"{path}: its images do not ship with restore: pass --images DIR with {spec['user']}")
    images = _load_images(spec, path.parent)
    seeds = [int(s) for s in _as_list(data.get("seeds", [0]))]
    if not images or not seeds or not unique:
        raise SuiteError(f"{path}: the suite has no " + ("images" if not images else "seeds" if not seeds else "cells"))
    return Suite(name=str(data.get("name", path.stem)), path=path, images=images, seeds=seeds,
                 failure_psnr=float(data.get("failure_psnr", 15.0)), batch_size=int(data.get("batch_size", 8)),
                 cells=unique, lpips_net=str(data.get("lpips_net", "alex")), restart_rule=rule,
                 description=str(data.get("description", "")), image_source=dict(spec), models_file=models_file,
                 paper=paper, fid=_fid_wanted(data.get("fid"), paper, path))


def _fid_wanted(given, paper: dict | None, path: Path) -> bool:
    """``fid = true|false`` in the suite; by default FID and KID are computed where the paper's table reports
    FID (P2L's Table 8), and not elsewhere (each costs an Inception pass per image and a 2048-d matrix root)."""
    if given is None:
        return bool(paper) and "fid" in (paper.get("metrics") or [])
    if not isinstance(given, bool):
        raise SuiteError(f"{path}: fid must be true or false, got {given!r}")
    return given


def _cell_noise(given, task: str, task_opts: dict) -> float:
    """A cell's measurement noise: the grid's or the suite's ``noise_sigma``, else the CLI's default for its task
    (0 for JPEG, as PiGDM's runs; :func:`restore_cli.models.catalog.default_noise_sigma`)."""
    from ..models.catalog import default_noise_sigma

    return default_noise_sigma(task, task_opts) if given is None else float(given)


# -- what every cell depends on besides itself ------------------------------------------------

def suite_context(suite: Suite) -> str:
    """A hash of what every cell's numbers depend on besides the cell itself: the images (ids and
    pixels), the seeds, the failure threshold, the LPIPS network, a restart rule other than the default and
    whether FID is computed."""
    rule = [] if suite.restart_rule == "residual" else [suite.restart_rule]
    fid = ["fid"] if suite.fid else []  # (a suite without FID keeps the context it had before FID existed)
    h = hashlib.sha1(json.dumps([suite.seeds, suite.failure_psnr, suite.lpips_net, *rule, *fid]).encode())
    for name, img in suite.images:
        h.update(name.encode())
        h.update(img.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
