"""resolve -> load -> for each batch: measure, solve, write -> a report (metrics.json).

:func:`resolve` checks every name and option and raises :class:`UsageError`
before anything is downloaded or loaded; :func:`execute` loads the model and
processes the images batch by batch, writing each image's outputs and an
updated ``metrics.json`` after every batch, so an interrupted run loses
nothing already written and a rerun skips what exists.  A failure on one
image is recorded and never loses the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .config import ConfigError, ModelSpec, load_registry
from .hub import ModelUnavailable, load_prior
from .io import FITS, ImageReadError, fit_to, list_images, read_image, side_by_side, unfit, write_json_atomic, write_png
from .batch import error_line, score, solve_batch
from .metrics import LPIPS, lpips_status
from .registry import (METHODS, TASKS, MethodInfo, UsageError, check_method, noise_unit, parse_set, resolve_device,
                       resolve_dtype, resolve_prompt)
from .report import SCHEMA_VERSION, environment, summarize
from .solvers import DiffStateGrad, StepInfo



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
    argv: list[str] = field(default_factory=list)


@dataclass
class Plan:
    cfg: RunConfig
    model: ModelSpec
    method: MethodInfo
    hparams: dict
    dsg: DiffStateGrad | None
    device: torch.device
    dtype: torch.dtype
    images: list[Path]
    restarts: int
    prompt: str | None = None  # the text prompt a text-conditioned model runs with


def resolve(cfg: RunConfig) -> Plan:
    """Validate the whole run; raises UsageError (exit 2) before any download or load."""
    if cfg.task not in TASKS:
        raise UsageError(f"unknown task {cfg.task!r}; available: {', '.join(TASKS)}")
    try:
        reg = load_registry(cfg.models_file)
        name = cfg.model
        if name is None:
            info = METHODS.get(cfg.method)
            name = reg.defaults.get(info.default_kind if info else "pixel", "gaussian")
        model = reg.get(name)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    info = check_method(cfg.method, cfg.task, model)
    hp = parse_set(cfg.sets, info)
    if cfg.steps is not None:
        if cfg.steps < 1:
            raise UsageError("--steps must be >= 1")
        hp[info.steps_key] = cfg.steps
    if cfg.measured and not TASKS[cfg.task].measured:
        raise UsageError(f"{cfg.task} has no measured mode (give a clean reference image instead)")
    if cfg.measured and cfg.task == "inpaint" and cfg.task_opts.get("mask", "box") in ("box", "random", "freeform"):
        raise UsageError("measured inpainting needs the mask of the damaged pixels: --mask PATH (white = missing)")
    for key in ("mask", "kernel"):
        v = cfg.task_opts.get(key)
        if v is not None and v not in ("box", "random", "freeform", "gaussian", "motion", "uniform") and not Path(v).is_file():
            raise UsageError(f"--{key} {v!r}: not a known {key} type nor an existing file")
    if cfg.fit not in FITS:
        raise UsageError(f"--fit must be one of {', '.join(FITS)}")
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if cfg.noise_sigma < 0:
        raise UsageError("--noise-sigma must be >= 0")
    dsg = None
    if cfg.diffstategrad:
        try:
            dsg = DiffStateGrad(cfg.var_cutoff, cfg.period or info.cls.default_period, cfg.rank_mode)
        except ValueError as e:
            raise UsageError(str(e)) from None
    restarts = cfg.restarts if cfg.restarts is not None else TASKS[cfg.task].default_restarts
    if restarts < 1:
        raise UsageError("--restarts must be >= 1")
    if cfg.restart_rule == "oracle" and cfg.measured:
        raise UsageError("the oracle restart rule needs reference images (not --measured)")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    missing = [p for p in cfg.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing[0]}")
    images = list_images(cfg.inputs)
    if not images:
        raise UsageError("no input images found")
    # solver construction validates the hyperparameters' values against the task (cheap, no model)
    return Plan(cfg, model, info, hp, dsg, device, dtype, images, restarts, _prompt(cfg, model, info))


def _prompt(cfg: RunConfig, model: ModelSpec, info: MethodInfo) -> str | None:
    """``--prompt``, else the model's default; PSLD on Stable Diffusion uses the empty prompt (its code's)."""
    return resolve_prompt(model, info.name, cfg.prompt)

def _stems(images: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in images:
        s = p.stem
        if s in seen:
            seen[s] += 1
            s = f"{s}-{seen[s]}"
        else:
            seen[s] = 0
        out.append(s)
    return out


@dataclass
class Report:
    data: dict
    path: Path

    @property
    def failed(self) -> int:
        return self.data["summary"]["images"]["failed"]


Events = Callable[[str, dict], None]


def execute(plan: Plan, events: Events | None = None, tqdm_class=None) -> Report:
    """Run a resolved plan; ``events(kind, info)`` receives progress ("model", "batch", "step", "image")."""
    cfg = plan.cfg
    emit = events or (lambda kind, info: None)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    previous = {}
    if metrics_path.exists() and not cfg.overwrite:
        try:
            import json

            previous = {r["input"]: r for r in json.loads(metrics_path.read_text()).get("images", [])}
        except Exception:  # noqa: BLE001 - a damaged file is simply not reused
            previous = {}
    stems = _stems(plan.images)
    records: list[dict | None] = [None] * len(plan.images)
    started = datetime.now(timezone.utc).isoformat()
    data = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "restore", "version": __version__},
        "command": cfg.argv,
        "started": started,
        "finished": None,
        "config": {
            "task": cfg.task, "mode": "measured" if cfg.measured else "reference",
            "operator": {"task_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.task_opts.items()},
                         "noise_sigma": cfg.noise_sigma, "noise_unit": noise_unit(cfg.task)[1],
                         "sigma_y_01": cfg.noise_sigma / noise_unit(cfg.task)[0]},
            "method": {"name": plan.method.name, "hyperparameters": None,
                       "diffstategrad": plan.dsg.params() if plan.dsg else None},
            "restarts": {"count": plan.restarts, "rule": "min_measurement_residual" if cfg.restart_rule == "residual" else "oracle_max_psnr"},
            "model": {**plan.model.record(), "prompt": plan.prompt},
            "seed": cfg.seed, "device": str(plan.device), "dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "fit": cfg.fit, "low_memory": cfg.low_memory, "lpips": {"net": cfg.lpips_net, "available": None, "source": None},
        },
        "environment": environment(),
        "images": [],
        "summary": {},
    }

    def flush():
        data["images"] = [r for r in records if r is not None]
        data["summary"] = summarize(data["images"])
        write_json_atomic(metrics_path, data)

    todo = []
    for i, (p, stem) in enumerate(zip(plan.images, stems)):
        if not cfg.overwrite and (out / f"{stem}.png").exists():
            rec = dict(previous.get(str(p), {"input": str(p)}))
            rec.update({"input": str(p), "output": str(out / f"{stem}.png"), "status": "skipped"})
            records[i] = rec
        else:
            todo.append(i)
    flush()
    if not todo:
        data["finished"] = datetime.now(timezone.utc).isoformat()
        flush()
        return Report(data, metrics_path)

    emit("model", {"name": plan.model.name})
    try:
        prior = load_prior(plan.model, plan.device, plan.dtype, tqdm_class=tqdm_class, low_memory=cfg.low_memory,
                           prompt=plan.prompt)
    except ModelUnavailable:
        raise  # already one clear line
    except Exception as e:  # noqa: BLE001 - a broken model directory or file: one line, exit 1
        raise ModelUnavailable(f"could not load model {plan.model.name!r}: {type(e).__name__}: {e}") from e
    data["config"]["model"]["loaded_as"] = prior.info()
    data["config"]["model"]["resolved_revision"] = getattr(prior, "resolved_revision", None)
    if getattr(prior, "source_sha256", None):  # a converted original checkpoint: the file it came from
        data["config"]["model"]["source_sha256"] = prior.source_sha256
    ok, where = lpips_status(cfg.lpips_net)
    lp = None
    if ok and not cfg.measured:
        try:
            lp = LPIPS(cfg.lpips_net).to(plan.device)
        except Exception as e:  # noqa: BLE001
            ok, where = False, f"{type(e).__name__}: {e}"
    data["config"]["lpips"].update({"available": ok, "source": where})
    native = getattr(prior, "sample_size", None)
    native_hw = None
    if native is not None and cfg.fit != "none":
        native_hw = (native, native) if isinstance(native, int) else tuple(native)

    # read and adapt every image still to do; group consecutive images of one working shape into batches
    items = []
    for i in todo:
        p = plan.images[i]
        rec = {"input": str(p), "output": str(out / f"{stems[i]}.png"), "status": "failed", "error": None}
        records[i] = rec
        try:
            img = read_image(p, prior.channels)
            items.append((i, img))
        except ImageReadError as e:
            rec["error"] = str(e)
    flush()

    batch: list = []

    def run_batch(batch):
        try:
            hp = _process(plan, prior, lp, batch, records, stems, out, emit, native_hw)
            data["config"]["method"]["hyperparameters"] = data["config"]["method"]["hyperparameters"] or hp
        except Exception as e:  # noqa: BLE001
            if len(batch) > 1:  # isolate the failing image(s)
                for item in batch:
                    run_batch([item])
                return
            i = batch[0][0]
            records[i].update({"status": "failed", "error": error_line(e)})
        flush()

    for item in items:
        if batch and (len(batch) >= cfg.batch_size or batch[0][1].shape != item[1].shape):
            run_batch(batch)
            batch = []
        batch.append(item)
    if batch:
        run_batch(batch)
    data["finished"] = datetime.now(timezone.utc).isoformat()
    flush()
    return Report(data, metrics_path)


def _measurement_inputs(plan: Plan, img: torch.Tensor, native_hw):
    """(working image, undo info, working shape) for reference and measured modes."""
    cfg = plan.cfg
    if cfg.measured and cfg.task == "superres":
        f = int(cfg.task_opts.get("scale", 4))
        lr_hw = None if native_hw is None else (native_hw[0] // f, native_hw[1] // f)
        lr, how = fit_to(img, lr_hw, cfg.fit)
        how = {"fit": how["fit"], "size": [img.shape[-2] * f, img.shape[-1] * f],
               **({"offset": [o * f for o in how["offset"]]} if "offset" in how else {})}
        return lr, how, (img.shape[0], lr.shape[-2] * f, lr.shape[-1] * f)
    work, how = fit_to(img, native_hw, cfg.fit)
    return work, how, tuple(work.shape)


def _process(plan, prior, lp, batch, records, stems, out, emit, native_hw):
    cfg = plan.cfg
    t0 = time.time()
    idx = [i for i, _ in batch]
    prepared = [_measurement_inputs(plan, img, native_hw) for _, img in batch]
    shape = prepared[0][2]
    x = torch.stack([p[0] for p in prepared]).to(plan.device)

    def on_step(info: StepInfo):
        emit("step", {"step": info.step, "total": info.total, "images": [stems[i] for i in idx]})

    emit("batch", {"images": [stems[i] for i in idx]})
    sb = solve_batch(x, idx, task=cfg.task, task_opts=cfg.task_opts, noise_sigma=cfg.noise_sigma, seed=cfg.seed,
                     method_cls=plan.method.cls, prior=prior, dsg=plan.dsg, hparams=plan.hparams,
                     restarts=plan.restarts, rule=cfg.restart_rule, measured=cfg.measured, shape=shape,
                     on_step=on_step)
    op, y, res, usage = sb.op, sb.y, sb.result, sb.usage
    ref = None if cfg.measured else x
    seconds = (time.time() - t0) / len(batch)
    hp = sb.solver.params()
    out_imgs = res.images.float().cpu()
    resid = sb.residuals()
    metrics, metric_errors = score(res.images, ref, lp) if ref is not None else ({}, [])
    vis = op.visualize(y).float().cpu()
    for k, (i, img) in enumerate(batch):
        how = prepared[k][1]
        restored = unfit(out_imgs[k], how)
        stem = stems[i]
        write_png(out / f"{stem}.measurement.png", vis[k])
        # a diverged image (NaN/inf) is a failure with its reason, not a black PNG; a rerun retries it
        diverged = not bool(torch.isfinite(out_imgs[k]).all())
        if cfg.compare and not diverged:
            panels = ([img] if ref is not None else []) + [vis[k], restored]
            write_png(out / f"{stem}.compare.png", side_by_side(panels))
        if not diverged:
            write_png(out / f"{stem}.png", restored)
        rec = records[i]
        rec.update({"status": "failed" if diverged else "ok",
                    "error": ("the solver diverged (non-finite values in the restored image): "
                              "lower the measurement step size (--set)") if diverged else None,
                    "measurement": str(out / f"{stem}.measurement.png"),
                    "working_size": list(shape[-2:]), "input_size": list(img.shape[-2:]),
                    "psnr": metrics.get("psnr", [None] * len(batch))[k],
                    "ssim": metrics.get("ssim", [None] * len(batch))[k],
                    "lpips": metrics.get("lpips", [None] * len(batch))[k],
                    "residual": resid[k], "nfe": res.nfe, "n_backward": res.n_backward,
                    "seconds": seconds, "peak_memory_mb": usage.peak_mb, "batch_images": len(batch),
                    "operator": op.select([k]).params()})
        if metric_errors:
            rec["metric_errors"] = metric_errors
        if res.extra.get("restarts", 1) > 1:
            rec["restarts"] = {"rule": res.extra["restart_rule"], "chosen_run": res.extra["chosen_run"][k],
                               "count": res.extra["restarts"]}
        emit("image", {"stem": stem, "record": rec})
    hp.pop("diffstategrad", None)
    return hp
