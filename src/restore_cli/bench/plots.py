"""The report's figures, drawn with matplotlib (Agg: no display) from :class:`report.Figure` rows.

Only this module imports matplotlib, and only when a figure is drawn (``restore --help`` and a suite
run's import do not load it).  Colours: the Okabe-Ito palette, safe for colour-blind readers; one
colour per method, its DiffStateGrad variant in the same colour, dashed or hatched.  Text is 9-11 pt
at 100 dpi, so it reads at 100 % zoom; PNGs are small enough to commit (tens of kB).
"""

from __future__ import annotations

import math
from pathlib import Path

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
VERDICT = {"within": "#0072B2", "better": "#009E73", "worse": "#D55E00", "equal": "#56B4E9"}
GREY = "#999999"
OUTLINE = "#E69F00"  # the missing region: orange shows on black, white and grey
DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.dpi": DPI, "savefig.dpi": DPI,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(plt, fig, path: Path, colours: int = 128) -> None:
    """The figure as a palette PNG (``colours`` colours, about a third of an RGB PNG's size)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
            .save(path, format="PNG", optimize=True)


def _colours(rows: list[dict]) -> dict[tuple, tuple[str, str]]:
    """Per (method, model): its colour and marker, in the rows' order."""
    out: dict[tuple, tuple[str, str]] = {}
    for r in rows:
        k = (r["method"], r.get("model"))
        if k not in out:
            i = len(out)
            out[k] = (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)])
    return out


def _num(v) -> float:
    return math.nan if v is None else float(v)


def draw(fig, path: Path) -> None:
    """Draw a :class:`report.Figure` to ``path`` (PNG)."""
    {"grid": grid, "steps": steps, "distribution": distribution, "cost": cost, "paper": paper,
     "regression": regression}[fig.kind](fig, Path(path))


def _image(file: str):
    import numpy as np
    from PIL import Image

    with Image.open(file) as im:
        grey = im.mode in ("1", "L", "LA", "I", "I;16")
        a = np.asarray(im.convert("L") if grey else im.convert("RGB")).astype("float32") / 255.0
    if a.ndim == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        a = a[..., 0]  # an RGB file of a grey image: grey
    return a


def grid(f, path: Path) -> None:
    """Rows: images; columns: measurement | each method (+DSG) | ground truth; every panel labelled."""
    plt = _plt()
    rows = list(dict.fromkeys(r["row"] for r in f.rows))
    cols = list(dict.fromkeys(r["column"] for r in f.rows))
    at = {(r["row"], r["column"]): r for r in f.rows}
    base = Path(f.meta.get("base", "."))  # the saved images' paths are relative to the results' folder
    side = 1.05
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(side * len(cols) + 0.3, (side + 0.42) * len(rows) + 0.4),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            r = at.get((row, col))
            if r is None:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8, color=GREY, transform=ax.transAxes)
                continue
            try:
                img = _image(base / r["file"])
            except OSError:
                ax.text(0.5, 0.5, "image\nmissing", ha="center", va="center", fontsize=8, color=GREY,
                        transform=ax.transAxes)
                continue
            if img.ndim == 2:  # grey images grey
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            if r.get("missing"):
                try:
                    m = _image(base / r["missing"])
                    m = m if m.ndim == 2 else m.mean(-1)
                    h, w = img.shape[:2]
                    ys = [(y + 0.5) * h / m.shape[0] - 0.5 for y in range(m.shape[0])]
                    xs = [(x + 0.5) * w / m.shape[1] - 0.5 for x in range(m.shape[1])]
                    ax.contour(xs, ys, m, levels=[0.5], colors=OUTLINE, linewidths=1.2)
                except (OSError, ValueError):
                    pass
            ax.set_title(_short(col), fontsize=8.5, pad=2)
            if r.get("psnr") is not None:
                ax.set_xlabel(f"{r['psnr']:.1f} dB", fontsize=8.5, labelpad=1)
            elif r.get("method"):
                ax.set_xlabel("diverged", fontsize=8.5, labelpad=1, color="#D55E00")
        axes[i][0].set_ylabel(str(row), fontsize=8.5)
    fig.suptitle(f.title, fontsize=11)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.4)
    _save(plt, fig, path, colours=256)


def _short(label: str) -> str:
    """A panel's title on two lines when it is long ('latent-dps +DSG (model)')."""
    return label if len(label) <= 14 else label.replace(" (", "\n(", 1)


def steps(f, path: Path) -> None:
    """PSNR (and LPIPS when measured) against the step size on a log axis; default step dotted."""
    plt = _plt()
    has_lpips = any(r["lpips_mean"] is not None for r in f.rows)
    metrics = [("psnr", "PSNR (dB), higher is better")] + ([("lpips", "LPIPS, lower is better")] if has_lpips else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics) + 1.6, 3.8), squeeze=False)
    colours = _colours(f.rows)
    series = list(dict.fromkeys(r["series"] for r in f.rows))
    for ax, (metric, label) in zip(axes[0], metrics):
        for i, name in enumerate(series):
            pts = [r for r in f.rows if r["series"] == name]
            c, mk = colours[(pts[0]["method"], pts[0].get("model"))]
            dodge = 10 ** ((i - (len(series) - 1) / 2) * 0.006)  # apart, so that the error bars do not hide each other
            xs = [r["guidance"] * dodge for r in pts]
            ys = [_num(r[f"{metric}_mean"]) for r in pts]
            es = [0.0 if r[f"{metric}_std"] is None else r[f"{metric}_std"] for r in pts]
            ax.errorbar(xs, ys, yerr=es, color=c, marker=mk, markersize=5, capsize=3, linewidth=1.6,
                        linestyle="--" if pts[0]["diffstategrad"] else "-",
                        markerfacecolor="white" if pts[0]["diffstategrad"] else c, label=name)
        ax.set_xscale("log")
        ax.axvline(1.0, color="#555555", linestyle=":", linewidth=1)
        ax.annotate("default", (1.0, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", fontsize=8.5, color="#555555")
        ax.set_xlabel("step size (x the method's default)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.25)
        ticks = sorted({r["guidance"] for r in f.rows})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"x{t:g}" for t in ticks])
        ax.minorticks_off()
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(f.title + " (mean and std over images and seeds)")
    fig.tight_layout()
    _save(plt, fig, path)


def distribution(f, path: Path) -> None:
    """Per series: a box of its images' PSNR (points on top), and its failure rate below."""
    plt = _plt()
    series = list(dict.fromkeys(r["series"] for r in f.rows))
    colours = _colours(f.rows)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5.0, 0.62 * len(series) + 1.8), 5.6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    rates = []
    for i, name in enumerate(series):
        pts = [r for r in f.rows if r["series"] == name]
        c, _ = colours[(pts[0]["method"], pts[0].get("model"))]
        vals = [r["psnr"] for r in pts if r["psnr"] is not None and math.isfinite(r["psnr"])]
        dsg = bool(pts[0]["diffstategrad"])
        if vals:
            b = top.boxplot([vals], positions=[i], widths=0.6, patch_artist=True, showfliers=False)
            for box in b["boxes"]:
                box.set(facecolor=c, alpha=0.45 if dsg else 0.8, hatch="///" if dsg else None, edgecolor="#333333")
            for part in ("medians",):
                for ln in b[part]:
                    ln.set(color="black", linewidth=1.4)
            top.scatter([i + (k % 5 - 2) * 0.05 for k in range(len(vals))], vals, s=9, color="black", zorder=3)
        rate = pts[0]["failure_rate"]
        rates.append(rate)
        bottom.bar(i, 100 * (rate or 0.0), color=c, alpha=0.45 if dsg else 0.8, hatch="///" if dsg else None,
                   edgecolor="#333333", width=0.6)
        if rate is not None:
            bottom.text(i, 100 * rate + 2, f"{100 * rate:.0f}%", ha="center", va="bottom", fontsize=8)
    thr = f.meta.get("failure_psnr")
    if thr is not None:
        top.axhline(thr, color="#D55E00", linestyle=":", linewidth=1)
        top.annotate(f"failure < {thr:g} dB", (1.0, thr), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                     textcoords="offset points", ha="right", fontsize=8.5, color="#D55E00")
    top.set_ylabel("PSNR per image (dB)")
    top.grid(True, axis="y", alpha=0.25)
    bottom.set_ylabel("failures (%)")
    bottom.set_ylim(0, 115)
    bottom.set_xticks(range(len(series)))
    bottom.set_xticklabels(series, rotation=35, ha="right")
    top.set_title(f.title + " (hatched: with DiffStateGrad)")
    fig.tight_layout()
    _save(plt, fig, path)


def cost(f, path: Path) -> None:
    """Three bar panels: seconds per image, NFE, peak memory; DSG variants hatched."""
    plt = _plt()
    panels = [("seconds_per_image", "seconds per image"), ("nfe", "NFE per image"), ("peak_memory_mb", "peak memory (MB)")]
    colours = _colours(f.rows)
    fig, axes = plt.subplots(1, 3, figsize=(12.0, max(2.6, 0.28 * len(f.rows) + 1.2)), sharey=True)
    ys = list(range(len(f.rows)))
    for ax, (key, label) in zip(axes, panels):
        for y, r in zip(ys, f.rows):
            c, _ = colours[(r["method"], r.get("model"))]
            v = r[key]
            dsg = bool(r["diffstategrad"])
            ax.barh(y, 0 if v is None else v, color=c, alpha=0.45 if dsg else 0.8, hatch="///" if dsg else None,
                    edgecolor="#333333", height=0.7)
            ax.text(0 if v is None else v, y, " -" if v is None else f" {v}" if isinstance(v, int) else f" {v:.3g}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.25)
        ax.margins(x=0.18)
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels([r["series"] for r in f.rows])
    axes[0].invert_yaxis()
    fig.suptitle(f.title + " (hatched: with DiffStateGrad)")
    fig.tight_layout()
    _save(plt, fig, path)


def paper(f, path: Path) -> None:
    """Per metric: each cell's published mean (black, with its std) and ours (coloured by verdict)."""
    from matplotlib.lines import Line2D

    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in f.rows))
    cellnames = list(dict.fromkeys(r["cell"] for r in f.rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 3.0, max(2.4, 0.36 * len(cellnames) + 1.4)),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for r in (r for r in f.rows if r["metric"] == metric):
            y = cellnames.index(r["cell"])
            if r["paper"] is not None:
                ax.errorbar([r["paper"]], [y + 0.15], xerr=None if r["paper_std"] is None else [r["paper_std"]],
                            fmt="o", color="black", markerfacecolor="white", capsize=3, markersize=5)
            if r["ours"] is not None:
                ax.errorbar([r["ours"]], [y - 0.15], xerr=None if r["ours_std"] is None else [r["ours_std"]],
                            fmt="s", color=VERDICT.get(r["verdict"], GREY), capsize=3, markersize=5)
        better = {"psnr": "higher", "ssim": "higher", "lpips": "lower"}.get(metric)
        ax.set_xlabel(metric.upper() + (f" ({better} is better)" if better else ""))
        ax.grid(True, axis="x", alpha=0.25)
    axes[0][0].set_yticks(range(len(cellnames)))
    axes[0][0].set_yticklabels(cellnames, fontsize=8.5)
    axes[0][0].invert_yaxis()
    handles = [Line2D([], [], marker="o", color="black", markerfacecolor="white", linestyle="", label="paper (std)")]
    handles += [Line2D([], [], marker="s", color=col, linestyle="", label=f"ours: {v}") for v, col in VERDICT.items()
                if any(r["verdict"] == v for r in f.rows)]
    if any(r["verdict"] not in VERDICT for r in f.rows):
        handles.append(Line2D([], [], marker="s", color=GREY, linestyle="", label="ours: n/a, not run"))
    axes[0][-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(f.title)
    fig.tight_layout()
    _save(plt, fig, path)


MAX_REGRESSION_ROWS = 40


def regression(f, path: Path) -> None:
    """Per metric: each cell's change against the baseline (bars), the tolerance shaded; the cells that
    moved most (regressions first) when there are many."""
    plt = _plt()
    metrics = [m for m in ("psnr", "ssim", "lpips", "failure_rate") if any(r["metric"] == m for r in f.rows)]
    lost = [r for r in f.rows if r["metric"] == "status"]
    score: dict[str, float] = {}
    for r in f.rows:
        if r["change"] is not None and r["tolerance"]:
            score[r["cell"]] = max(score.get(r["cell"], 0.0), abs(r["change"]) / r["tolerance"])
        if r["regressed"]:
            score[r["cell"]] = max(score.get(r["cell"], 0.0), 1e9)
    names = [c for c in dict.fromkeys(r["cell"] for r in f.rows if r["metric"] != "status")]
    names = sorted(names, key=lambda c: -score.get(c, 0.0))[:MAX_REGRESSION_ROWS]
    names = [c for c in dict.fromkeys(r["cell"] for r in f.rows) if c in names]
    if not metrics or not names:
        fig, ax = plt.subplots(figsize=(6, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "no cell to compare" + (f" ({len(lost)} missing or failed)" if lost else ""),
                ha="center", va="center")
        _save(plt, fig, path)
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 3.5, max(2.4, 0.3 * len(names) + 1.5)),
                             sharey=True, squeeze=False)
    worse_up = {"psnr": False, "ssim": False, "lpips": True, "failure_rate": True}
    for ax, metric in zip(axes[0], metrics):
        tol = next((r["tolerance"] for r in f.rows if r["metric"] == metric and r["tolerance"] is not None), None)
        if tol:
            ax.axvspan(-tol, tol, color="#dddddd", zorder=0)
        for r in (r for r in f.rows if r["metric"] == metric and r["cell"] in names):
            y = names.index(r["cell"])
            ch = r["change"]
            beyond = tol is not None and abs(ch) > tol
            c = "#D55E00" if r["regressed"] else ("#0072B2" if beyond else GREY)
            ax.barh(y, ch, color=c, height=0.7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{metric.replace('_', ' ')} change ({'up' if worse_up[metric] else 'down'} is worse)")
        ax.grid(True, axis="x", alpha=0.25)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels(names, fontsize=8.5)
    axes[0][0].invert_yaxis()
    n = f.meta.get("regressions", 0)
    extra = f"; {len(lost)} cell(s) missing or failed" if lost else ""
    fig.suptitle(f"{f.title}: {n} regression(s){extra} (grey band: tolerance)")
    fig.tight_layout()
    _save(plt, fig, path)
