"""The report of a `restore bench` run: ``report.md`` and ``figures/`` beside results.json.

``restore bench SUITE`` writes it after the suite ran; ``restore bench report RESULTS.json [-o DIR]``
redraws it from an existing results file without running anything (and never rewrites it).  Each
figure is a PNG with the numbers it draws in a CSV of the same name beside it, read from results.json
by :func:`figure_data` (the plotting, :mod:`restore_cli.bench.plots`, draws those rows and nothing else):

* ``grid-<task>``: a few fixed images (the first ones of the first seed, saved by the run under
  ``samples/``): measurement | each method | the same with DiffStateGrad | ground truth, with each
  restoration's PSNR;
* ``steps-<task>``: PSNR and LPIPS (mean and std over images and seeds) against the measurement-guidance
  step size (the suite's ``guidance`` scale), each method with and without DiffStateGrad;
* ``distribution-<task>``: per method, the PSNR of every image and the failure rate (PSNR below the
  suite's ``failure_psnr``; a diverged image counts as a failure);
* ``cost``: seconds per image, NFE and peak memory per method, with and without DiffStateGrad;
* ``paper`` (a paper suite): ours beside the published number per cell and metric, coloured by the
  verdict :mod:`restore_cli.bench.papers` gave;
* ``regression`` (with a baseline): how much each cell moved, the regressions :func:`results.compare`
  finds marked.

The grids, distributions and cost show each method at its defaults (guidance x1, DiffStateGrad's default
options, no swept hyperparameter); the other cells are in the table.  What cannot be drawn (results from
before images were saved, no step sweep, failed cells) is said in one line.

Several results files (shards of one suite run side by side, e.g. one per CPU core with ``--only``) are
merged cell by cell (:func:`restore_cli.bench.results.merge`).  A suite that holds the cells of the DiffStateGrad
issue's three bars (the Fashion-MNIST suite, docs/benchmarks.md) gets them checked in the report
(:mod:`restore_cli.bench.bars`), with the hand-written notes of ``<suite>-notes.md`` beside the suite file, if any.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .bars import bars, has_bars, notes
from .results import cells, default_dsg, markdown_table, outdated, samples_of, task_of
from .suite import SuiteError

class ReportError(SuiteError):
    """A results file that cannot be read at all (a usage error: exit 2)."""


@dataclass
class Figure:
    """One figure: its file name (without extension), kind, title, and the rows of numbers it draws
    (written as ``<name>.csv``)."""

    name: str
    kind: str
    title: str
    columns: list[str]
    rows: list[dict]
    meta: dict = field(default_factory=dict)


@dataclass
class Report:
    markdown: Path
    figures: list[Path]
    left_out: list[str]
    merged: Path | None = None

    def left_out_line(self) -> str | None:
        return None if not self.left_out else "left out of the report: " + "; ".join(self.left_out)


def slug(text: str) -> str:
    """A task label as a file name: 'inpaint[mask=box]' -> 'inpaint-mask-box'."""
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "task"


def _mean(s, metric: str):
    v = (s or {}).get(metric)
    return v.get("mean") if isinstance(v, dict) else None


def _std(s, metric: str):
    v = (s or {}).get(metric)
    return v.get("std") if isinstance(v, dict) else None


# --- the figures' numbers ------------------------------------------------------------------------------------

def _series(data, where: str, sweep: bool = False) -> dict[tuple, list]:
    """The cells of task ``where`` with DiffStateGrad's default options, at guidance x1 (``sweep``: at every
    guidance), by (method, DSG, model) in the suite's order.  A method's cells without set hyperparameters;
    where it has none, those of the one setting all its cells share (a suite that sets ``annealing_steps``
    on a grid); a method swept over a hyperparameter without a default point is left to the table."""
    out: dict[tuple, list] = {}
    for cfg, c in cells(data):
        if (task_of(c) == where and default_dsg(cfg.get("dsg_opts"))
                and (sweep or float(cfg.get("guidance", 1.0)) == 1.0)):
            out.setdefault((cfg["method"], bool(cfg.get("diffstategrad")), cfg.get("model", "")), []).append(c)
    kept = {}
    for k, cs in out.items():
        plain = [c for c in cs if not c["config"].get("hparams")]
        settings = {json.dumps(c["config"].get("hparams"), sort_keys=True) for c in cs}
        if plain or len(settings) == 1:
            kept[k] = plain or cs
    return kept


def _labels(keys) -> dict[tuple, str]:
    """A series' name: its method (+DSG), and its model where the method runs on several."""
    models: dict[str, set] = {}
    for m, _, model in keys:
        models.setdefault(m, set()).add(model)
    return {(m, d, model): m + (" +DSG" if d else "") + (f" ({model})" if len(models[m]) > 1 else "")
            for m, d, model in keys}


def _ordered(keys) -> list[tuple]:
    """Series with each method's DSG variant right after it, methods in first-seen order."""
    first = {}
    for k in keys:
        first.setdefault((k[0], k[2]), len(first))
    return sorted(keys, key=lambda k: (first[(k[0], k[2])], k[1]))


def _tasks(data) -> list[str]:
    return list(dict.fromkeys(task_of(c) for _, c in cells(data)))


def grid_figures(data, base: Path, source: str | None = None) -> list[Figure]:
    """Per task: the saved images of the cells at their defaults (``base``: the folder of results.json)."""
    figs = []
    for where in _tasks(data):
        series = {k: v[0] for k, v in _series(data, where).items()
                  if v[0].get("status") == "ok" and samples_of(v[0])}
        if not series:
            continue
        keys = _ordered(series)
        names = _labels(keys)
        first = samples_of(series[keys[0]])
        rows = []
        for s in first:
            im, seed = s["image"], s.get("seed")
            rows.append({"row": im, "column": "measurement", "method": "", "diffstategrad": "", "model": "",
                         "psnr": None, "file": s["measurement"], "missing": s.get("missing")})
            for k in keys:
                c = series[k]
                mine = next((r for r in samples_of(c) if r["image"] == im and r.get("seed") == seed), None)
                if mine is None:
                    continue
                rec = next((r for r in c.get("images", []) if r.get("image") == im and r.get("seed") == seed), {})
                rows.append({"row": im, "column": names[k], "method": k[0], "diffstategrad": k[1], "model": k[2],
                             "psnr": rec.get("psnr"), "file": mine["restored"], "missing": mine.get("missing")})
            rows.append({"row": im, "column": "ground truth", "method": "", "diffstategrad": "", "model": "",
                         "psnr": None, "file": s["truth"], "missing": s.get("missing")})
        title = f"{where}: restorations" + (f" (from {source})" if source else "")
        figs.append(Figure(f"grid-{slug(where)}", "grid", title,
                           ["row", "column", "method", "diffstategrad", "model", "psnr", "file", "missing"], rows,
                           {"base": str(base), "source": source}))
    return figs


def step_figures(data) -> list[Figure]:
    """Per task with a step sweep: PSNR and LPIPS mean and std per guidance scale, per series."""
    figs = []
    for where in _tasks(data):
        series = _series(data, where, sweep=True)
        swept = {k: v for k, v in series.items()
                 if len({float(c["config"]["guidance"]) for c in v if c.get("status") == "ok"}) > 1}
        if not swept:
            continue
        keys = _ordered(swept)
        names = _labels(keys)
        rows = []
        for k in keys:
            for c in sorted((c for c in swept[k] if c.get("status") == "ok"), key=lambda c: c["config"]["guidance"]):
                s = c.get("summary") or {}
                rows.append({"series": names[k], "method": k[0], "diffstategrad": k[1], "model": k[2],
                             "guidance": float(c["config"]["guidance"]),
                             "psnr_mean": _mean(s, "psnr"), "psnr_std": _std(s, "psnr"),
                             "lpips_mean": _mean(s, "lpips"), "lpips_std": _std(s, "lpips"),
                             "n": (s.get("psnr") or {}).get("n"), "failure_rate": s.get("failure_rate")})
        figs.append(Figure(f"steps-{slug(where)}", "steps", f"{where}: step-size robustness",
                           ["series", "method", "diffstategrad", "model", "guidance", "psnr_mean", "psnr_std",
                            "lpips_mean", "lpips_std", "n", "failure_rate"], rows))
    return figs


def distribution_figures(data) -> list[Figure]:
    """Per task: every image's PSNR per series at its defaults, and the cell's failure rate."""
    figs = []
    threshold = (data.get("suite") or {}).get("failure_psnr")
    for where in _tasks(data):
        series = {k: v[0] for k, v in _series(data, where).items()
                  if v[0].get("status") == "ok" and v[0].get("images")}
        if not series:
            continue
        keys = _ordered(series)
        names = _labels(keys)
        rows = []
        for k in keys:
            c = series[k]
            for r in c["images"]:
                rows.append({"series": names[k], "method": k[0], "diffstategrad": k[1], "model": k[2],
                             "image": r.get("image"), "seed": r.get("seed"), "psnr": r.get("psnr"),
                             "failure_rate": (c.get("summary") or {}).get("failure_rate")})
        figs.append(Figure(f"distribution-{slug(where)}", "distribution", f"{where}: PSNR per image and failures",
                           ["series", "method", "diffstategrad", "model", "image", "seed", "psnr", "failure_rate"],
                           rows, {"failure_psnr": threshold}))
    return figs


def cost_figure(data) -> Figure | None:
    """Per method (with and without DSG), over its cells at its settings on every task: the mean of
    their seconds per image, the largest NFE and the largest peak memory."""
    groups: dict[tuple, list] = {}
    for where in _tasks(data):
        for k, cs in _series(data, where).items():
            groups.setdefault(k, []).extend(c for c in cs if c.get("status") == "ok" and c.get("summary"))
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    keys = _ordered(groups)
    names = _labels(keys)
    rows = []
    for k in keys:
        ss = [c["summary"] for c in groups[k]]
        secs = [_mean(s, "seconds") for s in ss if _mean(s, "seconds") is not None]
        nfe = [s.get("nfe") for s in ss if s.get("nfe") is not None]
        mem = [s.get("peak_memory_mb") for s in ss if s.get("peak_memory_mb") is not None]
        rows.append({"series": names[k], "method": k[0], "diffstategrad": k[1], "model": k[2], "cells": len(ss),
                     "seconds_per_image": sum(secs) / len(secs) if secs else None,
                     "nfe": max(nfe) if nfe else None, "peak_memory_mb": max(mem) if mem else None})
    return Figure("cost", "cost", f"cost per image ({data.get('device', '?')})",
                  ["series", "method", "diffstategrad", "model", "cells", "seconds_per_image", "nfe", "peak_memory_mb"],
                  rows)


def paper_figure(data) -> Figure | None:
    """A paper suite: ours beside the published number, per cell and metric, with the verdicts
    results.json holds (computed by :mod:`restore_cli.bench.papers` when the suite ran)."""
    comp = (data.get("paper") or {}).get("comparison")
    if not comp:
        return None
    rows = []
    for r in comp:
        pub = r.get("paper") or [None]
        rows.append({"cell": r.get("cell"), "metric": r.get("metric"), "ours": r.get("ours"),
                     "ours_std": r.get("ours_std"), "paper": pub[0], "paper_std": pub[1] if len(pub) > 1 else None,
                     "verdict": r.get("verdict")})
    p = data["paper"]
    return Figure("paper", "paper", f"ours against {p.get('paper', 'the paper')} {p.get('table', '')}".strip(),
                  ["cell", "metric", "ours", "ours_std", "paper", "paper_std", "verdict"], rows)


def regression_figure(data, baseline: dict, tol: dict[str, float], name: str = "baseline") -> Figure:
    """Every cell of both runs and metric: baseline, now, change, tolerance, and whether
    :func:`results.compare` calls it a regression."""
    from .results import compare

    worse = compare(data, baseline, tol)
    regressed = {(w["cell"], w["metric"]) for w in worse}
    rows = []
    for key, b in baseline.get("cells", {}).items():
        if b.get("status") != "ok":
            continue
        cur = data["cells"].get(key)
        label = b.get("label", key)
        if cur is None or cur.get("status") != "ok":
            rows.append({"cell": label, "metric": "status", "baseline": "ok",
                         "now": "missing" if cur is None else cur.get("status"), "change": None, "tolerance": None,
                         "regressed": True})
            continue
        for metric in ("psnr", "ssim", "lpips", "failure_rate"):
            bv = b["summary"].get(metric) if metric == "failure_rate" else _mean(b["summary"], metric)
            cv = cur["summary"].get(metric) if metric == "failure_rate" else _mean(cur["summary"], metric)
            if bv is None or cv is None:
                continue
            rows.append({"cell": label, "metric": metric, "baseline": bv, "now": cv, "change": cv - bv,
                         "tolerance": tol.get(metric), "regressed": (label, metric) in regressed})
    return Figure("regression", "regression", f"change against {name}",
                  ["cell", "metric", "baseline", "now", "change", "tolerance", "regressed"], rows,
                  {"regressions": len(worse)})


def figure_data(data: dict, base: Path, *, baseline: dict | None = None, tol: dict | None = None,
                baseline_name: str = "baseline", grids: tuple[dict, Path, str] | None = None
                ) -> tuple[list[Figure], list[str]]:
    """Every figure's numbers, and what was left out (one phrase each).  ``base``: the folder of the
    results file (the saved images' paths are relative to it); ``grids``: another run's results, folder
    and name to draw the grids from (a quick run with saved images, for results that have none)."""
    from .results import DEFAULT_TOLERANCES

    left = []
    schema = data.get("schema_version")
    if not isinstance(schema, int):
        left.append("results.json has no schema version (an older run): drawn from the fields it has")
    bad = [c for c in data["cells"].values() if not isinstance(c, dict) or not isinstance(c.get("config"), dict)]
    if bad:
        left.append(f"{len(bad)} cell(s) unreadable (no config)")
    failed = [c for _, c in cells(data) if c.get("status") != "ok"]
    if failed:
        left.append(f"{len(failed)} cell(s) not finished ({', '.join(sorted({str(c.get('status')) for c in failed}))}), "
                    f"e.g. {failed[0].get('label', '?')}")
    figs: list[Figure] = []
    gdata, gbase, gname = grids if grids is not None else (data, base, None)
    g = grid_figures(gdata, gbase, gname)
    if not g:
        left.append("restoration grids (no cell saved images: results from before `restore bench` saved a few per "
                    "cell, or no cell finished; rerun the suite with --rerun to get them)")
    figs += g
    s = step_figures(data)
    if not s:
        left.append("step-size robustness (no step sweep: no method ran at several `guidance` scales)")
    elif not any(r["lpips_mean"] is not None for f in s for r in f.rows):
        left.append("LPIPS against the step size (LPIPS unavailable in this run)")
    figs += s
    d = distribution_figures(data)
    if not d:
        left.append("PSNR distributions (no finished cell has per-image results)")
    figs += d
    c = cost_figure(data)
    if c is None:
        left.append("cost (no finished cell at its defaults)")
    else:
        figs.append(c)
        if all(r["peak_memory_mb"] is None for r in c.rows):
            left.append("peak memory (not recorded)")
    p = paper_figure(data)
    if p is not None:
        figs.append(p)
    if baseline is not None:
        figs.append(regression_figure(data, baseline, {**DEFAULT_TOLERANCES, **(tol or {})}, baseline_name))
    return figs, left


# --- writing ---------------------------------------------------------------------------------------------------

def _cell(v) -> str:
    """A CSV field: floats in full (``repr``: they read back equal), None empty, flags yes/no."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def csv_text(fig: Figure) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fig.columns)
    for r in fig.rows:
        w.writerow([_cell(r.get(c)) for c in fig.columns])
    return buf.getvalue()


SECTIONS = [("grid", "Restorations", "A few fixed images (the first ones of the first seed): the measurement, each "
             "method and the same with DiffStateGrad, the ground truth; PSNR under each restoration. The missing "
             "region of an inpainting task is outlined."),
            ("steps", "Step-size robustness", "PSNR and LPIPS (mean and std over images and seeds) against the "
             "measurement-guidance step size, as a multiple of each method's default (dotted line); solid without "
             "DiffStateGrad, dashed with it."),
            ("distribution", "PSNR distributions and failures", "Each image's PSNR per method at its defaults (boxes: "
             "quartiles; whiskers: 1.5 IQR), with and without DiffStateGrad, and the failure rate (PSNR below the "
             "suite's threshold; a diverged image is a failure)."),
            ("cost", "Cost", "Seconds per image (mean over the method's cells), NFE and peak memory per method, with "
             "and without DiffStateGrad."),
            ("paper", "Against the paper", "Ours (coloured by verdict, with our std) beside the published mean (black, "
             "with the published std where the paper gives one)."),
            ("regression", "Against the baseline", "How much each cell moved; regressions beyond the tolerance in "
             "red-orange (vermillion), improvements beyond it in blue.")]


def write_report(data: dict, out_dir: Path, *, base: Path, name: str = "report", baseline: dict | None = None,
                 baseline_name: str = "baseline", tol: dict | None = None, grids: tuple | None = None,
                 sources: list[str] | None = None) -> Report:
    """Write ``out_dir/<name>.md`` and the figures (PNG + CSV) under ``out_dir/figures/`` (``report``)
    or ``out_dir/figures/<name>/`` (another name).  Never writes a results file."""
    from . import plots

    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures" if name == "report" else out_dir / "figures" / name
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs, left = figure_data(data, base, baseline=baseline, tol=tol, baseline_name=baseline_name, grids=grids)
    pngs = []
    for f in figs:
        png = fig_dir / f"{f.name}.png"
        (fig_dir / f"{f.name}.csv").write_text(csv_text(f))
        plots.draw(f, png)
        pngs.append(png)
    md = out_dir / f"{name}.md"
    md.write_text(markdown(data, figs, left, fig_dir.relative_to(out_dir).as_posix(), base, sources))
    return Report(md, pngs, left)


def markdown(data: dict, figs: list[Figure], left: list[str], rel: str, base: Path,
             sources: list[str] | None = None) -> str:
    suite = data.get("suite") or {}
    all_cells = [c for c in data["cells"].values() if isinstance(c, dict)]
    n = {s: sum(c.get("status") == s for c in all_cells) for s in ("ok", "skipped", "failed")}
    old = sum(c.get("status") == "ok" and isinstance(c.get("config"), dict) and outdated(c) for c in all_cells)
    lines = [f"# Benchmark: {suite.get('name', '?')}", ""]
    if suite.get("description"):
        lines += [suite["description"], ""]
    made = f"`restore bench {suite['file']}`" if suite.get("file") else "`restore bench`"
    lines += [f"Made by {made}; figures and this page by `restore bench report "
              f"{' '.join(sources or ['results.json'])}` (each figure's numbers are in the CSV beside it).", "",
              f"Cells: {n['ok']} finished, {n['failed']} failed, {n['skipped']} skipped (their method does not support "
              f"their task)" + (f", {len(all_cells) - sum(n.values())} other" if len(all_cells) > sum(n.values()) else "")
              + (f"; {old} finished by an earlier revision of their method (marked † in the table)" if old else "")
              + ".", ""]
    if left:
        lines += ["Left out: " + "; ".join(left) + ".", ""]
    if has_bars(data):
        lines += ["## The bars", "", *bars(data), *notes(data, base), ""]
    for kind, head, text in SECTIONS:
        mine = [f for f in figs if f.kind == kind]
        if not mine:
            continue
        lines += [f"## {head}", "", text, ""]
        src = next((f.meta.get("source") for f in mine if f.meta.get("source")), None)
        if src:
            lines += [f"These grids come from the {src}, not from this suite's cells: its settings (steps, "
                      "images) are its own.", ""]
        for f in mine:
            lines += [f"![{f.title}]({rel}/{f.name}.png)", "", f"Numbers: [{f.name}.csv]({rel}/{f.name}.csv)", ""]
    if data.get("paper", {}).get("comparison"):
        from .papers import markdown as paper_markdown

        lines += [paper_markdown(data["paper"]["comparison"], data["paper"], suite.get("n_images")), ""]
    try:
        table = markdown_table(data).split("\n", 2)[2]  # without the suite's own title
        lines += ["## Results", "", table]
    except (KeyError, TypeError, AttributeError) as e:  # an older results.json the table cannot read
        lines += ["## Results", "", f"(the table cannot be drawn from this results.json: {type(e).__name__} {e})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def merged_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / ("results.json" if name == "report" else f"{name}.json")
