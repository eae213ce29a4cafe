"""``restore bench SUITE``: run a suite, write results.json, results.md and the report (report.md and
figures/), and gate on a baseline; ``restore bench report RESULTS.json``: redraw the report from results.

``restore bench`` is one command with a positional SUITE, so ``report`` is not a Click subcommand of it:
the console script (``cli.app.main``) hands ``restore bench report ...`` to :data:`report_app`."""

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
    """Benchmark: run a suite, write results.json, a Markdown table and a report with figures; optionally gate on a baseline.

    Beside results.json: report.md and figures/ (restoration grids, step-size robustness, PSNR
    distributions and failure rates, cost; with --baseline, what moved). Redraw them from an existing
    results file without running anything: [bold]restore bench report RESULTS.json[/bold]

    Seconds per step, NFE per second and peak memory of every method on a model, with and without
    DiffStateGrad: [bold]restore bench throughput --help[/bold]

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
        base = None if baseline is None else load_results(baseline, "baseline", need_cells=False)
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
    if data.get("fid") and not data["fid"]["available"]:  # the suite asks for FID, the network is not installed
        err.print(f"[yellow]note:[/yellow] FID and KID were not computed: {escape(data['fid']['source'])}",
                  highlight=False, soft_wrap=True)
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
    _report_after_run(data, out_dir, base, baseline, tol, quiet)
    raise typer.Exit(code)


def _report_after_run(data: dict, out_dir: Path, base: dict | None, baseline: Path | None, tol: dict,
                      quiet: bool) -> None:
    """report.md and figures/ beside results.json; a failure to draw is said, and changes no exit code."""
    from ..bench.report import write_report

    try:
        rep = write_report(data, out_dir, base=out_dir, baseline=base, tol=tol,
                           baseline_name=str(baseline) if baseline else "baseline",
                           sources=[str(out_dir / "results.json")] + ([f"--baseline {baseline}"] if baseline else []))
    except Exception as e:  # noqa: BLE001 - the results are written; the figures are a view of them
        err.print(f"[yellow]report not drawn:[/yellow] {type(e).__name__}: {escape(str(e))}  (redraw it: "
                  f"restore bench report {escape(str(out_dir / 'results.json'))})", highlight=False, soft_wrap=True)
        return
    if not quiet:
        out.print(f"report: {rep.markdown} ({len(rep.figures)} figures in {rep.markdown.parent / 'figures'})",
                  highlight=False)
        line = rep.left_out_line()
        if line:
            out.print(escape(line), highlight=False, soft_wrap=True)


def say_tolerances(tol: dict[str, float]) -> str:
    """Tolerances as a person writes them: ``psnr 0.5 dB, ssim 0.02, lpips 0.02, failure rate 0.1``."""
    return ", ".join(f"{k.replace('_', ' ')} {v:g}{' dB' if k == 'psnr' else ''}" for k, v in tol.items())


report_app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@report_app.command()
def report_cmd(
    results: Annotated[list[Path], typer.Argument(help="results.json of a `restore bench` run (several: shards of one suite, merged cell by cell).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the report (default: the first results file's folder).")] = None,
    name: Annotated[str, typer.Option("--name", help="The page's name: NAME.md, figures under figures/NAME/ (default: report.md, figures/); merged shards go to NAME.json.")] = "report",
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A previous results.json: also draw what moved against it.")] = None,
    tolerance: Annotated[list[str], typer.Option("--tolerance", help="As restore bench's: psnr=0.5, ssim=0.02, lpips=0.02, failure_rate=0.1.")] = [],
    grids_from: Annotated[Optional[Path], typer.Option("--grids-from", help="Draw the restoration grids from another run's results.json (with saved images), e.g. a quick regression run.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
):
    """Redraw a benchmark's report (report.md, figures/ with a CSV of each figure's numbers) from results.json; runs nothing.

    Several results files (shards of one suite run side by side with --only) are merged cell by cell
    (a finished cell over a failed one, the method's current revision over an outdated one, then the
    newer) into NAME.json beside the report; a results file given is never rewritten.

    Example: [bold]restore bench report bench/fmnist/results.json[/bold]; the committed page:
    [bold]restore bench report docs/benchmarks.json -o docs --name benchmarks --grids-from bench/regression/results.json[/bold]
    """
    from ..bench.report import ReportError, merged_path, write_report
    from ..bench.results import anchor_samples, load_results, merge, parse_tolerances
    from ..bench.suite import SuiteError

    try:
        tol = parse_tolerances(tolerance)
        if not name or any(ch in name for ch in "/\\") or name.startswith("."):
            raise ReportError(f"--name {name!r}: a plain file name without a folder")
        if name == "results":
            raise ReportError("--name results would write over restore bench's own results.md: choose another name")
        datas = [load_results(p) for p in results]
        base = None if baseline is None else load_results(baseline, "baseline")
        grids = None
        if grids_from is not None:
            g = load_results(grids_from)
            grids = (g, grids_from.parent, f"{(g.get('suite') or {}).get('name', '?')} run {grids_from}")
        out_dir = output or results[0].parent
        merged = None
        if len(datas) > 1:
            merged = merged_path(out_dir, name)
            if any(merged.resolve() == p.resolve() for p in results):
                raise ReportError(f"{merged} is one of the results files: merge into another folder or --name")
            if merged.exists() and "merged_from" not in _json_or_none(merged):  # not an earlier merge of ours
                raise ReportError(f"{merged} exists and was not written by restore bench report: merge into another "
                                  "folder (-o) or --name (nothing is overwritten)")
    except SuiteError as e:
        raise typer.Exit(usage_error(str(e)))
    sources = [str(p) for p in results] + ([f"-o {output}"] if output else []) \
        + ([f"--name {name}"] if name != "report" else []) + ([f"--baseline {baseline}"] if baseline else []) \
        + ([f"--grids-from {grids_from}"] if grids_from else [])
    if len(datas) > 1:
        datas = [anchor_samples(d, p.parent) for d, p in zip(datas, results)]
        data = {**merge(datas), "merged_from": [str(p) for p in results]}
    else:
        data = datas[0]
    try:
        if merged is not None:
            from ..images.write import write_json_atomic

            out_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(merged, data)
        rep = write_report(data, out_dir, base=results[0].parent, name=name, baseline=base, tol=tol,
                           baseline_name=str(baseline) if baseline else "baseline", grids=grids, sources=sources)
    except OSError as e:
        raise typer.Exit(usage_error(f"cannot write the report into {out_dir}: {e.strerror or e}"))
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # a hand-edited or foreign results file
        what = f"missing entry {e}" if isinstance(e, KeyError) else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise typer.Exit(usage_error(f"cannot draw a report from {', '.join(map(str, results))}"
                                     f"{' and ' + str(baseline) if baseline else ''}: a cell is not as restore bench "
                                     f"writes it ({what})"))
    if not quiet:
        out.print(f"report: {rep.markdown} ({len(rep.figures)} figures"
                  + (f"; merged results: {merged}" if merged else "") + ")", highlight=False)
    line = rep.left_out_line()
    if line and not quiet:
        out.print(escape(line), highlight=False, soft_wrap=True)
    raise typer.Exit(0)


def _json_or_none(path: Path) -> dict:
    """A JSON file's object, or {} when it is not one (never raises)."""
    import json

    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
