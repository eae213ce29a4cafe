"""The papers' published numbers beside ours: paper suites' tables, cell matching and verdicts.

A paper suite (``benchmarks/papers/*.toml``) names a table of ``benchmarks/papers/published.toml``
(``paper = { published = "published.toml", table = "dsg-table2" }``).  Every cell of the suite is
matched to the table's row of the same method (``daps``, ``daps+dsg``, ...) and task
(``inpaint-box``, ``deblur-motion``, ``superres-x4``, ``phase-retrieval``, ``hdr``, ...), and, for a
step-size study, the same ``step_scale`` (the cell's ``guidance``).  For each metric the paper
reports as ``mean (std)`` over its test images, ours is judged:

* ``within``: our mean lies within the paper's reported std of its mean (``|ours - paper| <= std``);
* ``better`` / ``worse``: outside it, on the better side (higher PSNR/SSIM, lower LPIPS) or not;
* ``n/a``: no number on one side.

A paper that prints no std gets ``better``/``worse``/``equal``.  This is a reading aid, not a
statistical test: the paper's std is the spread over images, not the error of its mean.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
METRICS = ("lpips", "ssim", "psnr")


def task_key(task: str, task_opts: dict) -> str:
    """A cell's task as the published tables name it."""
    if task == "inpaint":
        return f"inpaint-{task_opts.get('mask', 'box')}"
    if task == "deblur":
        return f"deblur-{task_opts.get('kernel', 'gaussian')}"
    if task == "superres":
        return f"superres-x{int(task_opts.get('scale', 4))}"
    return task


def method_key(method: str, diffstategrad: bool) -> str:
    return method + ("+dsg" if diffstategrad else "")


# restore's method names -> the names a paper's table uses for the same method
ALIASES = {"latent-dps": ("latent-dps", "ldps"), "latent-dps+dsg": ("latent-dps+dsg", "ldps+dsg")}


def load_table(published: Path, table) -> dict:
    """A table of a published-numbers file (``table``: an id, or a list of ids whose rows are merged: a
    paper that prints SSIM in a separate table), with its metadata and its rows."""
    published = Path(published)
    try:
        data = tomllib.loads(published.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{published}: cannot read published numbers ({e})") from None
    tables = data.get("tables") or {}
    ids = [table] if isinstance(table, str) else list(table)
    merged: dict | None = None
    for tid in ids:
        if tid not in tables:
            raise ValueError(f"{published}: no table {tid!r} (it has {', '.join(sorted(tables)) or 'none'})")
        t = dict(tables[tid])
        rows = [dict(r) for r in t.get("rows", [])]
        for r in rows:
            if "method" not in r or "task" not in r:
                raise ValueError(f"{published}: a row of {tid!r} lacks method or task")
        if merged is None:
            merged = {**t, "rows": rows, "ids": ids}
            continue
        merged["table"] = f"{merged.get('table', '')} + {t.get('table', '')}"
        for r in rows:  # the same cell in the other table adds its metrics
            same = find_row(merged, r["method"], r["task"], r.get("step_scale"))
            if same is None:
                merged["rows"].append(r)
            else:
                same.update({k: v for k, v in r.items() if k not in same})
    return merged


def _step_matches(row_scale, guidance) -> bool:
    """A row's step size (a number, or "default"/"large" as DiffStateGrad's Table 7 prints them) and a
    cell's guidance multiplier."""
    if row_scale is None or guidance is None:
        return True
    if isinstance(guidance, str) or isinstance(row_scale, str) and isinstance(guidance, str):
        return str(row_scale) == str(guidance)
    if isinstance(row_scale, str):
        return (float(guidance) == 1.0) == (row_scale == "default")
    return float(row_scale) == float(guidance)


def find_row(table: dict, method: str, task: str, step_scale=None) -> dict | None:
    names = ALIASES.get(method, (method,))
    for r in table["rows"]:
        if r["method"] in names and r["task"] == task and _step_matches(r.get("step_scale"), step_scale):
            return r
    return None


def verdict(metric: str, ours: float | None, published) -> str:
    """``within`` / ``better`` / ``worse`` (``equal`` when the paper gives no std and the means agree), ``n/a``."""
    if ours is None or published is None or metric not in HIGHER_IS_BETTER:
        return "n/a"
    vals = list(published) if isinstance(published, (list, tuple)) else [published]
    if not vals:
        return "n/a"
    mean = float(vals[0])
    std = float(vals[1]) if len(vals) > 1 else None
    diff = float(ours) - mean
    if std is not None and abs(diff) <= std:
        return "within"
    if std is None and diff == 0:
        return "equal"
    better = diff > 0 if HIGHER_IS_BETTER[metric] else diff < 0
    return "better" if better else "worse"


def comparison(cells: list, results: dict, table: dict) -> list[dict]:
    """One row per (cell, metric) the paper reports: ours (mean, std), the paper's (mean, std), verdict.

    ``cells``: the suite's :class:`~restore_cli.bench.suite.Cell` list; ``results``: results.json's ``cells``."""
    rows = []
    for cell in cells:
        entry = results.get(cell.key)
        pub = find_row(table, method_key(cell.method, cell.diffstategrad), task_key(cell.task, cell.task_opts),
                       cell.guidance if any("step_scale" in r for r in table["rows"]) else None)
        if pub is None:
            continue
        summary = (entry or {}).get("summary") or {}
        for metric in METRICS:
            if metric not in pub:
                continue
            ours = summary.get(metric) or {}
            mean = ours.get("mean") if isinstance(ours, dict) else None
            rows.append({"cell": cell.label, "key": cell.key, "metric": metric,
                         "ours": mean, "ours_std": ours.get("std") if isinstance(ours, dict) else None,
                         "paper": list(pub[metric]) if isinstance(pub[metric], (list, tuple)) else [pub[metric]],
                         "verdict": verdict(metric, mean, pub[metric])
                         if entry and entry.get("status") == "ok" else "not run",
                         "source": f"{table.get('table', '')}, line {pub.get('source_line', '?')}"})
    return rows


def markdown(rows: list[dict], table: dict, n_images: int | None = None) -> str:
    """The comparison as a Markdown section (appended to results.md); ``n_images``: how many images ours average."""
    head = [f"## Against the paper: {table.get('paper', '')} {table.get('table', '')} ({table.get('dataset', '')})", ""]
    if table.get("images"):
        head += [f"Paper's images: {table['images']}", ""]
    if n_images is not None:
        want = table.get("n_images")
        head += [f"Our images: {n_images}." + (f" **The paper's numbers average {want}: the verdicts compare "
                                                f"different samples.**" if want and want != n_images else ""), ""]
    head += ["| cell | metric | ours mean (std) | paper mean (std) | verdict |", "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        digits = 2 if r["metric"] == "psnr" else 3  # as the papers print them
        fmt = lambda v: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731
        paper = fmt(r["paper"][0]) + (f" ({fmt(r['paper'][1])})" if len(r["paper"]) > 1 else "")
        ours = fmt(r["ours"]) + (f" ({fmt(r['ours_std'])})" if r["ours_std"] is not None else "")
        head.append(f"| {r['cell']} | {r['metric']} | {ours} | {paper} | {r['verdict']} |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("within", "better", "worse", "not run")}
    head += ["", ", ".join(f"{n} {v}" for v, n in counts.items() if n), ""]
    return "\n".join(head)
