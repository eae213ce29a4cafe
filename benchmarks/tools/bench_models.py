"""The real-size tier: every registered real model at its exact architecture (random weights), through the CLI.

For each model of ``restore_cli.models.testing.REAL_MODELS`` (ffhq-256, imagenet-256, ldm-ffhq-256,
ldm-celebahq-256, ddpm-celebahq-256, sd-v1-5) this builds the model from its committed config
(``src/restore_cli/data/architectures/``) with random weights, then runs ``restore <task>`` on one
image at the model's native resolution for 2 sampler steps with every learned method that runs on
it, with and without DiffStateGrad, each in a fresh process, and prints per model x method x
DiffStateGrad: seconds per image and per sampler step, NFE, backward passes' worth of time, and the
process's peak memory (RSS on the CPU, the CUDA allocator's peak on a GPU).  Inner loops are capped
(``TIER_CAPS``): the numbers are the cost of the sampler steps, not of a whole default run.

    python benchmarks/tools/bench_models.py                       # all models, inpainting (the table in docs/realsize.md)
    python benchmarks/tools/bench_models.py --models ffhq-256 --all-tasks
    python benchmarks/tools/bench_models.py --device cuda          # on a GPU

Results go to ``--results`` (JSON, one record per cell, resumable: cells already there are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from restore_cli.bench.throughput import build  # the random-weight folder of a real model, built once

REPO = Path(__file__).resolve().parents[2]


def image_for(size: int, workdir: Path) -> Path:
    from PIL import Image
    from skimage import data

    p = workdir / f"astronaut-{size}.png"
    if not p.exists():
        Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC).save(p)
    return p


def main(argv=None) -> int:
    from restore_cli.models.config import load_registry
    from restore_cli.models.testing import REAL_MODELS, real_size_args, real_size_cells

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(REAL_MODELS))
    ap.add_argument("--all-tasks", action="store_true", help="every task of each method (default: inpainting)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "restore-realsize")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "realsize.json")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table as a page (docs/realsize.md)")
    args = ap.parse_args(argv)
    reg = load_registry()
    unknown = [m for m in args.models if m not in REAL_MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {REAL_MODELS}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.results.read_text()) if args.results.exists() else []
    done = {(r["model"], r["method"], r["task"], r["dsg"]) for r in results}
    cells = list(real_size_cells(args.models, None if args.all_tasks else ("inpaint",)))
    for model, method, task, dsg in cells:
        if (model, method, task, dsg) in done:
            continue
        spec = reg.get(model)
        folder = build(model, args.workdir)
        img = image_for(spec.resolution or 256, args.workdir)
        out = args.workdir / "out" / f"{model}-{method}-{task}-{int(dsg)}"
        cli = [task, str(img), "--model", str(folder), *real_size_args(method, task, dsg, args.steps, args.device),
               "-o", str(out), "--overwrite"]
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "restore_cli.cli.app", *cli], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        rec = {"model": model, "method": method, "task": task, "dsg": dsg, "steps": args.steps, "exit": p.returncode,
               "wall_s": round(wall, 1), "device": args.device}
        try:
            m = json.loads((out / "metrics.json").read_text())
            im = m["images"][0]
            rec.update({"status": im["status"], "seconds": im.get("seconds"), "nfe": im.get("nfe"),
                        "peak_memory_mb": im.get("peak_memory_mb"), "error": im.get("error")})
        except (OSError, ValueError, KeyError, IndexError):
            rec.update({"status": "no metrics", "error": (p.stderr.strip().splitlines() or [""])[-1][:200]})
        results.append(rec)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
        print(f"{model:18s} {method:10s} {task:15s} dsg={int(dsg)} exit={p.returncode} {rec.get('status')} "
              f"{rec.get('seconds')} s nfe={rec.get('nfe')} peak={rec.get('peak_memory_mb')} MB", flush=True)
    print(table(results))
    if args.markdown is not None:
        args.markdown.write_text(PAGE.format(table=table(results)))
    return 0 if all(r["exit"] == 0 and r.get("status") == "ok" for r in results) else 1


PAGE = """# The real-size tier: the registered real models at their exact architectures

Every registered real model built from its committed config (`src/restore_cli/data/architectures/`)
with **random weights** (the real weights cannot be downloaded where restore is developed), run
through `restore inpaint` on one image at its native resolution (256x256; Stable Diffusion 512x512)
for **2 sampler steps** with every learned method that runs on it, with and without DiffStateGrad,
each in a fresh process, on the CPU of the development machine (2 cores, shared with other jobs:
read the seconds as orders of magnitude). Inner loops are capped (`TIER_CAPS` in
`restore_cli/testing.py`: ReSample's optimisers 3 iterations, DAPS 3 Langevin and 2 ODE steps,
P2L 1 prompt step), so s/step is the cost of a sampler step, not of a default run. Peak memory is
the process's peak RSS (weights included). Produced by `python benchmarks/tools/bench_models.py --markdown
docs/realsize.md` (results in `benchmarks/realsize.json`); CI runs the `ffhq-256` DPS and
`ldm-ffhq-256` ReSample cells (`tests/test_realsize.py`), `pytest -m realsize` the rest.

{table}
"""


def table(results: list[dict]) -> str:
    rows = ["| model | method | task | DSG | s/image | s/step | NFE | peak MB | status |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        sec = r.get("seconds")
        per = f"{sec / r['steps']:.1f}" if isinstance(sec, (int, float)) else "-"
        rows.append(f"| {r['model']} | {r['method']} | {r['task']} | {'yes' if r['dsg'] else 'no'} | "
                    f"{f'{sec:.1f}' if isinstance(sec, (int, float)) else '-'} | {per} | {r.get('nfe', '-')} | "
                    f"{f'{mem:.0f}' if isinstance(mem := r.get('peak_memory_mb'), (int, float)) else '-'} | "
                    f"{r.get('status')}{' (' + str(r['error'])[:60] + ')' if r.get('error') else ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
