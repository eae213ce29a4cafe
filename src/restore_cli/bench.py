"""``restore bench SUITE.toml``: tasks x methods x models x images x seeds, measured and compared.

A suite is a TOML file::

    name = "fmnist-regression"
    seeds = [0]                 # every image is restored once per seed
    noise_sigma = 0.05          # measurement noise ([0, 1] units), unless a grid says otherwise
    failure_psnr = 15.0         # an image under this PSNR counts as a failure (DiffStateGrad Fig. 3)
    batch_size = 8              # images per solver batch (results depend on it only through CG stopping)

    [images]                    # Fashion-MNIST's test split (Debian's dataset-fashion-mnist) ...
    fashion_mnist = "test"
    indices = "0:8"             # "a:b", "a:b:step" or a list
    # paths = ["examples/fmnist"]   # ... or image files / folders (adapted to each model's size)

    [[grid]]                    # the cartesian product of its lists; repeat [[grid]] freely
    tasks = [{ task = "inpaint", mask = "box" }, { task = "deblur", kernel = "gaussian" }]
    methods = ["dps", "pigdm"]
    models = ["fmnist-ddpm-32"]
    diffstategrad = [false, true]
    steps = 100                 # optional: every method's --steps
    set = { eta = 1.0 }         # optional: fixed hyperparameters (only where the method has them)
    guidance = [1.0, 10.0]      # optional: multiplies each method's measurement-guidance step size
    sweep = { zeta = [0.3, 3] } # optional: explicit values of hyperparameters
    restarts = 4                # optional (phase retrieval: best-of-k by measurement residual)

A (task, method, model) that does not go together is listed in the results as skipped with
the reason, so a grid can be written broadly.  Each cell has a key (a hash of everything that
defines it); ``results.json`` is rewritten after every cell and a rerun skips finished cells,
so an interrupted suite resumes.  Randomness is per image and seed (``rng.make_generators``),
so a result depends on neither the batch nor the order of the cells.

``--baseline OLD.json`` compares every cell with the same key and exits 1 listing what
regressed beyond the tolerances (PSNR and SSIM lower, LPIPS and failure rate higher); the table
and the comparison are in ``bench_results.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .io import fit_to, list_images, read_image, to_channels, write_json_atomic
from .report import environment, mean_std

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RESULTS_SCHEMA = 1
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TASK_KEYS = {"task", "mask", "kernel", "kernel_size", "border", "scale", "filter", "oversample", "hdr_scale",
             "box_placement", "missing", "kernel_sigma", "motion_intensity"}


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

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.task_opts.items()))
        extra = [f"{k}={v}" for k, v in sorted(self.hparams.items())]
        if self.guidance != 1.0:
            extra.append(f"guidance x{self.guidance:g}")
        return (f"{self.task}[{opts}] {self.method}{'+dsg' if self.diffstategrad else ''} {self.model}"
                + (f" ({', '.join(extra)})" if extra else ""))


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
    description: str = ""
    image_source: dict = field(default_factory=dict)
    models_file: Path | None = None


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


def load_suite(path: Path) -> Suite:
    """Parse and check a suite file (names of tasks, methods, models and hyperparameters included)."""
    from .config import ConfigError, load_registry
    from .registry import METHODS, TASKS, UsageError, parse_set

    path = Path(path)
    data = _read(path, "suite file", tomllib.loads, tomllib.TOMLDecodeError, "TOML")
    known = {"name", "description", "seeds", "noise_sigma", "failure_psnr", "batch_size", "images", "grid", "lpips_net",
             "models_file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {', '.join(unknown)}")
    models_file = path.parent / data["models_file"] if "models_file" in data else None
    try:
        reg = load_registry(models_file)
    except ConfigError as e:
        raise SuiteError(str(e)) from None
    noise = float(data.get("noise_sigma", 0.05))
    cells: list[Cell] = []
    grids = data.get("grid") or []
    if not grids:
        raise SuiteError(f"{path}: no [[grid]] tables")
    grid_keys = {"tasks", "methods", "models", "diffstategrad", "steps", "set", "guidance", "sweep", "restarts", "noise_sigma"}
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
        if every - known:
            raise SuiteError(f"grid {gi + 1}: no method of the grid has hyperparameter(s) {', '.join(sorted(every - known))}")
        sweep = g.get("sweep") or {}
        sweep_items = [[(k, v) for v in _as_list(vals)] for k, vals in sorted(sweep.items())]
        for t, m, model, dsg, guide, point in itertools.product(
                tasks, _as_list(g["methods"]), _as_list(g["models"]), _as_list(g.get("diffstategrad", [False])),
                _as_list(g.get("guidance", [1.0])), list(itertools.product(*sweep_items)) or [()]):
            defaults = METHODS[m].cls.defaults
            raw = {k: v for k, v in {**(g.get("set") or {}), **dict(point)}.items() if k in defaults}
            if point and any(k not in defaults for k, _ in point):
                continue  # a sweep over a hyperparameter this method does not have
            try:  # typed and checked as --set values are
                hp = parse_set([f"{k}={v}" for k, v in raw.items()], METHODS[m])
            except UsageError as e:
                raise SuiteError(f"grid {gi + 1}: {e}") from None
            task_opts = {k: v for k, v in t.items() if k != "task"}
            cells.append(Cell(t["task"], task_opts, m, model, bool(dsg), hp, float(guide),
                              int(g["steps"]) if "steps" in g else None, float(g.get("noise_sigma", noise)),
                              int(g.get("restarts", TASKS[t["task"]].default_restarts))))
    seen, unique = set(), []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    spec = data.get("images") or {}
    images = _load_images(spec, path.parent)
    seeds = [int(s) for s in _as_list(data.get("seeds", [0]))]
    if not images or not seeds or not unique:
        raise SuiteError(f"{path}: the suite has no " + ("images" if not images else "seeds" if not seeds else "cells"))
    return Suite(name=str(data.get("name", path.stem)), path=path, images=images, seeds=seeds,
                 failure_psnr=float(data.get("failure_psnr", 15.0)), batch_size=int(data.get("batch_size", 8)),
                 cells=unique, lpips_net=str(data.get("lpips_net", "alex")),
                 description=str(data.get("description", "")), image_source=dict(spec), models_file=models_file)


# -- running ----------------------------------------------------------------------------------

def suite_context(suite: Suite) -> str:
    """A hash of what every cell's numbers depend on besides the cell itself: the images (ids and
    pixels), the seeds, the failure threshold and the LPIPS network."""
    h = hashlib.sha1(json.dumps([suite.seeds, suite.failure_psnr, suite.lpips_net]).encode())
    for name, img in suite.images:
        h.update(name.encode())
        h.update(img.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class _Models:
    """Loads each model once per suite run (on the suite's device)."""

    def __init__(self, device: torch.device, models_file: Path | None = None):
        from .config import load_registry

        self.device, self.reg, self.cache = device, load_registry(models_file), {}

    def spec(self, name):
        return self.reg.get(name)

    def prior(self, name):
        from .hub import load_prior

        if name not in self.cache:
            self.cache[name] = load_prior(self.spec(name), self.device, torch.float32, allow_download=False)
        return self.cache[name]


def model_fingerprint(spec) -> str:
    """What identifies a model's weights: the Hub revision, or a hash of a bundled/local folder's
    weights and configs, or the analytic fit.  A finished cell is reused only with the same one."""
    if spec.source == "hub":
        return f"hub:{spec.repo_id}@{spec.revision}"
    if spec.source == "analytic":
        from importlib import resources

        fit = resources.files("restore_cli").joinpath("data/gaussian_prior.json").read_bytes()
        return f"analytic:{spec.fitted_to or 'photos'}:{hashlib.sha1(fit).hexdigest()[:12]}"
    h = hashlib.sha1()
    root = Path(spec.path)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return f"{spec.source}:{h.hexdigest()[:12]}"


def check_cell(cell: Cell, models: _Models) -> str | None:
    """Why a cell cannot run (a usage problem), or None."""
    from .registry import UsageError, check_method, parse_set

    try:
        info = check_method(cell.method, cell.task, models.spec(cell.model))
        parse_set([f"{k}={v}" for k, v in cell.hparams.items()], info)
    except UsageError as e:
        return str(e)
    if cell.diffstategrad and not info.cls.gradient_guided:
        return f"{cell.method} has no measurement gradient for DiffStateGrad"
    if cell.guidance != 1.0 and not info.cls.guidance_keys:
        return f"{cell.method} has no measurement-guidance step size to scale"
    return None


def run_cell(cell: Cell, suite: Suite, models: _Models, lp=None, on_step: Callable | None = None) -> dict:
    """Restore every image x seed of a cell; per-image metrics and the cell's summary."""
    from .metrics import measurement_residual, psnr, ssim
    from .profiling import measure
    from .registry import METHODS, build_operator
    from .rng import make_generators
    from .solvers import DiffStateGrad, run_with_restarts

    info = METHODS[cell.method]
    prior = models.prior(cell.model)
    native = getattr(prior, "sample_size", None)
    hw = None if native is None else ((native, native) if isinstance(native, int) else tuple(native))
    dsg = DiffStateGrad(0.99, info.cls.default_period) if cell.diffstategrad else None
    hp = dict(cell.hparams)
    if cell.steps is not None:
        hp[info.steps_key] = cell.steps
    records, used_hp = [], None
    for seed in suite.seeds:
        for start in range(0, len(suite.images), suite.batch_size):
            chunk = list(enumerate(suite.images))[start:start + suite.batch_size]
            ids = [i for i, _ in chunk]
            x = torch.stack([to_channels(fit_to(img, hw, "resize")[0], prior.channels) for _, (_, img) in chunk])
            x = x.to(models.device)
            gens = [make_generators(seed, 1, offset=i)[0] for i in ids]
            op = build_operator(cell.task, cell.task_opts, tuple(x.shape[1:]), gens, cell.noise_sigma).to(models.device)
            y = op(x, gens)
            solver = info.cls(prior, op, dsg, **hp)
            for k in info.cls.guidance_keys:
                solver.hp[k] = solver.hp[k] * cell.guidance
            used_hp = used_hp or {k: v for k, v in solver.params().items() if k != "diffstategrad"}
            cb = None if on_step is None else (lambda s: on_step(s.step + 1, s.total))
            with measure(models.device) as usage:
                res = run_with_restarts(solver, y, gens, cell.restarts, "residual", None, cb)
            out = res.images.float()
            with torch.no_grad():
                p, s = _finite(psnr(out, x)), _finite(ssim(out, x))
                lps = _finite(lp(out, x).double()) if lp is not None else [None] * len(ids)
            resid = _finite(measurement_residual(op, out, y))
            for k, i in enumerate(ids):
                records.append({"image": suite.images[i][0], "seed": seed, "psnr": p[k], "ssim": s[k], "lpips": lps[k],
                                "residual": resid[k], "nfe": res.nfe, "n_backward": res.n_backward,
                                "seconds": usage.seconds / len(ids), "peak_memory_mb": usage.peak_mb})
    return {"hyperparameters": used_hp, "images": records, "summary": summarize_cell(records, suite.failure_psnr)}


def _finite(v: torch.Tensor) -> list:
    """Per-image values; a diverged image (NaN or inf) is recorded as null (and counts as a failure)."""
    return [x if math.isfinite(x) else None for x in v.double().tolist()]


def summarize_cell(records: list[dict], failure_psnr: float) -> dict:
    out = {k: mean_std([r[k] for r in records]) for k in ("psnr", "ssim", "lpips", "residual", "seconds")}
    out["failure_rate"] = sum(r["psnr"] is None or r["psnr"] < failure_psnr for r in records) / max(len(records), 1)
    out["nfe"] = records[0]["nfe"] if records else None
    out["n_backward"] = records[0]["n_backward"] if records else None
    mems = [r["peak_memory_mb"] for r in records if r["peak_memory_mb"] is not None]
    out["peak_memory_mb"] = max(mems) if mems else None
    return out


def run_suite(suite: Suite, output: Path, device: torch.device, rerun: bool = False,
              progress: Callable[[str, dict], None] | None = None, only: list[str] | None = None) -> dict:
    """Run every cell not already finished in ``output/results.json``; write results.json and results.md.

    ``only``: run just the cells whose label contains one of these strings (the others keep
    their previous results, if any)."""
    from .hub import ModelUnavailable
    from .metrics import LPIPS, lpips_status

    emit = progress or (lambda kind, info: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    res_path = output / "results.json"
    previous = {}
    if res_path.exists():
        try:
            previous = json.loads(res_path.read_text()).get("cells", {})
        except (json.JSONDecodeError, OSError):
            previous = {}
    context = suite_context(suite)
    models = _Models(device, suite.models_file)
    ok, where = lpips_status(suite.lpips_net)
    lp = LPIPS(suite.lpips_net).to(device) if ok else None
    data = {
        "schema_version": RESULTS_SCHEMA,
        "suite": {"name": suite.name, "file": str(suite.path), "description": suite.description, "context": None,
                  "images": suite.image_source, "n_images": len(suite.images), "seeds": suite.seeds,
                  "failure_psnr": suite.failure_psnr},
        "started": datetime.now(timezone.utc).isoformat(), "finished": None,
        "device": str(device), "lpips": {"net": suite.lpips_net, "available": ok, "source": where},
        "environment": environment(), "models": {}, "cells": {},
    }
    data["suite"]["context"] = context

    from .bench_results import markdown_table

    def flush():
        write_json_atomic(res_path, data)
        (output / "results.md").write_text(markdown_table(data))

    prints = {}
    for cell in suite.cells:
        if cell.model not in prints:
            prints[cell.model] = model_fingerprint(models.spec(cell.model))
    # earlier results of this suite's cells (in the suite's order), if made with the same weights
    previous = {k: c for k, c in previous.items()
                if c.get("model_fingerprint") == prints.get(c["config"]["model"]) and c.get("context") == context}
    for cell in suite.cells:
        if cell.key in previous:
            data["cells"][cell.key] = previous[cell.key]
    for n, cell in enumerate(suite.cells):
        if only and not any(o in cell.label for o in only):
            continue
        prev = None if rerun else previous.get(cell.key)  # --rerun redoes the selected cells only
        entry = {"config": asdict(cell), "label": cell.label, "model_fingerprint": prints[cell.model], "context": context}
        if prev and prev.get("status") in ("ok", "skipped"):
            data["cells"][cell.key] = prev
            emit("cell", {"n": n, "total": len(suite.cells), "label": cell.label, "status": "done before"})
            continue
        why = check_cell(cell, models)
        if why is not None:
            data["cells"][cell.key] = {**entry, "status": "skipped", "reason": why}
            emit("cell", {"n": n, "total": len(suite.cells), "label": cell.label, "status": "skipped"})
            continue
        emit("start", {"n": n, "total": len(suite.cells), "label": cell.label})
        t0 = time.time()
        try:
            out = run_cell(cell, suite, models, lp, lambda i, tot: emit("step", {"step": i, "total": tot}))
            data["cells"][cell.key] = {**entry, "status": "ok", **out, "wall_seconds": time.time() - t0}
            spec = models.spec(cell.model)
            data["models"][cell.model] = {**spec.record(),
                                          "resolved_revision": getattr(models.prior(cell.model), "resolved_revision", None)}
        except ModelUnavailable as e:
            data["cells"][cell.key] = {**entry, "status": "failed", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - one failing cell never loses the others
            data["cells"][cell.key] = {**entry, "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        emit("cell", {"n": n, "total": len(suite.cells), "label": cell.label, "status": data["cells"][cell.key]["status"]})
        flush()
    data["finished"] = datetime.now(timezone.utc).isoformat()
    flush()
    return data


__all__ = ["Suite", "Cell", "SuiteError", "load_suite", "run_suite", "summarize_cell", "load_fashion_mnist"]
