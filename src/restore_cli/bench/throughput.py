"""Throughput of every method: seconds per image per sampler step, NFE per second and peak memory.

For each model x method x batch size x dtype x DiffStateGrad x low-memory cell, this builds the
task's operator for a batch of images at the model's native resolution, runs the method for
``--steps`` sampler steps and times each step (the first is a warm-up and is not counted when
there are two or more).  Models are the registered ones: the bundled ``fmnist-ddpm-32`` and
``fmnist-ldm-32`` load as they are; the real models of ``restore_cli.models.testing.REAL_MODELS``
(``ffhq-256``, ``imagenet-256``, ``ldm-ffhq-256``, ``ldm-celebahq-256``, ``ddpm-celebahq-256``,
``sd-v1-5``) are built from their exact architectures with random weights
(``restore_cli.models.testing.save_random_model``, once, in ``--workdir``), as ``benchmarks/tools/bench_models.py``
does.  Inner loops are capped as in the real-size tier (``restore_cli.models.testing.TIER_CAPS``: DAPS 3
Langevin and 2 ODE steps, ReSample 3 optimiser iterations, P2L 1 prompt step), and ReSample runs its
hard data consistency at every step (``every=1``), so a "step" is one sampler step of each method's
own kind, not a 1/N-th of a default run.

Columns: s/image/step (wall seconds of a sampler step divided by the batch size), NFE/s (image
denoiser evaluations per second: batch x denoiser calls / seconds), peak MB (CUDA allocator peak on
a GPU; the process's peak resident memory on the CPU, weights included), and with ``--dsg-share``
the share of a step spent in DiffStateGrad (the state's SVD and the projections).

    restore bench throughput                                   # the CPU subset of docs/throughput.md
    restore bench throughput --device cuda --models ffhq-256 ldm-ffhq-256 sd-v1-5 \\
        --batch-sizes 1 4 8 16 --dtypes fp32 fp16 bf16 --low-memory both  # the full matrix, on a GPU

Results are appended to ``--results`` (JSON lines, by default in ``--workdir``; cells already there are skipped unless
``--fresh``), and the table of all the results in that file is printed at the end (``--markdown``
also writes it to a file).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

BUNDLED = ("fmnist-ddpm-32", "fmnist-ldm-32")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# one sampler step of each method's own kind (see the module docstring)
CAPS = {"daps": {"langevin_steps": 3, "ode_steps": 2}, "latent-daps": {"langevin_steps": 3, "ode_steps": 2}, "resample": {"latent_iters": 3, "pixel_iters": 3, "every": 1},
        "p2l": {"prompt_steps": 1}}


def build(name: str, workdir: Path) -> Path:
    """The random-weight folder of a real model (built once, in a child process so that its memory is returned)."""
    d = workdir / name
    if (d / ".complete").exists():
        return d
    code = ("import sys, shutil, pathlib; from restore_cli.models.config import load_registry; "
            "from restore_cli.models.testing import save_random_model; d = pathlib.Path(sys.argv[2]); "
            "shutil.rmtree(d, ignore_errors=True); save_random_model(load_registry().get(sys.argv[1]), d); "
            "(d / '.complete').write_text('ok')")
    subprocess.run([sys.executable, "-c", code, name, str(d)], check=True)
    return d


def methods_for(kind: str) -> list[str]:
    """The learned methods that run on a model kind (latent DPS under its latent name)."""
    from ..models.catalog import METHODS

    out = []
    for name, info in METHODS.items():
        if kind not in info.spaces or info.default_model == "analytic":
            continue
        if kind == "latent" and name in ("dps", "daps"):
            continue  # the same solvers as latent-dps and latent-daps
        out.append(name)
    return out


def test_image(size: int, channels: int) -> torch.Tensor:
    """A natural photo (scikit-image's astronaut) at ``size`` x ``size`` in [0, 1], or smooth noise without it."""
    try:
        from skimage import data

        img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    except ImportError:  # pragma: no cover
        g = torch.Generator().manual_seed(0)
        img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 4 * size, 4 * size, generator=g), 9, 1, 4)
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if channels == 1:
        img = img.mean(1, keepdim=True)
    return img.clamp(0, 1)


class DSGTimer:
    """Wall time spent in DiffStateGrad (the state's SVD and the projections), by patching its two entry points."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._saved = device, 0.0, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, fn):
        def timed(*a, **k):
            self._sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self._sync()
            self.seconds += time.perf_counter() - t0
            return out
        return timed

    def __enter__(self):
        from ..solvers import projection

        self._saved = (projection.DiffStateGrad.at, projection.StateProjector.project)
        projection.DiffStateGrad.at = self._wrap(self._saved[0])
        projection.StateProjector.project = self._wrap(self._saved[1])
        return self

    def __exit__(self, *exc):
        from ..solvers import projection

        projection.DiffStateGrad.at, projection.StateProjector.project = self._saved


@contextmanager
def nothing():
    yield None


def load(model: str, device: torch.device, dtype: torch.dtype, low_memory: bool, workdir: Path):
    """``(prior, resolution, channels)`` of a registered model (a real one with random weights)."""
    from ..models.config import load_registry, local_model
    from ..models.hub import load_prior
    from ..models.testing import REAL_MODELS

    reg = load_registry()
    spec = reg.get(model)
    res = spec.resolution or 256
    if model in REAL_MODELS:
        res = spec.resolution or (512 if "sd" in model else 256)
        spec = local_model(build(model, workdir))
    prior = load_prior(spec, device, dtype, allow_download=False, low_memory=low_memory)
    if low_memory and spec.kind == "pixel" and hasattr(prior, "low_memory"):
        prior.low_memory(True)  # hub.load_prior passes --low-memory to latent priors only
    return prior, res, spec.channels


NET_FORMATS = ("eager", "channels-last", "compile")


def apply_net_format(prior, fmt: str):
    """The denoiser network as measured: eager (as restore runs it), channels-last memory, or torch.compile'd
    (the first call compiles: it is the warm-up step, not timed)."""
    if fmt == "channels-last":
        prior.unet.to(memory_format=torch.channels_last)
    elif fmt == "compile":
        prior.unet = torch.compile(prior.unet)
    return prior


def run_cell(prior, res: int, channels: int, method: str, batch: int, dsg_on: bool, steps: int, task: str,
             device: torch.device, dsg_share: bool) -> dict:
    """Time ``steps`` sampler steps of one cell; returns its record."""
    from ..models.catalog import METHODS
    from ..profiling import measure
    from ..models.registry import build_operator
    from ..rng import make_generators
    from ..solvers import DiffStateGrad

    info = METHODS[method]
    cls = info.cls
    if dsg_on and not cls.gradient_guided:
        return {"status": "n/a"}
    gens = make_generators(0, batch)
    x = test_image(res, channels).expand(batch, -1, -1, -1).contiguous().to(device)
    op = build_operator(task, {}, tuple(x.shape[1:]), gens, 0.0).to(device)
    y = op(x, gens)
    hp = {info.steps_key: steps, **CAPS.get(method, {})}
    dsg = DiffStateGrad(0.99, cls.dsg_default_period({})) if dsg_on else None
    solver = cls(prior, op, dsg, **hp)
    stamps: list[tuple[float, int]] = []

    def tick(_info):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append((time.perf_counter(), prior.nfe))

    timer = DSGTimer(device) if dsg_share and dsg_on else None
    with measure(device) as usage, (timer or nothing()):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append((time.perf_counter(), prior.nfe))
        solver.run(y, make_generators(1, batch), callback=tick)
    timed = stamps[1:] if len(stamps) > 2 else stamps  # drop the warm-up step when there are others
    secs = timed[-1][0] - timed[0][0]
    nfe = timed[-1][1] - timed[0][1]
    n = len(timed) - 1
    rec = {"status": "ok", "steps_timed": n, "s_per_step": secs / n, "s_per_image_step": secs / n / batch,
           "nfe_per_s": batch * nfe / secs if secs > 0 else None, "peak_mb": usage.peak_mb,
           "run_s": usage.seconds}
    if timer is not None:
        rec["dsg_share"] = timer.seconds / usage.seconds  # of the whole run (all its steps, warm-up included)
    return rec


def table(results: list[dict]) -> str:
    rows = ["| method | model | batch | dtype | DSG | low-memory | network | s/image/step | NFE/s | peak MB | DSG share |",
            "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r.get("status") == "n/a":
            continue
        ok = r.get("status") == "ok"
        f = lambda k, fmt: (fmt.format(r[k]) if ok and isinstance(r.get(k), (int, float)) else "-")  # noqa: E731
        share = f"{100 * r['dsg_share']:.1f} %" if isinstance(r.get("dsg_share"), float) else "-"
        status = "" if ok else f" ({r.get('status')}: {str(r.get('error', ''))[:50]})"
        rows.append(f"| {r['method']} | {r['model']} | {r['batch']} | {r['dtype']} | {'yes' if r['dsg'] else 'no'} | "
                    f"{'yes' if r['low_memory'] else 'no'} | {r.get('net', 'eager')} | {f('s_per_image_step', '{:.4g}')}{status} | "
                    f"{f('nfe_per_s', '{:.3g}')} | {f('peak_mb', '{:.0f}')} | {share} |")
    return "\n".join(rows)


def batching_ratios(results: list[dict]) -> str:
    """s/image at the largest batch over s/image at batch 1, per model x method x dtype x DSG x low-memory."""
    groups: dict[tuple, dict[int, float]] = {}
    for r in results:
        if r.get("status") == "ok":
            key = (r["method"], r["model"], r["dtype"], r["dsg"], r["low_memory"], r.get("net", "eager"), r["device"])
            groups.setdefault(key, {})[r["batch"]] = r["s_per_image_step"]
    rows = ["| method | model | dtype | DSG | low-memory | network | batch B | s/image at B / at 1 |",
            "| --- | --- | --- | --- | --- | --- | ---: | ---: |"]
    for (method, model, dt, dsg, lm, net, _), by in groups.items():
        if 1 in by and len(by) > 1:
            b = max(by)
            rows.append(f"| {method} | {model} | {dt} | {'yes' if dsg else 'no'} | {'yes' if lm else 'no'} | {net} | {b} | "
                        f"{by[b] / by[1]:.2f} |")
    return "\n".join(rows)


def cell_key(r: dict) -> tuple:
    return (*(r[k] for k in ("model", "method", "batch", "dtype", "dsg", "low_memory", "device", "steps", "task")),
            r.get("net", "eager"))


def main(argv=None, prog: str | None = None) -> int:
    """``restore bench throughput [OPTIONS]`` (``prog``: the name its usage line shows)."""
    from ..models.catalog import METHODS
    from ..models.config import load_registry
    from ..models.testing import REAL_MODELS

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--models", nargs="+", default=list(BUNDLED),
                    help=f"registered models (bundled, or {', '.join(REAL_MODELS)})")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every learned method that runs on the model")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    ap.add_argument("--steps", type=int, default=3, help="sampler steps per cell (the first is a warm-up when >= 2)")
    ap.add_argument("--dsg", dest="dsg", action="store_const", const=[True], help="only with DiffStateGrad")
    ap.add_argument("--no-dsg", dest="dsg", action="store_const", const=[False], help="only without DiffStateGrad")
    ap.add_argument("--low-memory", nargs="?", const="yes", default="no", choices=["no", "yes", "both"],
                    help="gradient checkpointing (--low-memory): no (default), yes, or both")
    ap.add_argument("--net-format", nargs="+", default=["eager"], choices=NET_FORMATS,
                    help="the network as run: eager (restore's), channels-last, compile (torch.compile)")
    ap.add_argument("--dsg-share", action="store_true", help="also time DiffStateGrad's share of the run")
    ap.add_argument("--task", default="inpaint", help="inpaint (box), deblur, superres, ... (their defaults)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "restore-realsize")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON lines of the cells (default: WORKDIR/throughput.jsonl)")
    ap.add_argument("--fresh", action="store_true", help="rerun cells already in --results")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    a.results = a.results or a.workdir / "throughput.jsonl"
    reg = load_registry()
    dsgs = a.dsg or [False, True]
    lows = {"no": [False], "yes": [True], "both": [False, True]}[a.low_memory]
    old = [json.loads(line) for line in a.results.read_text().splitlines() if line.strip()] if a.results.exists() else []
    done = set() if a.fresh else {cell_key(r) for r in old}
    new: list[dict] = []
    a.workdir.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), torch {torch.__version__}, {a.steps} steps per cell, task {a.task}", flush=True)
    for model in a.models:
        kind = reg.get(model).kind
        methods = [m for m in (a.methods or methods_for(kind)) if kind in METHODS[m].spaces and a.task in METHODS[m].tasks]
        for dt in a.dtypes:
            if dt == "fp16" and device.type == "cpu":
                print("fp16 needs a GPU (restore refuses it on the CPU): skipped", flush=True)
                continue
            for lm, fmt in itertools.product(lows, a.net_format):
                prior = None
                for method, batch, dsg in itertools.product(methods, a.batch_sizes, dsgs):
                    if dsg and not METHODS[method].cls.gradient_guided:
                        continue
                    rec = {"model": model, "method": method, "batch": batch, "dtype": dt, "dsg": dsg, "low_memory": lm,
                           "device": str(device), "steps": a.steps, "task": a.task, "net": fmt}
                    if cell_key(rec) in done:
                        continue
                    try:
                        if prior is None:
                            prior, res, ch = load(model, device, DTYPES[dt], lm, a.workdir)
                            apply_net_format(prior, fmt)
                        rec.update(run_cell(prior, res, ch, method, batch, dsg, a.steps, a.task, device, a.dsg_share))
                    except torch.cuda.OutOfMemoryError as e:
                        rec.update({"status": "OOM", "error": str(e).splitlines()[0][:200]})
                    except Exception as e:  # noqa: BLE001 - one failed cell never stops the table
                        rec.update({"status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:200]})
                    finally:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    new.append(rec)
                    a.results.parent.mkdir(parents=True, exist_ok=True)
                    with a.results.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    print(table([rec]).splitlines()[-1], flush=True)
                del prior
                gc.collect()
    fresh = {cell_key(n) for n in new}
    results = [r for r in old if cell_key(r) not in fresh] + new
    text = (table(results) + "\n\nBatching: s/image at the largest batch size over s/image at batch 1\n\n"
            + batching_ratios(results))
    print()
    print(text)
    if a.markdown is not None:
        a.markdown.write_text(text + "\n")
    return 0 if all(r.get("status") in ("ok", "n/a") for r in new) else 1


if __name__ == "__main__":
    sys.exit(main(prog="restore bench throughput"))
