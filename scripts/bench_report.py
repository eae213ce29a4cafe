"""Write docs/benchmarks.md (and docs/benchmarks.json) from a `restore bench benchmarks/fmnist.toml` run.

    python scripts/bench_report.py [bench/fmnist/results.json]

Besides the table it checks the issue's three bars, from the numbers, and says for each
whether it is met, missed (with the numbers) or not yet measured (cells still to run):

1. every diffusion method beats the Gaussian-prior posterior mean in LPIPS on box inpainting;
2. at the large measurement-guidance step size (guidance x10), each method with DiffStateGrad
   loses less PSNR against its own default than without it;
3. phase retrieval's failure rate with DiffStateGrad is not worse than without.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from restore_cli.bench_results import markdown_table  # noqa: E402


def cells(data):
    for c in data["cells"].values():
        yield c["config"], c


def find(data, task, method, dsg, guidance=1.0, mask=None):
    for cfg, c in cells(data):
        if (cfg["task"] == task and cfg["method"] == method and cfg["diffstategrad"] == dsg
                and cfg["guidance"] == guidance and (mask is None or cfg["task_opts"].get("mask") == mask)
                and c["status"] == "ok"):
            return c["summary"]
    return None


def bars(data) -> list[str]:
    out = []
    diffusion = sorted({cfg["method"] for cfg, _ in cells(data)} - {"pseudo-inverse", "posterior-mean"})
    # 1. LPIPS on box inpainting against the Gaussian posterior mean
    ref = find(data, "inpaint", "posterior-mean", False, mask="box")
    lines = []
    for m in diffusion:
        for dsg in (False, True):
            s = find(data, "inpaint", m, dsg, mask="box")
            if s is None or ref is None or s["lpips"]["mean"] is None or ref["lpips"]["mean"] is None:
                lines.append(f"  - {m}{' + DSG' if dsg else ''}: not measured yet (or LPIPS unavailable)")
                continue
            ok = s["lpips"]["mean"] < ref["lpips"]["mean"]
            lines.append(f"  - {m}{' + DSG' if dsg else ''}: LPIPS {s['lpips']['mean']:.3f} vs "
                         f"{ref['lpips']['mean']:.3f} -> {'met' if ok else '**missed**'}")
    out += ["1. Every diffusion method beats the Gaussian posterior mean in LPIPS on box inpainting:", *lines, ""]
    # 2. robustness to a large step size
    lines = []
    for m in diffusion:
        s = {(d, g): find(data, "inpaint", m, d, g, mask="box") for d in (False, True) for g in (1.0, 10.0)}
        if any(v is None for v in s.values()):
            if any(cfg["method"] == m and cfg["guidance"] == 10.0 for cfg, _ in cells(data)):
                lines.append(f"  - {m}: not measured yet")
            continue
        drop = {d: s[(d, 1.0)]["psnr"]["mean"] - s[(d, 10.0)]["psnr"]["mean"] for d in (False, True)}
        ok = drop[True] <= drop[False]
        lines.append(f"  - {m}: PSNR loss at x10 without DSG {drop[False]:+.2f} dB, with DSG {drop[True]:+.2f} dB "
                     f"-> {'met' if ok else '**missed**'}")
    out += ["2. At the large step size (x10), DiffStateGrad loses less PSNR than the method alone (box inpainting):",
            *lines, ""]
    # 3. phase retrieval failure rate
    lines = []
    for m in diffusion:
        a, b = find(data, "phase-retrieval", m, False), find(data, "phase-retrieval", m, True)
        if a is None or b is None:
            if any(cfg["method"] == m and cfg["task"] == "phase-retrieval" for cfg, _ in cells(data)):
                lines.append(f"  - {m}: not measured yet")
            continue
        ok = b["failure_rate"] <= a["failure_rate"]
        lines.append(f"  - {m}: failure rate without DSG {100 * a['failure_rate']:.0f} %, with DSG "
                     f"{100 * b['failure_rate']:.0f} % -> {'met' if ok else '**missed**'}")
    out += ["3. Phase retrieval (best of 4): the failure rate with DiffStateGrad is not worse than without:", *lines, ""]
    return out


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "fmnist" / "results.json"
    data = json.loads(src.read_text())
    done = sum(c["status"] == "ok" for c in data["cells"].values())
    from restore_cli.bench import load_suite

    total = len(load_suite(ROOT / "benchmarks" / "fmnist.toml").cells)
    head = ["# Benchmarks", "",
            "Produced by `restore bench benchmarks/fmnist.toml -o bench/fmnist` and `python scripts/bench_report.py`;",
            "the JSON behind this page is `docs/benchmarks.json`. Models: the bundled `fmnist-ddpm-32` and",
            "`fmnist-ldm-32` (see docs/models.md), on held-out Fashion-MNIST test images. Every method runs at its",
            "paper's default settings unless the setting column says otherwise; `guidance x10` multiplies the",
            "method's measurement-guidance step size by 10 (DiffStateGrad's robustness study).", "",
            f"Cells finished: {done} of {total} in the suite (the rest are still to run: the suite is resumable).", "",
            "## The bars", "", *bars(data), "## Results", ""]
    table = markdown_table(data).split("\n", 2)[2]  # without the suite's own title
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(head) + "\n" + table)
    shutil.copyfile(src, ROOT / "docs" / "benchmarks.json")
    print((ROOT / "docs" / "benchmarks.md").read_text())


if __name__ == "__main__":
    main()
