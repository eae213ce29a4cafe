"""``restore bench SUITE.toml``: tasks x methods x models x images x seeds, measured and compared.

The suite format is described in bench_suite.py.  Each cell has a key (a hash of everything that
defines it); ``results.json`` is rewritten after every cell and a rerun skips finished cells whose
key, model-weights fingerprint and suite context all match, so an interrupted suite resumes, unless
the cell was made by an earlier revision of its method (``Solver.revision``: a fix or a new default).
Every batch is measured, solved and scored by ``batch.solve_batch``/``batch.score``, exactly as
``restore <task>`` does it.

``--baseline OLD.json`` compares every cell with the same key and exits 1 listing what
regressed beyond the tolerances (PSNR and SSIM lower, LPIPS and failure rate higher); the table
and the comparison are in ``bench_results.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ..images.read import fit_to, to_channels
from ..images.write import write_json_atomic
from ..runs.distributed import Shard, file_lock
from ..runs.report import environment, mean_std, source_revision
from .suite import Cell, Suite, SuiteError, load_fashion_mnist, load_suite, suite_context

RESULTS_SCHEMA = 1


class _Models:
    """Loads each model once per suite run (on the suite's device)."""

    def __init__(self, device: torch.device, models_file: Path | None = None):
        from ..models.config import load_registry

        self.device, self.reg, self.cache = device, load_registry(models_file), {}

    def spec(self, name):
        return self.reg.get(name)

    def prior(self, name, method: str | None = None):
        """The model's prior, with the prompt ``method`` runs it with (PSLD on Stable Diffusion: ""), as
        ``restore <task>`` chooses it."""
        from ..models.catalog import resolve_prompt
        from ..models.hub import load_prior

        prompt = resolve_prompt(self.spec(name), method) if method else None
        if (name, prompt) not in self.cache:
            self.cache[(name, prompt)] = load_prior(self.spec(name), self.device, torch.float32, allow_download=False,
                                                    prompt=prompt)
        return self.cache[(name, prompt)]


def model_fingerprint(spec) -> str:
    """What identifies a model's weights: the Hub revision, or a hash of a bundled/local folder's
    weights and configs, or the analytic fit.  A finished cell is reused only with the same one."""
    if spec.format != "diffusers":  # an original checkpoint: the sha256 of the file it was converted from
        from ..convert.checkpoint import read_record
        from ..models.hub import find_converted

        found = find_converted(spec)
        rec = read_record(found) if found is not None else None
        return f"{spec.format}:{(rec or {}).get('sha256') or spec.sha256 or 'not converted'}"[:80]
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
    from ..errors import UsageError
    from ..models.catalog import check_method, check_method_options
    from ..models.registry import parse_set

    try:
        info = check_method(cell.method, cell.task, models.spec(cell.model))
        parse_set([f"{k}={v}" for k, v in cell.hparams.items()], info)
        check_method_options(info, cell.task, cell.task_opts, cell.diffstategrad)
    except UsageError as e:
        return str(e)
    if cell.task_opts.get("kernel") == "nonlinear" and "kernel_model" not in cell.task_opts:
        return ("the non-linear blur needs its network: restore bench SUITE --kernel-model GOPRO_wVAE.pth "
                "(README, 'Non-linear blur')")
    if cell.guidance != 1.0 and not info.cls.guidance_keys:
        return f"{cell.method} has no measurement-guidance step size to scale"
    return None


class SuiteFID:
    """A suite's FID and KID (``fid = true``, or a paper table that reports FID): one Inception network for the
    suite, each reference image's features computed once and shared by every cell and seed.  Without the
    network's weights (``python -m restore_cli.metrics.fid install``) ``available`` is False and ``why`` says so
    in one line; the cells then record FID as not computed."""

    def __init__(self, device: torch.device):
        from ..metrics.fid import fid_status, load_inception

        self.device = device
        self.available, self.why = fid_status()
        self.network = load_inception(device=device) if self.available else None
        self.references: dict = {}  # (image index, working shape) -> its features

    def cell(self) -> "CellFID":
        return CellFID(self)


class CellFID:
    """One cell's FID/KID: per seed, its restorations against the references (the suite's images at the
    model's size), as the papers report them; the cell's value is the mean (std) over seeds."""

    def __init__(self, suite_fid: SuiteFID):
        self.suite = suite_fid
        self.per_seed: dict = {}

    def add(self, seed: int, ids: list[int], reference: torch.Tensor, restored: torch.Tensor) -> None:
        if self.suite.network is None:
            return
        from ..metrics.fid import FID

        f = self.per_seed.setdefault(seed, FID(self.suite.network, device=self.suite.device))
        for k, i in enumerate(ids):
            key = (i, tuple(reference.shape[1:]))
            if key not in self.suite.references:
                self.suite.references[key] = f.features(reference[k:k + 1])
            f.update_features(self.suite.references[key], real=True)
        f.update(restored, real=False)

    def summary(self) -> dict:
        """``fid`` and ``kid`` as mean (std) over seeds, and ``fid_note``: why it is missing, or its caveat."""
        if self.suite.network is None:
            return {"fid": mean_std([]), "kid": mean_std([]), "fid_note": f"FID not computed: {self.suite.why}"}
        results = [f.compute() for f in self.per_seed.values()]
        notes = sorted({r.note for r in results if r.note})
        return {"fid": mean_std([r.fid for r in results]), "kid": mean_std([r.kid for r in results]),
                "fid_note": "; ".join(notes) or None}


def run_cell(cell: Cell, suite: Suite, models: _Models, lp=None, on_step: Callable | None = None,
             keep: Callable | None = None, fid: SuiteFID | None = None) -> dict:
    """Restore every image x seed of a cell; per-image metrics and the cell's summary.  ``keep``
    (:func:`sample_writer`) saves a few of the first seed's restorations for the report's grids; ``fid``
    adds the cell's FID and KID (:class:`SuiteFID`) to its summary."""
    from ..models.catalog import METHODS
    from ..runs.batch import Solve, score, solve_batch

    info = METHODS[cell.method]
    prior = models.prior(cell.model, cell.method)
    native = getattr(prior, "sample_size", None)
    hw = None if native is None else ((native, native) if isinstance(native, int) else tuple(native))
    hp = dict(cell.hparams)
    if cell.steps is not None:
        hp[info.steps_key] = cell.steps
    dsg = cell.dsg(info.cls.dsg_default_period(hp))
    cb = None if on_step is None else (lambda s: on_step(s.step + 1, s.total))
    rule = suite.restart_rule if cell.restarts > 1 else "residual"
    per_metric = rule == "best-per-metric"  # solved by the residual rule, every run kept and scored
    records, used_hp, shown = [], None, []
    cell_fid = fid.cell() if fid is not None else None
    for seed in suite.seeds:
        for start in range(0, len(suite.images), suite.batch_size):
            ids = list(range(start, min(start + suite.batch_size, len(suite.images))))
            x = torch.stack([to_channels(fit_to(suite.images[i][1], hw, "resize")[0], prior.channels) for i in ids])
            x = x.to(models.device)
            how = Solve(task=cell.task, task_opts=cell.task_opts, noise_sigma=cell.noise_sigma, seed=seed,
                        method_cls=info.cls, prior=prior, dsg=dsg, hparams=hp, guidance=cell.guidance,
                        restarts=cell.restarts, rule="residual" if per_metric else rule, keep_runs=per_metric)
            sb = solve_batch(how, x, ids, on_step=cb)
            res = sb.result
            used_hp = used_hp or {k: v for k, v in sb.solver.params().items() if k != "diffstategrad"}
            m, errors = best_per_metric(res.extra["runs"], x, lp) if per_metric else score(res.images, x, lp)
            if errors:
                raise RuntimeError(f"metric failed: {errors[0]}")
            resid = sb.residuals()
            if cell_fid is not None:  # (best-per-metric restarts: the run of least residual, as restore picks)
                cell_fid.add(seed, ids, x, res.images)
            if keep is not None and seed == suite.seeds[0]:  # a few restorations to look at
                shown += keep(sb, x, [suite.images[i][0] for i in ids], seed)
            for k, i in enumerate(ids):
                records.append({"image": suite.images[i][0], "seed": seed, "psnr": m["psnr"][k], "ssim": m["ssim"][k],
                                "lpips": m["lpips"][k] if lp is not None else None,
                                "residual": resid[k], "nfe": res.nfe, "n_backward": res.n_backward,
                                "seconds": sb.usage.seconds / len(ids), "peak_memory_mb": sb.usage.peak_mb})
    out = {"hyperparameters": used_hp, "images": records, "summary": summarize_cell(records, suite.failure_psnr)}
    if cell_fid is not None:
        out["summary"].update(cell_fid.summary())
    if keep is not None:
        out["samples"] = shown
    return {**out, "restart_rule": rule} if cell.restarts > 1 else out


SAMPLES_PER_CELL = 3  # restorations each cell saves (its first seed's first images): the report's grids


def sample_writer(output: Path, key: str, n: int = SAMPLES_PER_CELL) -> Callable:
    """What :func:`run_cell` calls with each batch of the first seed to save its first ``n`` images
    under ``output/samples/<key>/``: the measurement (as ``restore <task>`` shows it), the restoration
    (a diverged one with its non-finite pixels black), the ground truth and, for an inpainting task
    with a contiguous mask, its missing region (white).  Returns the records results.json keeps:
    per image its name, seed and the files' paths relative to ``output``."""
    from ..images.write import write_png
    from ..runs.figures import missing_region

    folder = Path("samples") / key
    saved: list[str] = []

    def keep(sb, x: torch.Tensor, names: list[str], seed: int) -> list[dict]:
        (output / folder).mkdir(parents=True, exist_ok=True)
        vis = sb.op.visualize(sb.y).float().cpu()
        records = []
        for k, name in enumerate(names):
            if len(saved) >= n:
                break
            stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or f"image{len(saved)}"
            restored = sb.result.images[k].float().cpu()
            files = {"measurement": vis[k], "restored": torch.nan_to_num(restored, nan=0.0, posinf=1.0, neginf=0.0),
                     "truth": x[k].float().cpu()}
            region = missing_region(sb.op.select([k]))
            if region is not None:
                files["missing"] = region[None].float().cpu()
            rec = {"image": name, "seed": seed,
                   "diverged": not bool(torch.isfinite(restored).all())}
            for what, img in files.items():
                rel = folder / f"{stem}.{what}.png"
                write_png(output / rel, img)
                rec[what] = rel.as_posix()
            saved.append(name)
            records.append(rec)
        return records

    return keep


def best_per_metric(runs: list[torch.Tensor], ref: torch.Tensor, lp=None) -> tuple[dict[str, list], list[str]]:
    """The DAPS code's best-of-k report: per image, each metric's best value over the runs on its own
    (max PSNR, max SSIM, min LPIPS; a run whose metric is not finite counts only when all are)."""
    from ..runs.batch import score

    scored = [score(r, ref, lp) for r in runs]
    errors = [e for _, errs in scored for e in errs]
    best = {}
    for name, pick in (("psnr", max), ("ssim", max), ("lpips", min)):
        if all(name in m for m, _ in scored):
            per_image = zip(*(m[name] for m, _ in scored))
            best[name] = [pick((v for v in vals if v is not None), default=None) for vals in per_image]
    return best, errors


def summarize_cell(records: list[dict], failure_psnr: float) -> dict:
    out = {k: mean_std([r[k] for r in records]) for k in ("psnr", "ssim", "lpips", "residual", "seconds")}
    out["failure_rate"] = sum(r["psnr"] is None or r["psnr"] < failure_psnr for r in records) / max(len(records), 1)
    out["nfe"] = records[0]["nfe"] if records else None
    out["n_backward"] = records[0]["n_backward"] if records else None
    mems = [r["peak_memory_mb"] for r in records if r["peak_memory_mb"] is not None]
    out["peak_memory_mb"] = max(mems) if mems else None
    return out


def run_suite(suite: Suite, output: Path, device: torch.device, rerun: bool = False,
              progress: Callable[[str, dict], None] | None = None, only: list[str] | None = None,
              shard: Shard | None = None) -> dict:
    """Run every cell not already finished in ``output/results.json``; write results.json and results.md.

    ``only``: run just the cells whose label contains one of these strings (the others keep
    their previous results, if any).  ``shard``: under a launcher, this process runs every
    ``world``-th cell still to run and merges its cells into results.json as it goes."""
    shard = shard or Shard()
    from ..metrics import LPIPS, lpips_status
    from ..models.hub import ModelUnavailable

    emit = progress or (lambda kind, info: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    res_path = output / "results.json"
    previous, prev_models = {}, {}
    if res_path.exists() and shard.main:
        try:
            old = json.loads(res_path.read_text())
            previous, prev_models = old.get("cells", {}), old.get("models", {})
        except (json.JSONDecodeError, OSError, AttributeError):
            previous, prev_models = {}, {}
    previous, prev_models = shard.broadcast((previous, prev_models))  # every process starts from the same state
    context = suite_context(suite)
    models = _Models(device, suite.models_file)
    ok, where = lpips_status(suite.lpips_net)
    lp = LPIPS(suite.lpips_net).to(device) if ok else None
    fid = SuiteFID(device) if suite.fid else None  # (not available: results.json says why; restore bench says it)
    data = {
        "schema_version": RESULTS_SCHEMA,
        "suite": {"name": suite.name, "file": str(suite.path), "description": suite.description, "context": None,
                  "images": suite.image_source, "n_images": len(suite.images), "seeds": suite.seeds,
                  "failure_psnr": suite.failure_psnr},
        "started": datetime.now(timezone.utc).isoformat(), "finished": None,
        "device": str(device), "lpips": {"net": suite.lpips_net, "available": ok, "source": where},
        **({"fid": {"available": fid.available, "source": fid.why}} if fid is not None else {}),
        "environment": environment(), "models": {}, "cells": {},
    }
    data["suite"]["context"] = context

    from .results import current_revision, markdown_table, outdated

    def flush():
        md = markdown_table(data)
        if suite.paper is not None:  # a paper suite: the published numbers beside ours, with verdicts
            from .papers import comparison, markdown

            data["paper"] = {k: v for k, v in suite.paper.items() if k != "rows"}
            data["paper"]["comparison"] = rows = comparison(suite.cells, data["cells"], suite.paper)
            md += "\n" + markdown(rows, suite.paper, len(suite.images))
        write_json_atomic(res_path, data)
        (output / "results.md").write_text(md)

    def save():
        """Write results; under a launcher, around the other processes' cells as they are now (one lock)."""
        if shard.world == 1:
            return flush()
        with file_lock(output / ".results.lock"):
            try:
                old = json.loads(res_path.read_text())
            except (OSError, ValueError):
                old = {}
            cells = {**old.get("cells", {}), **{k: data["cells"][k] for k in touched if k in data["cells"]}}
            data["cells"] = {c.key: cells[c.key] for c in suite.cells if c.key in cells}
            data["models"] = {**old.get("models", {}), **data["models"]}
            data["started"] = min(data["started"], old.get("started") or data["started"])
            flush()

    prints, kinds = {}, {}  # per model: its weights' fingerprint, its space
    for cell in suite.cells:
        if cell.model not in prints:
            prints[cell.model] = model_fingerprint(models.spec(cell.model))
            kinds[cell.model] = models.spec(cell.model).kind
    # earlier results of this suite's cells (in the suite's order), if made with the same weights
    previous = {k: c for k, c in previous.items()
                if c.get("model_fingerprint") == prints.get(c["config"]["model"]) and c.get("context") == context}
    for cell in suite.cells:
        if cell.key in previous:
            data["cells"][cell.key] = previous[cell.key]
            if cell.model in prev_models:  # the record of the model a kept cell ran on
                data["models"].setdefault(cell.model, prev_models[cell.model])
    selected = [(n, cell) for n, cell in enumerate(suite.cells) if not only or any(o in cell.label for o in only)]

    def done(prev: dict | None, cell: Cell) -> bool:
        """A finished cell to keep: ok or skipped, by its method's current revision."""
        return (bool(prev) and prev.get("status") in ("ok", "skipped")
                and not outdated(prev, kinds[cell.model]))

    todo = [(n, c) for n, c in selected if rerun or not done(previous.get(c.key), c)]
    mine = {c.key for _, c in shard.share(todo)}
    touched: set[str] = set()
    for n, cell in selected:
        if cell.key not in mine and any(c.key == cell.key for _, c in todo):
            continue  # another process's cell
        touched.add(cell.key)
        prev = None if rerun else previous.get(cell.key)  # --rerun redoes the selected cells only
        entry = {"config": asdict(cell), "label": cell.label, "model_fingerprint": prints[cell.model], "context": context,
                 "space": kinds[cell.model], "method_revision": current_revision(cell.method, cell.task, kinds[cell.model])}
        if done(prev, cell):
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
            out = run_cell(cell, suite, models, lp, lambda i, tot: emit("step", {"step": i, "total": tot}),
                           keep=sample_writer(output, cell.key), fid=fid)
            data["cells"][cell.key] = {**entry, "status": "ok", **out, "wall_seconds": time.time() - t0,
                                       "finished": datetime.now(timezone.utc).isoformat(), "source": source_revision()}
            spec = models.spec(cell.model)
            data["models"][cell.model] = {**spec.record(),
                                          "resolved_revision": getattr(models.prior(cell.model, cell.method),
                                                                       "resolved_revision", None)}
        except ModelUnavailable as e:
            data["cells"][cell.key] = {**entry, "status": "failed", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - one failing cell never loses the others
            data["cells"][cell.key] = {**entry, "status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        emit("cell", {"n": n, "total": len(suite.cells), "label": cell.label, "status": data["cells"][cell.key]["status"]})
        save()
    shard.barrier()
    if shard.main:
        data["finished"] = datetime.now(timezone.utc).isoformat()
        save()
        (output / ".results.lock").unlink(missing_ok=True)
    shard.barrier()
    if shard.world > 1:
        data.update(json.loads(res_path.read_text()))
    return data


__all__ = ["Suite", "Cell", "SuiteError", "load_suite", "run_suite", "summarize_cell", "load_fashion_mnist"]
