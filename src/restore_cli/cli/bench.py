"""``restore bench SUITE``: run a suite, write results.json and results.md, and gate on a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .console import BenchProgress, err, out, quiet_libraries, quiet_warnings, usage_error


def bench_cmd(
    suite: Annotated[Path, typer.Argument(help="Suite file (TOML): images, seeds, grids of tasks x methods x models.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for results.json and results.md (default: bench/<suite name>).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A previous results.json: exit 1 with a table of what regressed.")] = None,
    tolerance: Annotated[list[str], typer.Option("--tolerance", help="psnr=0.5, ssim=0.02, lpips=0.02, failure_rate=0.1 (repeatable; a bare number is PSNR dB).")] = [],
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    rerun: Annotated[bool, typer.Option("--rerun", help="Run every cell again (default: keep the finished cells of results.json).")] = False,
    only: Annotated[list[str], typer.Option("--only", help=escape("Run only cells whose label contains this text (repeatable), e.g. 'inpaint[mask=box]' or 'fmnist-ddpm-32'."))] = [],
    images: Annotated[Optional[Path], typer.Option("--images", help=escape("A folder of images instead of the suite's (a paper suite: the paper's test images, see its [images])."))] = None,
    models_file: Annotated[Optional[Path], typer.Option("--models-file", help="Extra models.toml entries instead of the suite's.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Every cell's steps (a quick check of a suite; the cells differ from the suite's own).")] = None,
    kernel_model: Annotated[Optional[Path], typer.Option("--kernel-model", help="BKSE's GOPRO_wVAE.pth for the cells with the non-linear blur (skipped without it).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="KEY=VALUE on every cell whose method has KEY (repeatable; a quick check, as --steps).")] = [],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and regressions.")] = False,
):
    """Benchmark: run a suite, write results.json and a Markdown table; optionally gate on a baseline.

    A paper suite (benchmarks/papers/) also prints the paper's published numbers beside ours, with a verdict
    per cell and metric (within the paper's std, better or worse), and adds them to results.md.

    Example: [bold]restore bench benchmarks/regression.toml --baseline benchmarks/regression.json[/bold]
    """
    from rich.markup import escape

    from ..bench.results import compare, load_results, parse_tolerances
    from ..bench.runner import run_suite
    from ..bench.suite import SuiteError, load_suite
    from ..errors import UsageError
    from ..models.registry import resolve_device

    quiet_warnings()
    try:
        tol = parse_tolerances(tolerance)
        if images is not None and not images.is_dir():
            raise UsageError(f"--images {images}: not a folder")
        if steps is not None and steps < 1:
            raise UsageError("--steps must be >= 1")
        if kernel_model is not None and not kernel_model.is_file():
            raise UsageError(f"--kernel-model {kernel_model}: no such file")
        plan = load_suite(suite, images=images, models_file=models_file, steps=steps, kernel_model=kernel_model,
                          overrides=set_)
        dev = resolve_device(device)
        base = None if baseline is None else load_results(baseline)
    except (SuiteError, UsageError) as e:
        raise typer.Exit(usage_error(str(e)))
    quiet_libraries()
    out_dir = output or Path("bench") / plan.name
    from ..runs.distributed import current

    shard = current(cpu=dev.type == "cpu")  # under a launcher: this process's share of the cells
    dev = shard.place(dev)
    with BenchProgress(quiet or not shard.main, len(plan.cells)) as prog:
        data = run_suite(plan, out_dir, dev, rerun=rerun, progress=prog.event, only=only, shard=shard)
    if not shard.main:  # rank 0 reports the merged results and gates them
        raise typer.Exit(0)
    cells = data["cells"].values()
    failed = [c for c in cells if c["status"] == "failed"]
    for c in failed:
        err.print(f"[red]failed:[/red] {escape(c['label'])}: {escape(c['error'])}", highlight=False, soft_wrap=True)
    if not quiet:
        out.print(f"{sum(c['status'] == 'ok' for c in cells)} cells ok, {sum(c['status'] == 'skipped' for c in cells)} "
                  f"skipped, {len(failed)} failed; results: {out_dir / 'results.json'}, table: {out_dir / 'results.md'}",
                  highlight=False)
    code = 1 if failed else 0
    if data.get("paper") and not quiet:
        t = Table(title=f"against {data['paper'].get('paper', '')} {data['paper'].get('table', '')}")
        for col in ("cell", "metric", "ours", "paper", "verdict"):
            t.add_column(col)
        colour = {"better": "green", "within": "cyan", "worse": "red"}
        for r in data["paper"]["comparison"]:
            ours = "-" if r["ours"] is None else f"{r['ours']:.3f}"
            paper = f"{r['paper'][0]}" + (f" ({r['paper'][1]})" if len(r["paper"]) > 1 else "")
            v = r["verdict"]
            t.add_row(escape(r["cell"]), r["metric"], ours, paper, f"[{colour[v]}]{v}[/{colour[v]}]" if v in colour else v)
        out.print(t)
    if base is not None:
        worse = compare(data, base, tol)
        if worse:
            t = Table(title=f"regressions against {baseline}")
            for col in ("cell", "metric", "baseline", "now", "tolerance"):
                t.add_column(col)
            f = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
            for w in worse:
                t.add_row(escape(w["cell"]), w["metric"], f(w["baseline"]), f(w["now"]), f(w["limit"]))
            Console(stderr=True, width=200).print(t)
            code = 1
        elif not quiet:
            out.print(f"no regression against {baseline} (tolerances: {say_tolerances(tol)})", highlight=False)
    raise typer.Exit(code)


def say_tolerances(tol: dict[str, float]) -> str:
    """Tolerances as a person writes them: ``psnr 0.5 dB, ssim 0.02, lpips 0.02, failure rate 0.1``."""
    return ", ".join(f"{k.replace('_', ' ')} {v:g}{' dB' if k == 'psnr' else ''}" for k, v in tol.items())
