"""The papers' published numbers beside ours: paper suites' tables, cell matching and verdicts.

A paper suite (``benchmarks/papers/*.toml``) names a table of ``benchmarks/papers/published.toml``
(``paper = { published = "published.toml", table = "dsg-table2" }``).  Every cell of the suite is
matched to the table's row of the same method (``daps``, ``daps+dsg``, ...) and task
(``inpaint-box``, ``deblur-motion``, ``superres-x4``, ``phase-retrieval``, ``hdr``, ...), and, for a
step-size study, the same ``step_scale`` (the cell's ``guidance``).  For each metric the paper
reports as ``mean (std)`` over its test images, ours is judged:

* ``within``: our mean lies within the paper's reported std of its mean (``|ours - paper| <= std``);
* ``better`` / ``worse``: outside it, on the better side (higher PSNR/SSIM, lower LPIPS) or not;
* ``n/a``: no number on one side (ours missing or NaN).

A paper that prints no std gets ``equal`` when the difference is smaller than the paper's printed
precision (one unit of its last printed digit: LPIPS 0.0951 against a printed 0.095 is ``equal``,
as a reader would judge it), else ``better``/``worse``.  The printed digits come from the text of
``published.toml`` (a TOML reader drops trailing zeros: 0.290 would read as 0.29).  Each row cites
the line of the table each metric comes from (a merged SSIM table its own line).  This is a reading
aid, not a statistical test: the paper's std is the spread over images, not the error of its mean.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False}
METRICS = ("fid", "lpips", "ssim", "psnr")
VERDICTS = ("within", "equal", "better", "worse", "n/a", "not run")  # the summary's order
_ROWS_HEADER = re.compile(r"^\[\[tables\.([^\].]+)\.rows\]\]")
_NUMBERS = re.compile(r"^(\w+)\s*=\s*\[\s*(-?[0-9][0-9.]*)\s*(?:,[^\]]*)?\]")


def printed_digits(text: str) -> dict[tuple[str, int], dict[str, int]]:
    """``(table id, row index) -> {metric: decimals printed in its mean}``, read from a published-numbers
    file's text (``0.290``: 3), which keeps the papers' printed digits that a TOML reader drops."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    counts: dict[str, int] = {}
    row = None
    for line in text.splitlines():
        line = line.strip()
        m = _ROWS_HEADER.match(line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), -1) + 1
            row = (m.group(1), counts[m.group(1)])
            out[row] = {}
        elif line.startswith("["):
            row = None
        elif row is not None and (m := _NUMBERS.match(line)):
            out[row][m.group(1)] = len(m.group(2).partition(".")[2])
    return out


def _decimals(value) -> int | None:
    """The decimals of a number as Python writes it (a row without printed digits: hand-made tables)."""
    text = repr(float(value))
    return None if "e" in text or "n" in text else len(text.partition(".")[2].rstrip("0") or "")


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
    digits = printed_digits(published.read_text())
    ids = [table] if isinstance(table, str) else list(table)
    merged: dict | None = None
    for tid in ids:
        if tid not in tables:
            raise ValueError(f"{published}: no table {tid!r} (it has {', '.join(sorted(tables)) or 'none'})")
        t = dict(tables[tid])
        rows = [dict(r) for r in t.get("rows", [])]
        for i, r in enumerate(rows):
            if "method" not in r or "task" not in r:
                raise ValueError(f"{published}: a row of {tid!r} lacks method or task")
            numbers = [k for k, v in r.items() if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)]
            r["digits"] = {k: d for k, d in digits.get((tid, i), {}).items() if k in numbers}
            r["sources"] = {k: f"{t.get('table', '')}, line {r.get('source_line', '?')}" for k in numbers}
        if merged is None:
            merged = {**t, "rows": rows, "ids": ids}
            continue
        merged["table"] = f"{merged.get('table', '')} + {t.get('table', '')}"
        for r in rows:  # the same cell in the other table adds its metrics, each citing its own table and line
            same = find_row(merged, r["method"], r["task"], r.get("step_scale"))
            if same is None:
                merged["rows"].append(r)
            else:
                new = [k for k in r if k not in same]
                same.update({k: r[k] for k in new})
                same["digits"].update({k: d for k, d in r["digits"].items() if k in new})
                same["sources"].update({k: src for k, src in r["sources"].items() if k in new})
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


def verdict(metric: str, ours: float | None, published, digits: int | None = None) -> str:
    """``within`` / ``better`` / ``worse``; ``equal`` when the paper gives no std and ours, printed with the
    paper's ``digits`` decimals (unknown: as Python writes the paper's number), reads as the paper's number
    (0.0951 against a printed 0.095, not 0.0959); ``n/a`` when a number is missing or NaN."""
    if ours is None or published is None or metric not in HIGHER_IS_BETTER:
        return "n/a"
    vals = list(published) if isinstance(published, (list, tuple)) else [published]
    if not vals or not math.isfinite(float(ours)) or not math.isfinite(float(vals[0])):
        return "n/a"
    mean = float(vals[0])
    std = float(vals[1]) if len(vals) > 1 else None
    diff = float(ours) - mean
    if std is not None and abs(diff) <= std:
        return "within"
    if std is None:
        d = digits if digits is not None else _decimals(mean)
        if diff == 0 or (d is not None and f"{float(ours):.{d}f}" == f"{mean:.{d}f}"):  # printed alike
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
                         "verdict": verdict(metric, mean, pub[metric], (pub.get("digits") or {}).get(metric))
                         if entry and entry.get("status") == "ok" else "not run",
                         "source": (pub.get("sources") or {}).get(metric)
                         or f"{table.get('table', '')}, line {pub.get('source_line', '?')}"})
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
    order = list(VERDICTS) + sorted({r["verdict"] for r in rows} - set(VERDICTS))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in order}  # every verdict: they add up to the rows
    head += ["", ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no rows", ""]
    return "\n".join(head)
