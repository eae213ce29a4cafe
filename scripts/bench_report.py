"""Write docs/benchmarks.md (and docs/benchmarks.json) from a `restore bench benchmarks/fmnist.toml` run.

    python scripts/bench_report.py [RESULTS.json ...]     # default: bench/fmnist/results.json

Several results files (shards of the suite run side by side, e.g. one per CPU core with
``--only``) are merged cell by cell, in the suite's order: a finished ("ok") cell wins over a
failed one; of two finished, one made by its method's current revision over an outdated one (marked
† in the table), then the one finished later (a ``--rerun``; cells from before the time was recorded
count as oldest), and an earlier file among equals.

Besides the table it checks the issue's three bars, from the numbers, and says for each
whether it is met, missed (with the numbers) or not yet measured (cells still to run):

1. every diffusion method beats the Gaussian-prior posterior mean in LPIPS on box inpainting;
2. at the large measurement-guidance step size (guidance x10), each method with DiffStateGrad
   loses less PSNR against its own default than without it;
3. phase retrieval's failure rate with DiffStateGrad is not worse than without.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from restore_cli.bench.results import markdown_table, outdated  # noqa: E402


def cells(data):
    """Every cell the suite plans that can run: a cell skipped because its method does not
    support its task is no cell to wait for, and no bar reads it."""
    for c in data["cells"].values():
        if c["status"] != "skipped":
            yield c["config"], c


def task_of(c) -> str:
    """A cell's task with its options, as its label writes it: 'inpaint[mask=box]', 'hdr[]'."""
    return c["label"].split()[0]


def default_dsg(opts: dict) -> bool:
    """Whether a cell's DiffStateGrad options are its defaults: none given, or only the default rank
    rule and variance cutoff named (a suite that compares rank rules names the default one too)."""
    from restore_cli.solvers.projection import DiffStateGrad

    d = DiffStateGrad().params()
    return all(k in ("rank_mode", "var_cutoff") and v == d[k] for k, v in (opts or {}).items())


def find(data, where, method, dsg, guidance=1.0):
    """The summary (and per-image records) of the finished cell at the method's defaults (not a
    sweep point) on the task ``where``, as a label writes it: 'inpaint[mask=box]', 'phase-retrieval[]'."""
    for cfg, c in cells(data):
        if (task_of(c) == where and cfg["method"] == method and cfg["diffstategrad"] == dsg
                and cfg["guidance"] == guidance and default_dsg(cfg.get("dsg_opts")) and not cfg.get("hparams")
                and c["status"] == "ok"):
            return {**c["summary"], "images": c["images"]}
    return None


def paired(s: dict, g: float) -> tuple[float, float, int] | None:
    """The difference of the two PSNR losses per image (with DSG minus without), as mean +- its
    standard error: whether a difference is larger than the spread over 8 images explains."""
    per = {}
    for (d, gg), cell in s.items():
        for r in cell["images"]:
            per.setdefault((r["image"], r["seed"]), {})[(d, gg)] = r["psnr"]
    diffs = [(v[(True, 1.0)] - v[(True, g)]) - (v[(False, 1.0)] - v[(False, g)])
             for v in per.values() if len(v) == 4 and all(x is not None for x in v.values())]
    if len(diffs) < 2:
        return None
    m = sum(diffs) / len(diffs)
    return m, math.sqrt(sum((x - m) ** 2 for x in diffs) / (len(diffs) - 1) / len(diffs)), len(diffs)


def show_paired(p: tuple[float, float, int] | None) -> str:
    """``paired()``'s result as 'mean +- s.e. dB', or '-' when there is none."""
    return "-" if p is None else f"{p[0]:+.2f} +- {p[1]:.2f} dB"


def large_steps(data) -> list[float]:
    return sorted({cfg["guidance"] for cfg, _ in cells(data) if cfg["guidance"] > 1.0}, reverse=True)


def robustness(data, where: str, m: str, g: float):
    """Bar 2 for one task and method: the PSNR each variant loses from x1 to x``g`` (a cell whose
    every image diverged has no mean PSNR: its loss is unbounded); None until all four cells ran."""
    s = {(d, gg): find(data, where, m, d, gg) for d in (False, True) for gg in (1.0, g)}
    if any(v is None for v in s.values()):
        return None
    drop = {d: (math.inf if s[(d, g)]["psnr"]["mean"] is None
                else s[(d, 1.0)]["psnr"]["mean"] - s[(d, g)]["psnr"]["mean"]) for d in (False, True)}

    def show(d):
        fail = s[(d, g)]["failure_rate"]
        return ("diverged (every image NaN)" if math.isinf(drop[d])
                else f"{drop[d]:+.2f} dB" + (f" ({100 * fail:.0f} % failures)" if fail else ""))
    return {"ok": drop[True] <= drop[False] and math.isfinite(drop[True]), "without": show(False),
            "with": show(True), "paired": paired(s, g)}


def bar2_every_task(data) -> list[str]:
    """Bar 2 on each of the other tasks the suite runs at a large step size, as one table."""
    tasks = []
    for cfg, c in cells(data):
        if cfg["guidance"] > 1.0 and task_of(c) not in tasks and task_of(c) != "inpaint[mask=box]":
            tasks.append(task_of(c))
    rows, met, measured = [], 0, 0
    for where in tasks:
        for m in sorted({cfg["method"] for cfg, c in cells(data) if task_of(c) == where and cfg["guidance"] > 1.0}):
            for g in large_steps(data):
                if not any(cfg["method"] == m and cfg["guidance"] == g and task_of(c) == where for cfg, c in cells(data)):
                    continue
                r = robustness(data, where, m, g)
                if r is None:
                    rows.append(f"| {where} | {m} x{g:g} | - | - | - | not measured yet |")
                    continue
                measured += 1
                met += r["ok"]
                rows.append(f"| {where} | {m} x{g:g} | {r['without']} | {r['with']} | {show_paired(r['paired'])} "
                            f"| {'met' if r['ok'] else '**missed**'} |")
    if not rows:
        return []
    return [f"   The same bar on the other tasks (met in {met} of {measured} measured):", "",
            "   | task | method | PSNR loss without DSG | with DSG | paired difference (s.e.) | bar |",
            "   |---|---|---|---|---|---|", *["   " + r for r in rows], ""]


def bars(data) -> list[str]:
    out = []
    from restore_cli.models.catalog import METHODS

    diffusion = sorted({cfg["method"] for cfg, _ in cells(data)} - {"pseudo-inverse", "posterior-mean", "posterior-sample"})
    # 1. LPIPS on box inpainting against the Gaussian posterior mean
    ref = find(data, "inpaint[mask=box]", "posterior-mean", False)
    lines = []
    for m in diffusion:
        guided = METHODS[m].gradient_guided if m in METHODS else True
        for dsg in (False, True) if guided else (False,):  # DDRM, DiffPIR, DDS: no gradient to project
            s = find(data, "inpaint[mask=box]", m, dsg)
            if s is None or ref is None or s["lpips"]["mean"] is None or ref["lpips"]["mean"] is None:
                lines.append(f"  - {m}{' + DSG' if dsg else ''}: not measured yet (or LPIPS unavailable)")
                continue
            ok = s["lpips"]["mean"] < ref["lpips"]["mean"]
            lines.append(f"  - {m}{' + DSG' if dsg else ''}: LPIPS {s['lpips']['mean']:.3f} vs "
                         f"{ref['lpips']['mean']:.3f} -> {'met' if ok else '**missed**'}")
    out += ["1. Every diffusion method beats the Gaussian posterior mean in LPIPS on box inpainting:", *lines, ""]
    # 2. robustness to a large step size (x10; and any other large step the suite measures)
    lines = []
    for m in diffusion:
        for g in large_steps(data):
            r = robustness(data, "inpaint[mask=box]", m, g)
            if r is None:
                if any(cfg["method"] == m and cfg["guidance"] == g for cfg, _ in cells(data)):
                    lines.append(f"  - {m} x{g:g}: not measured yet")
                continue
            lines.append(f"  - {m} x{g:g}: PSNR loss without DSG {r['without']}, with DSG {r['with']} "
                         f"-> {'met' if r['ok'] else '**missed**'}" + ("" if r["paired"] is None else
                         f"; paired difference {show_paired(r['paired'])} (s.e., {r['paired'][2]} images)"))
    out += ["2. At the large step size (x10), DiffStateGrad loses less PSNR than the method alone (box inpainting; the loss is against the same method at x1):",
            *lines, "", *bar2_every_task(data)]
    # 3. phase retrieval failure rate
    lines = []
    for m in diffusion:
        a, b = find(data, "phase-retrieval[]", m, False), find(data, "phase-retrieval[]", m, True)
        if a is None or b is None:
            if any(cfg["method"] == m and cfg["task"] == "phase-retrieval" for cfg, _ in cells(data)):
                lines.append(f"  - {m}: not measured yet")
            continue
        ok = b["failure_rate"] <= a["failure_rate"]
        lines.append(f"  - {m}: failure rate without DSG {100 * a['failure_rate']:.0f} %, with DSG "
                     f"{100 * b['failure_rate']:.0f} % -> {'met' if ok else '**missed**'}")
    out += ["3. Phase retrieval (best of 4): the failure rate with DiffStateGrad is not worse than without:", *lines, ""]
    return out


def notes() -> list[str]:
    """The hand-written explanations of the misses (benchmarks/fmnist-notes.md), if any."""
    f = ROOT / "benchmarks" / "fmnist-notes.md"
    return f.read_text().splitlines() if f.exists() else []


def _finished(cell: dict) -> float:
    """When the cell finished (POSIX seconds; a time without a zone is UTC); cells from before the time
    was recorded, or with one that cannot be read: minus infinity, the oldest."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(cell["finished"])
    except (KeyError, TypeError, ValueError):
        return float("-inf")
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def merge(datas: list[dict], suite) -> dict:
    """One results dict from several runs of the same suite (its cells in the suite's order)."""
    rank = {"ok": 0, "skipped": 1, "failed": 2}
    merged = {**datas[0], "cells": {}, "models": {}}
    for d in datas:
        merged["models"].update(d.get("models", {}))
    for cell in suite.cells:
        found = [d["cells"][cell.key] for d in datas if cell.key in d["cells"]]
        if found:  # a finished cell over a skipped or failed one; of two finished, one by the method's
            # current revision over an outdated one, then the newer (a rerun)
            merged["cells"][cell.key] = min(found, key=lambda c: (rank.get(c["status"], 3), outdated(c), -_finished(c)))
    started = [d["started"] for d in datas if d.get("started")]
    finished = [d["finished"] for d in datas if d.get("finished")]
    merged["started"] = min(started) if started else None
    merged["finished"] = max(finished) if len(finished) == len(datas) else None
    return merged


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("results", nargs="*", type=Path, help="results.json files of the suite's shards "
                        "(default: bench/fmnist/results.json)")
    args = parser.parse_args(argv)
    srcs = args.results or [ROOT / "bench" / "fmnist" / "results.json"]
    missing = [str(s) for s in srcs if not s.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    from restore_cli.bench.suite import load_suite

    suite = load_suite(ROOT / "benchmarks" / "fmnist.toml")
    data = merge([json.loads(src.read_text()) for src in srcs], suite)
    done = sum(c["status"] == "ok" for c in data["cells"].values())
    old = sum(c["status"] == "ok" and outdated(c) for c in data["cells"].values())
    skipped = sum(c["status"] == "skipped" for c in data["cells"].values())
    total = len(suite.cells) - skipped
    left = "" if done == total else " (the rest are still to run: the suite is resumable)"
    head = ["# Benchmarks", "",
            "Produced by `restore bench benchmarks/fmnist.toml -o bench/fmnist` and `python scripts/bench_report.py`;",
            "the JSON behind this page is `docs/benchmarks.json`. Models: the bundled `fmnist-ddpm-32` and",
            "`fmnist-ldm-32` (see docs/models.md), on held-out Fashion-MNIST test images. Every method runs at its",
            "paper's default settings unless the setting column says otherwise; `guidance x10` multiplies the",
            "method's measurement-guidance step size by 10 (DiffStateGrad's robustness study).", "",
            f"Cells finished: {done} of {total} in the suite{left}."
            + (f" {old} of them (marked †) were made by an earlier revision of their method and are still to rerun."
               if old else "")
            + (f" {skipped} more are skipped: their method does not support their task (the reason is in the JSON)."
               if skipped else ""), "",
            "## The bars", "", *bars(data), *notes(), "## Results", ""]
    table = markdown_table(data).split("\n", 2)[2]  # without the suite's own title
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(head) + "\n" + table)
    (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    print((ROOT / "docs" / "benchmarks.md").read_text())


if __name__ == "__main__":
    main()
