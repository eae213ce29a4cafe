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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from .. import ops
from ..version import __version__
from ..errors import UsageError
from ..images.read import ImageReadError, fit_to, read_image_info, unfit
from ..images.write import write_json_atomic, write_npy, write_png
from ..metrics import LPIPS, lpips_status, measurement_residual
from ..models.catalog import TASK_DEFAULTS, noise_unit
from ..models.hub import ModelUnavailable, load_prior
from ..solvers import StepInfo
from .batch import Solve, SolvedBatch, error_fields, finite, score, solve_batch
from .distributed import locked_update, output_lock
from .figures import compare_figure, std_figure
from .plan import Plan
from .report import SCHEMA_VERSION, environment, summarize
from .resume import plan_records, remove_stale, stale_outputs
from .samples import Moments, pixel_std


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
                         "sigma_y_01": cfg.noise_sigma / noise_unit(cfg.task)[0],
                         # --noise-unit: the value as given, beside the papers' units and [0, 1]'s above
                         **({} if cfg.noise_given is None else
                            {"noise_as_given": {"noise_sigma": cfg.noise_given[0], "noise_unit": cfg.noise_given[1]}})},
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
            _solve_all(RunContext(plan, out, emit, data, records, flush), mine, tqdm_class)
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


@dataclass
class RunContext:
    """One run, built once by :func:`_execute`: the plan, the output folder, the progress sink, the metrics.json
    being written (``data``, its image ``records`` and ``flush`` to write it) and, once loaded, the model, the
    LPIPS network and how every batch is solved (``solve``)."""

    plan: Plan
    out: Path
    emit: Events
    data: dict
    records: list[dict]
    flush: Callable[[], None]
    prior: Any = None
    lp: Any = None
    native_hw: tuple[int, int] | None = None  # the model's own size, to fit images to (None: as they are)
    solve: Solve | None = None


@dataclass
class Batch:
    """Consecutive images of one working shape, solved together: ``items`` are (run index, image as read,
    ImageInfo); ``prepared`` each one's (working image, undo info, working shape)."""

    items: list[tuple]
    prepared: list[tuple]
    x: torch.Tensor  # the working images on the device
    solved: SolvedBatch | None = None
    seconds: float = 0.0  # wall time per image from the batch's start to the end of its solve

    @property
    def shape(self) -> tuple:
        return self.prepared[0][2]


def _load(run: RunContext, tqdm_class) -> None:
    """The model (one clear line if it cannot load), the LPIPS network and the batches' :class:`Solve`."""
    plan, cfg, data = run.plan, run.plan.cfg, run.data
    run.emit("model", {"name": plan.model.name})
    try:
        prior = load_prior(plan.model, plan.device, plan.dtype, tqdm_class=tqdm_class, low_memory=cfg.low_memory,
                           prompt=plan.prompt)
    except ModelUnavailable:
        raise  # already one clear line
    except Exception as e:  # noqa: BLE001 - a broken model directory or file: one line, exit 1
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelUnavailable(f"could not load model {plan.model.name!r}: {why}") from e
    data["config"]["model"]["loaded_as"] = prior.info()
    data["config"]["model"]["resolved_revision"] = getattr(prior, "resolved_revision", None)
    if getattr(prior, "source_sha256", None):  # a converted original checkpoint: the file it came from
        data["config"]["model"]["source_sha256"] = prior.source_sha256
    ok, where = lpips_status(cfg.lpips_net)
    if ok and not cfg.measured:
        try:
            run.lp = LPIPS(cfg.lpips_net).to(plan.device)
        except Exception as e:  # noqa: BLE001
            ok, where = False, f"{type(e).__name__}: {e}"
    data["config"]["lpips"].update({"available": ok, "source": where})
    native = getattr(prior, "sample_size", None)
    if native is not None and cfg.fit != "none":
        run.native_hw = (native, native) if isinstance(native, int) else tuple(native)
    run.prior = prior
    run.solve = Solve(task=cfg.task, task_opts=cfg.task_opts, noise_sigma=cfg.noise_sigma, seed=cfg.seed,
                      method_cls=plan.method.cls, prior=prior, dsg=plan.dsg, hparams=plan.hparams,
                      restarts=plan.restarts, rule=cfg.restart_rule, measured=cfg.measured, samples=cfg.samples,
                      chunk=cfg.batch_size)


def _solve_all(run: RunContext, todo: list[int], tqdm_class) -> None:
    """Load the model, then read the images one at a time (never more than a batch in memory) and solve
    them in batches of consecutive images of one working shape; each image's failure is its own."""
    plan, records, data = run.plan, run.records, run.data
    shard = plan.shard
    # many processes: each machine's first process downloads and converts, the others then read its cache
    if shard.world > 1 and shard.local_rank != 0:
        shard.barrier()
    try:
        if not todo:
            return  # nothing in this process's share
        _load(run, tqdm_class)
    finally:
        if shard.world > 1 and shard.local_rank == 0:
            shard.barrier()
    warned: set[str] = set()
    # --batch-size counts solves run together: with --samples N an image is N of them (see batch.solve_batch)
    per_batch = max(1, plan.cfg.batch_size // plan.cfg.samples)

    def run_batch(items):
        try:
            hp = _process(run, items)
            data["config"]["method"]["hyperparameters"] = data["config"]["method"]["hyperparameters"] or hp
        except Exception as e:  # noqa: BLE001
            if len(items) > 1:  # isolate the failing image(s)
                for item in items:
                    run_batch([item])
                return
            records[items[0][0]].update({"status": "failed", **error_fields(e)})
        run.flush()

    items: list = []
    for i in todo:
        try:
            img, info = read_image_info(plan.images[i], run.prior.channels)
        except ImageReadError as e:
            records[i].update({"status": "failed", "error": str(e)})
            run.flush()
            continue
        if info.converted:
            records[i]["converted"] = info.converted
            if info.converted not in warned:
                warned.add(info.converted)
                msg = (f"{plan.model.name} is a {'grey' if run.prior.channels == 1 else 'colour'} model: "
                       f"images are converted {info.converted} (recorded per image as 'converted')")
                data["config"]["warnings"].append(msg)
                run.emit("warning", {"message": msg})
        if items and (len(items) >= per_batch or items[0][1].shape != img.shape
                      or _measured_jpeg_key(plan, items[0][0]) != _measured_jpeg_key(plan, i)):
            run_batch(items)
            items = []
        items.append((i, img, info))
    if items:
        run_batch(items)


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


def _image_record(run: RunContext, batch: Batch, k: int, metrics: dict, residual) -> dict:
    """The fields of every restored image's record (the metrics: of the restored image, or of the samples' mean)."""
    i, img, _ = batch.items[k]
    sb = batch.solved
    nfe, n_backward = sb.cost(k)
    return {"measurement": str(run.out / f"{run.plan.stems[i]}.measurement.png"),
            "working_size": list(batch.shape[-2:]), "input_size": list(img.shape[-2:]),
            **{name: metrics.get(name, [None] * len(batch.items))[k] for name in ("psnr", "ssim", "lpips")},
            "residual": residual, "nfe": nfe, "n_backward": n_backward,
            "seconds": batch.seconds, "peak_memory_mb": sb.usage.peak_mb, "batch_images": len(batch.items),
            "operator": sb.op.select([k]).params()}


def _process(run: RunContext, items: list[tuple]) -> dict:
    """Measure, solve, score and write one batch; returns the solver's resolved hyperparameters."""
    plan, cfg, stems = run.plan, run.plan.cfg, run.plan.stems
    t0 = time.time()
    idx = [i for i, _, _ in items]
    prepared = [_measurement_inputs(plan, img, run.native_hw) for _, img, _ in items]
    batch = Batch(items, prepared, torch.stack([p[0] for p in prepared]).to(plan.device))

    def on_step(info: StepInfo):
        run.emit("step", {"step": info.step, "total": info.total, "images": [stems[i] for i in idx]})

    run.emit("batch", {"images": [stems[i] for i in idx]})
    solve = run.solve
    if cfg.measured and cfg.task == "jpeg":
        solve = replace(solve, task_opts={**solve.task_opts, **_measured_jpeg_opts(plan, idx, prepared, batch.shape)})
    batch.solved = sb = solve_batch(solve, batch.x, idx, shape=batch.shape, on_step=on_step)
    batch.seconds = (time.time() - t0) / len(items)
    if cfg.samples > 1:
        return _write_samples(run, batch)
    op, y, res = sb.op, sb.y, sb.result
    out, emit, x = run.out, run.emit, batch.x
    ref = None if cfg.measured else x
    hp = sb.solver.params()
    out_imgs = res.images.float().cpu()
    resid = sb.residuals()
    metrics, metric_errors = score(res.images, ref, run.lp) if ref is not None else ({}, [])
    vis = op.visualize(y).float().cpu()
    for k, (i, img, info) in enumerate(items):
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
        rec = run.records[i]
        rec.update({"status": "failed" if diverged else "ok",
                    "error": ("the solver diverged (non-finite values in the restored image): "
                              "lower the measurement step size (--set)") if diverged else None,
                    **_image_record(run, batch, k, metrics, resid[k])})
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


def _write_samples(run: RunContext, batch: Batch) -> dict:
    """``--samples N > 1``: per image, its N samples, their mean (``<stem>.png``, written last: a rerun
    skips an image only once everything is there) and per-pixel std (``.std.npy``, ``.std.png``), with
    metrics of the mean and of every sample."""
    cfg, out, emit, lp = run.plan.cfg, run.out, run.emit, run.lp
    n = cfg.samples
    sb = batch.solved
    op, y, res = sb.op, sb.y, sb.result
    b = len(batch.items)
    ref = None if cfg.measured else batch.x
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
    for k, (i, img, info) in enumerate(batch.items):
        how = batch.prepared[k][1]
        stem = run.plan.stems[i]
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

        rec = run.records[i]
        rec.update({"status": "failed" if bad else "ok",
                    "error": (f"the solver diverged in sample{'s' if len(bad) > 1 else ''} "
                              f"{', '.join(map(str, bad))} of {n} (non-finite values): lower the measurement "
                              "step size (--set)") if bad else None,
                    **_image_record(run, batch, k, metrics, resid[k]),
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
