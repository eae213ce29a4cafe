"""resolve -> load -> for each batch: read, measure, solve, write -> a report (metrics.json).

:func:`resolve` checks every name and option (``checks.py``) and raises :class:`UsageError`
before anything is downloaded or loaded; :func:`execute` locks the output folder, loads the model
and reads and processes the images batch by batch, writing each image's outputs and an updated
``metrics.json`` after every batch, so an interrupted run loses nothing already written (the images
not reached are "pending") and a rerun with the same settings skips what exists; a rerun with other
settings is refused.  A failure on one image (unreadable, too large, diverged) is recorded and never
loses the others.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from . import __version__, ops
from .checks import RunConfig, check  # noqa: F401 - RunConfig is part of this module's API
from .config import ModelSpec
from .distributed import Shard, current, locked_update, output_lock  # noqa: F401 - output_lock: this module's API
from .hub import ModelUnavailable, load_prior
from .io import ImageReadError, fit_to, read_image_info, unfit, write_json_atomic, write_npy, write_png
from .batch import error_fields, finite, score, solve_batch
from .metrics import LPIPS, lpips_status, measurement_residual
from .catalog import TASK_DEFAULTS
from .registry import MethodInfo, UsageError, noise_unit, parse_set, resolve_device, resolve_dtype, resolve_prompt
from .report import SCHEMA_VERSION, environment, summarize
from .resume import RESULT_KEYS, config_differences, plan_records, remove_stale, stale_outputs  # noqa: F401 - this module's API
from .figures import compare_figure
from .samples import Moments, pixel_std, std_figure
from .solvers import DiffStateGrad, StepInfo


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
    stems: list[str] = field(default_factory=list)  # each image's output stem (checks.output_stems)
    overrides: dict = field(default_factory=dict)  # the hyperparameters given (--set, --steps)
    warnings: list[str] = field(default_factory=list)  # said once before the run, recorded in metrics.json
    shard: Shard = field(default_factory=Shard)  # this process's place under a launcher (distributed.py)


def resolve(cfg: RunConfig) -> Plan:
    """Validate the whole run; raises UsageError (exit 2) before any download or load."""
    c = check(cfg)
    info = c.method
    hp = parse_set(cfg.sets, info)
    if cfg.steps is not None:
        hp[info.steps_key] = cfg.steps
    dsg = None
    if cfg.diffstategrad:  # (a method without a measurement gradient was refused by check)
        try:
            dsg = DiffStateGrad(cfg.var_cutoff, cfg.period or info.cls.dsg_default_period(hp), cfg.rank_mode)
        except ValueError as e:
            raise UsageError(str(e)) from None
    shard = current(cpu=cfg.device == "cpu")
    device = shard.place(resolve_device(cfg.device))  # under a launcher: one GPU per process
    dtype = resolve_dtype(cfg.dtype, device)
    # solver construction validates the hyperparameters' values against the task (cheap, no model)
    return Plan(cfg, c.model, info, hp, dsg, device, dtype, c.images, c.restarts,
                resolve_prompt(c.model, info.name, cfg.prompt), c.stems, dict(hp),
                steps_warnings(info, hp, c.model.kind) + dtype_warnings(dtype, device) + jpeg_warnings(cfg), shard)


def jpeg_warnings(cfg: RunConfig) -> list[str]:
    """Measured JPEG takes each file's own tables: a --quality given is not used."""
    if cfg.measured and cfg.task == "jpeg" and "quality" in cfg.task_opts:
        return [f"--quality {cfg.task_opts['quality']} is ignored with --measured: each file's own quantisation tables "
                "and chroma subsampling are used (recorded per image under 'operator')"]
    return []


def _measured_jpeg_key(plan: Plan, i: int):
    """Measured JPEG: what must agree within a batch (chroma subsampling, number of tables); None otherwise."""
    if not (plan.cfg.measured and plan.cfg.task == "jpeg"):
        return None
    try:
        info = ops.jpeg_file_info(plan.images[i])
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"  # its own batch; _process reports the error
    return info["subsampling"], len(info["tables"])


def _measured_jpeg_opts(plan: Plan, idx: list[int], prepared: list, shape: tuple) -> dict:
    """The JPEG operator's options from the batch's files: per-image tables and their (common) subsampling."""
    c = shape[0]
    infos = [ops.jpeg_file_info(plan.images[i]) for i in idx]
    for i, (_, how, _), info in zip(idx, prepared, infos):
        with Image.open(plan.images[i]) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation not in (None, 1):  # the image is read upright, but its blocks and tables are not
            raise ValueError(f"this JPEG has EXIF orientation {orientation}: its 8x8 blocks and chroma sampling are "
                             "those of the stored, unrotated image; rotate it losslessly first (exiftran -a, or "
                             "jpegtran -perfect) and restore that")
        if how["fit"] != "none":
            raise ValueError(f"a measured JPEG is restored on its own 8x8 block grid, but this {how['size'][0]}x"
                             f"{how['size'][1]} image would be {how['fit']}d to the model's size: give images of the "
                             "model's size, or --fit none")
    if len({info["subsampling"] for info in infos}) > 1:
        raise ValueError("files with different chroma subsampling in one batch")
    tables = torch.tensor([info["tables"][:1 if c == 1 else 2] for info in infos], dtype=torch.float64)
    return {"tables": tables.reshape(len(idx), -1, 8, 8), "subsampling": infos[0]["subsampling"]}


def steps_warnings(info: MethodInfo, hp: dict, space: str = "pixel") -> list[str]:
    """A warning when fewer steps are asked for than the method's step sizes were tuned for (on a ``space``
    model; none for a method without step sizes, such as DDRM)."""
    tuned = info.cls.tuned_steps(space, info.steps_key)
    steps = hp.get(info.steps_key)
    if not tuned or steps is None or steps >= tuned:
        return []
    return [f"{info.name}'s step sizes are tuned for {tuned} {info.steps_key.replace('_', ' ')}; at {steps} expect a "
            f"much worse (even noisy) result unless you also retune them with --set"]


def dtype_warnings(dtype: torch.dtype, device: torch.device) -> list[str]:
    """A warning where a precision is known to be slow on the device."""
    if dtype == torch.bfloat16 and device.type == "cpu":
        return ["bf16 on the CPU is emulated by most processors and can be far slower than fp32 "
                "(2 DPS steps of ddpm-celebahq-256 did not finish in 2000 s, against 110 s in fp32); use --dtype fp32"]
    return []


@dataclass
class Report:
    data: dict
    path: Path

    @property
    def failed(self) -> int:
        return self.data["summary"]["images"]["failed"]


Events = Callable[[str, dict], None]


def execute(plan: Plan, events: Events | None = None, tqdm_class=None) -> Report:
    """Run a resolved plan; ``events(kind, info)`` receives progress ("model", "batch", "step", "image",
    "warning").  Holds the output folder's lock throughout (a second run into it is refused).

    Under a launcher (``plan.shard.world > 1``) rank 0 holds the lock and checks the folder; each process
    restores its share of the images still to do and merges its records into ``metrics.json`` as it goes."""
    out = Path(plan.cfg.output)
    emit = events or (lambda kind, info: None)
    shard = plan.shard
    if shard.world == 1:
        make_output_folder(out)
        with output_lock(out):
            return _execute(plan, out, emit, tqdm_class)
    with ExitStack() as stack:
        error = None
        if shard.main:
            try:
                make_output_folder(out)
                stack.enter_context(output_lock(out))
            except (UsageError, OSError) as e:
                error = str(e)
        error = shard.broadcast(error)
        if error:
            raise UsageError(error)
        return _execute(plan, out, emit, tqdm_class)


def make_output_folder(out: Path) -> None:
    """``-o``, made if needed; a folder that cannot be made is a usage error in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"-o {out}: cannot make this folder ({e.strerror or e}); choose another output folder") from None


def _execute(plan: Plan, out: Path, emit: Events, tqdm_class) -> Report:
    cfg = plan.cfg
    metrics_path = out / "metrics.json"
    data = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "restore", "version": __version__},
        "command": cfg.argv,
        "started": datetime.now(timezone.utc).isoformat(),
        "finished": None,
        "config": {
            "task": cfg.task, "mode": "measured" if cfg.measured else "reference",
            "operator": {"task_options": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in {**TASK_DEFAULTS[cfg.task], **cfg.task_opts}.items()
                                          if not (cfg.measured and cfg.task == "jpeg" and k == "quality")},
                         "noise_sigma": cfg.noise_sigma, "noise_unit": noise_unit(cfg.task)[1],
                         "sigma_y_01": cfg.noise_sigma / noise_unit(cfg.task)[0]},
            "method": {"name": plan.method.name, "revision": plan.method.cls.method_revision(cfg.task, plan.model.kind),
                       "overrides": plan.overrides, "hyperparameters": None,
                       "diffstategrad": plan.method.cls.dsg_record(plan.dsg, plan.hparams)},
            "restarts": {"count": plan.restarts, "rule": "min_measurement_residual" if cfg.restart_rule == "residual" else "oracle_max_psnr"},
            "model": {**plan.model.record(), "prompt": plan.prompt},
            "seed": cfg.seed, "device": str(plan.device), "dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "fit": cfg.fit, "low_memory": cfg.low_memory, "lpips": {"net": cfg.lpips_net, "available": None, "source": None},
            "samples": cfg.samples,
            "warnings": list(plan.warnings),
        },
        "environment": {},  # below, once the folder is known to take this run (it imports diffusers: seconds)
        "images": [],
        "summary": {},
    }
    shard = plan.shard
    if shard.world > 1:
        data["config"]["processes"] = shard.world
    # rank 0 checks the folder and lists what is left; every process starts from its answer
    verdict = None
    if shard.main:
        try:
            verdict = plan_records(plan, out, data["config"])
            for msg in remove_stale(stale_outputs(plan, out)):  # --overwrite: the superseded run's extra files
                data["config"]["warnings"].append(msg)
                emit("warning", {"message": msg})
        except UsageError as e:
            verdict = str(e)
    verdict = shard.broadcast(verdict)
    if isinstance(verdict, str):
        raise UsageError(verdict)
    data["environment"] = environment()
    carried, records, todo = verdict
    mine = shard.share(todo)
    ours = {r["input"] for r in records}
    touched = set(mine)
    wanted = {records[i]["input"] for i in todo}  # the run's images still to do, over every process

    def progress():  # the run's total, from the records merged so far (every process's, under a launcher)
        done = sum(1 for r in data["images"] if r.get("input") in wanted and r.get("status") in ("ok", "failed"))
        emit("progress", {"done": done, "total": len(wanted), "processes": shard.world})

    def flush():
        if shard.world == 1:
            data["images"] = carried + records
            data["summary"] = summarize(records)
            write_json_atomic(metrics_path, data)
            progress()
            return

        def merge(old):  # this process's records over the file's (the others' progress kept)
            if not old or old.get("started") != data["started"]:
                return {**data, "images": carried + records, "summary": summarize(records)}
            by_input = {r["input"]: r for r in old["images"]}
            for i in touched:
                by_input[records[i]["input"]] = records[i]
            for k in ("hyperparameters",):
                old["config"]["method"][k] = old["config"]["method"][k] or data["config"]["method"][k]
            for k in ("loaded_as", "resolved_revision", "source_sha256"):
                if k in data["config"]["model"]:
                    old["config"]["model"].setdefault(k, data["config"]["model"][k])
            old["config"]["lpips"] = data["config"]["lpips"] if old["config"]["lpips"]["available"] is None else old["config"]["lpips"]
            old["config"]["warnings"] = list(dict.fromkeys(old["config"]["warnings"] + data["config"]["warnings"]))
            old["images"] = list(by_input.values())
            old["summary"] = summarize([r for r in old["images"] if r["input"] in ours])
            for k in ("finished", "interrupted"):
                if data.get(k):
                    old[k] = data[k]
            return old

        data.update(locked_update(metrics_path, merge))
        progress()

    data["started"] = shard.broadcast(data["started"])  # one run: one start time, the merge's key
    if shard.main:
        flush()
    shard.barrier()
    if todo:
        try:
            _solve_all(plan, out, mine, records, data, flush, emit, tqdm_class)
        except KeyboardInterrupt:
            data["interrupted"] = True  # the images not reached stay "pending"; a rerun continues
            flush()
            raise
    shard.barrier()
    if shard.main:
        data["finished"] = datetime.now(timezone.utc).isoformat()
        flush()
        (out / ".metrics.json.lock").unlink(missing_ok=True)  # the processes' merge lock (distributed.py)
    if shard.world > 1:
        shard.barrier()
        data.update(json.loads(metrics_path.read_text()))
    return Report(data, metrics_path)


def _solve_all(plan: Plan, out: Path, todo: list[int], records: list[dict], data: dict, flush, emit: Events,
               tqdm_class) -> None:
    """Load the model, then read the images one at a time (never more than a batch in memory) and solve
    them in batches of consecutive images of one working shape; each image's failure is its own."""
    cfg = plan.cfg
    shard = plan.shard
    # many processes: each machine's first process downloads and converts, the others then read its cache
    if shard.world > 1 and shard.local_rank != 0:
        shard.barrier()
    try:
        if not todo:
            return  # nothing in this process's share
        emit("model", {"name": plan.model.name})
        try:
            prior = load_prior(plan.model, plan.device, plan.dtype, tqdm_class=tqdm_class, low_memory=cfg.low_memory,
                               prompt=plan.prompt)
        except ModelUnavailable:
            raise  # already one clear line
        except Exception as e:  # noqa: BLE001 - a broken model directory or file: one line, exit 1
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelUnavailable(f"could not load model {plan.model.name!r}: {why}") from e
    finally:
        if shard.world > 1 and shard.local_rank == 0:
            shard.barrier()
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
    warned: set[str] = set()
    # --batch-size counts solves run together: with --samples N an image is N of them (see batch.solve_batch)
    per_batch = max(1, cfg.batch_size // cfg.samples)

    def run_batch(batch):
        try:
            hp = _process(plan, prior, lp, batch, records, plan.stems, out, emit, native_hw)
            data["config"]["method"]["hyperparameters"] = data["config"]["method"]["hyperparameters"] or hp
        except Exception as e:  # noqa: BLE001
            if len(batch) > 1:  # isolate the failing image(s)
                for item in batch:
                    run_batch([item])
                return
            records[batch[0][0]].update({"status": "failed", **error_fields(e)})
        flush()

    batch: list = []
    for i in todo:
        try:
            img, info = read_image_info(plan.images[i], prior.channels)
        except ImageReadError as e:
            records[i].update({"status": "failed", "error": str(e)})
            flush()
            continue
        if info.converted:
            records[i]["converted"] = info.converted
            if info.converted not in warned:
                warned.add(info.converted)
                msg = (f"{plan.model.name} is a {'grey' if prior.channels == 1 else 'colour'} model: "
                       f"images are converted {info.converted} (recorded per image as 'converted')")
                data["config"]["warnings"].append(msg)
                emit("warning", {"message": msg})
        item = (i, img, info)
        if batch and (len(batch) >= per_batch or batch[0][1].shape != img.shape
                      or _measured_jpeg_key(plan, batch[0][0]) != _measured_jpeg_key(plan, i)):
            run_batch(batch)
            batch = []
        batch.append(item)
    if batch:
        run_batch(batch)


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


def _image_record(out, stem, img, shape, metrics, k, b, residual, nfe, n_backward, seconds, usage, op) -> dict:
    """The fields of every restored image's record (the metrics: of the restored image, or of the samples' mean)."""
    return {"measurement": str(out / f"{stem}.measurement.png"),
            "working_size": list(shape[-2:]), "input_size": list(img.shape[-2:]),
            **{name: metrics.get(name, [None] * b)[k] for name in ("psnr", "ssim", "lpips")},
            "residual": residual, "nfe": nfe, "n_backward": n_backward,
            "seconds": seconds, "peak_memory_mb": usage.peak_mb, "batch_images": b,
            "operator": op.select([k]).params()}


def _process(plan, prior, lp, batch, records, stems, out, emit, native_hw):
    cfg = plan.cfg
    t0 = time.time()
    idx = [i for i, _, _ in batch]
    prepared = [_measurement_inputs(plan, img, native_hw) for _, img, _ in batch]
    shape = prepared[0][2]
    x = torch.stack([p[0] for p in prepared]).to(plan.device)

    def on_step(info: StepInfo):
        emit("step", {"step": info.step, "total": info.total, "images": [stems[i] for i in idx]})

    emit("batch", {"images": [stems[i] for i in idx]})
    task_opts = cfg.task_opts
    if cfg.measured and cfg.task == "jpeg":
        task_opts = {**task_opts, **_measured_jpeg_opts(plan, idx, prepared, shape)}
    sb = solve_batch(x, idx, task=cfg.task, task_opts=task_opts, noise_sigma=cfg.noise_sigma, seed=cfg.seed,
                     method_cls=plan.method.cls, prior=prior, dsg=plan.dsg, hparams=plan.hparams,
                     restarts=plan.restarts, rule=cfg.restart_rule, measured=cfg.measured, shape=shape,
                     on_step=on_step, samples=cfg.samples, chunk=cfg.batch_size)
    if cfg.samples > 1:
        return _write_samples(plan, lp, batch, records, stems, out, emit, prepared, sb, shape, t0, x)
    op, y, res, usage = sb.op, sb.y, sb.result, sb.usage
    ref = None if cfg.measured else x
    seconds = (time.time() - t0) / len(batch)
    hp = sb.solver.params()
    out_imgs = res.images.float().cpu()
    resid = sb.residuals()
    metrics, metric_errors = score(res.images, ref, lp) if ref is not None else ({}, [])
    vis = op.visualize(y).float().cpu()
    for k, (i, img, info) in enumerate(batch):
        how = prepared[k][1]
        restored = unfit(out_imgs[k], how)
        stem = stems[i]
        write_png(out / f"{stem}.measurement.png", vis[k])
        # a diverged image (NaN/inf) is a failure with its reason, not a black PNG; a rerun retries it
        diverged = not bool(torch.isfinite(out_imgs[k]).all())
        if cfg.compare and not diverged:
            write_png(out / f"{stem}.compare.png", compare_figure(img if ref is not None else None, vis[k], restored,
                                                               op.select([k]), how))
        if not diverged:
            write_png(out / f"{stem}.png", restored, bits=info.bits)  # 16-bit inputs give 16-bit results
        rec = records[i]
        rec.update({"status": "failed" if diverged else "ok",
                    "error": ("the solver diverged (non-finite values in the restored image): "
                              "lower the measurement step size (--set)") if diverged else None,
                    **_image_record(out, stem, img, shape, metrics, k, len(batch), resid[k], res.nfe, res.n_backward,
                                    seconds, usage, op)})
        if metric_errors:
            rec["metric_errors"] = metric_errors
        cg = res.extra.get("cg")
        if cg is not None:  # posterior-mean: did its conjugate-gradient solve reach the tolerance?
            rec["cg"] = {"converged": cg["converged"][k], "relative_residual": cg["rel_residual"][k],
                         "iterations": cg["iterations"], "system": cg["system"], "tol": cg["tol"]}
            if not cg["converged"][k]:
                emit("warning", {"message": f"{stem}: the posterior mean's conjugate gradients stopped after "
                                            f"{cg['iterations']} iterations at relative residual "
                                            f"{cg['rel_residual'][k]:.2g} (tolerance {cg['tol']:g}): not exact"})
        if res.extra.get("restarts", 1) > 1:
            rec["restarts"] = {"rule": res.extra["restart_rule"], "chosen_run": res.extra["chosen_run"][k],
                               "count": res.extra["restarts"]}
        emit("image", {"stem": stem, "record": rec})
    hp.pop("diffstategrad", None)
    return hp


def _write_samples(plan, lp, batch, records, stems, out, emit, prepared, sb, shape, t0, x):
    """``--samples N > 1``: per image, its N samples, their mean (``<stem>.png``, written last: a rerun
    skips an image only once everything is there) and per-pixel std (``.std.npy``, ``.std.png``), with
    metrics of the mean and of every sample."""
    cfg = plan.cfg
    n = cfg.samples
    op, y, res, usage = sb.op, sb.y, sb.result, sb.usage
    b = len(batch)
    ref = None if cfg.measured else x
    seconds = (time.time() - t0) / b
    hp = sb.solver.params()
    rows = res.images.float()
    means = rows.reshape(b, n, *rows.shape[1:]).mean(1)  # at the working size: what the metrics score
    resid = finite(measurement_residual(op, means, y))
    row_resid = sb.residuals()
    metrics, metric_errors = score(means, ref, lp) if ref is not None else ({}, [])
    row_metrics, row_errors = score(rows, ref[sb.rows()], lp) if ref is not None else ({}, [])
    out_rows = rows.cpu()
    vis = op.visualize(y).float().cpu()
    chosen = res.extra.get("chosen_run") if res.extra.get("restarts", 1) > 1 else None
    for k, (i, img, info) in enumerate(batch):
        how = prepared[k][1]
        stem = stems[i]
        mine = range(k * n, (k + 1) * n)
        write_png(out / f"{stem}.measurement.png", vis[k])
        bad = [j for j, r in enumerate(mine) if not bool(torch.isfinite(out_rows[r]).all())]
        std = None
        if not bad:
            mom = Moments()
            for j, r in enumerate(mine):
                sample = unfit(out_rows[r], how)
                write_png(out / f"{stem}.sample-{j}.png", sample, bits=info.bits)
                mom.add(sample)
            restored, std = mom.mean, mom.std
            write_npy(out / f"{stem}.std.npy", std)
            write_png(out / f"{stem}.std.png", std_figure(std))
            if cfg.compare:
                write_png(out / f"{stem}.compare.png", compare_figure(img if ref is not None else None, vis[k], restored,
                                                                   op.select([k]), how, std=std, samples=n))
            write_png(out / f"{stem}.png", restored, bits=info.bits)

        def row(name, r):
            return row_metrics.get(name, [None] * len(out_rows))[r]

        rec = records[i]
        rec.update({"status": "failed" if bad else "ok",
                    "error": (f"the solver diverged in sample{'s' if len(bad) > 1 else ''} "
                              f"{', '.join(map(str, bad))} of {n} (non-finite values): lower the measurement "
                              "step size (--set)") if bad else None,
                    **_image_record(out, stem, img, shape, metrics, k, b, resid[k], sb.nfe[k], sb.n_backward[k],
                                    seconds, usage, op),
                    "samples": {"count": n,
                                "std": None if bad else str(out / f"{stem}.std.png"),
                                "std_array": None if bad else str(out / f"{stem}.std.npy"),
                                "std_mean": None if std is None else float(pixel_std(std).mean()),
                                "std_max": None if std is None else float(pixel_std(std).max()),
                                "runs": [{"output": None if bad else str(out / f"{stem}.sample-{j}.png"),
                                          "psnr": row("psnr", r), "ssim": row("ssim", r), "lpips": row("lpips", r),
                                          "residual": row_resid[r],
                                          **({"chosen_run": chosen[r]} if chosen is not None else {})}
                                         for j, r in enumerate(mine)]}})
        if metric_errors or row_errors:
            rec["metric_errors"] = metric_errors + [f"samples: {e}" for e in row_errors]
        if chosen is not None:
            rec["restarts"] = {"rule": res.extra["restart_rule"], "chosen_run": [chosen[r] for r in mine],
                               "count": res.extra["restarts"]}
        emit("image", {"stem": stem, "record": rec})
    hp.pop("diffstategrad", None)
    return hp
