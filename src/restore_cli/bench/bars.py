"""The DiffStateGrad issue's three bars, checked in the report of a suite that holds their cells (the Fashion-MNIST
suite, docs/benchmarks.md): every diffusion method beats the Gaussian posterior mean in LPIPS on box inpainting;
at a large step size DiffStateGrad loses less PSNR than the method alone; and it does not raise the phase-retrieval
failure rate."""

from __future__ import annotations

import math
from pathlib import Path

from .results import at_defaults, cells, task_of

NOT_DIFFUSION = ("pseudo-inverse", "posterior-mean", "posterior-sample")


def find(data, where, method, dsg, guidance=1.0):
    """The summary (and per-image records) of the finished cell at the method's defaults (not a
    sweep point) on the task ``where``, as a label writes it: 'inpaint[mask=box]', 'phase-retrieval[]'."""
    for cfg, c in cells(data):
        if (task_of(c) == where and cfg["method"] == method and cfg["diffstategrad"] == dsg
                and cfg["guidance"] == guidance and at_defaults(cfg, guidance=False) and c["status"] == "ok"):
            return {**c["summary"], "images": c.get("images", [])}
    return None


def paired(s: dict, g: float) -> tuple[float, float, int] | None:
    """The difference of the two PSNR losses per image (with DSG minus without), as mean +- its
    standard error: whether a difference is larger than the spread over the images explains."""
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


def has_bars(data) -> bool:
    """Whether the suite holds the cells the bars read: box inpainting with the Gaussian posterior mean
    and a step-size sweep (the Fashion-MNIST suite)."""
    return (any(task_of(c) == "inpaint[mask=box]" and cfg["method"] == "posterior-mean" for cfg, c in cells(data))
            and bool(large_steps(data)))


def bars(data) -> list[str]:
    """The DiffStateGrad issue's three bars, from the numbers: met, missed (with the numbers) or not yet
    measured (cells still to run)."""
    out = []
    from ..models.catalog import METHODS

    diffusion = sorted({cfg["method"] for cfg, _ in cells(data)} - set(NOT_DIFFUSION))
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
    out += ["2. At the large step size (x10), DiffStateGrad loses less PSNR than the method alone (box inpainting; "
            "the loss is against the same method at x1):", *lines, "", *bar2_every_task(data)]
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


def notes(data, base: Path) -> list[str]:
    """The hand-written notes beside the suite file (``benchmarks/fmnist-notes.md`` for
    ``benchmarks/fmnist.toml``), if any: the suite file as recorded, from here or from the results' folder."""
    f = (data.get("suite") or {}).get("file")
    if not f:
        return []
    for root in (Path.cwd(), base, *base.resolve().parents):
        p = root / Path(f).with_name(Path(f).stem + "-notes.md")
        if p.is_file():
            return p.read_text().splitlines()
    return []
