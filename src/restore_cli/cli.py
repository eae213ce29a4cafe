"""The ``restore`` command: one subcommand per task, shared options declared once.

Every domain error becomes one line on stderr and an exit code: 0 all done,
1 a runtime failure (an image failed, the model is unavailable, out of
memory), 2 a usage error (found before any download or model load).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
import typer.core
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from . import __version__
from .catalog import DEFAULT_NOISE_SIGMA, METHODS
from .console import (BenchProgress, RunProgress, err, out, print_summary, quiet_hub, quiet_libraries, rich_tqdm,
                      usage_error)

# Typer's Rich help shows a value type for flags too ("--compare <bool>"), which invites `--compare true`,
# and Python's types for values ("<list[Path]>"): a flag shows none, a value a plain metavar (TEXT, INT, PATH...).
_PLAIN_TYPES = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "file": "PATH", "directory": "PATH"}


def _plain_type(self, ctx):
    if getattr(self, "is_flag", False):
        return None
    if self.metavar is not None and not isinstance(self, typer.core.TyperArgument):  # an argument's is its name
        return self.metavar
    label = self.display_type(ctx).strip("<>")
    many = label.startswith("list[")  # an argument: several values; an option: repeatable
    label = label[5:-1] if many else label
    name = _PLAIN_TYPES.get(label.lower(), label.upper())
    return f"{name}..." if many and isinstance(self, typer.core.TyperArgument) else name


for _cls in (typer.core.TyperOption, typer.core.TyperArgument):
    if hasattr(_cls, "display_type_rich"):
        _cls.display_type_rich = _plain_type

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Restore images by solving inverse problems with diffusion-model priors.\n\n"
                       "Example (seconds, no download): "
                       "[bold]restore superres --method posterior-mean --model gaussian photo.png[/bold]")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect and download models (models.toml).")
app.add_typer(models_app, name="models")


def _version(value: bool):
    if value:
        out.print(f"restore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Show the version and exit.")] = False):
    pass


# -- the options every task shares, declared once -----------------------------------------
P = inspect.Parameter
COMMON = [
    P("inputs", P.KEYWORD_ONLY, annotation=Annotated[list[Path], typer.Argument(
        metavar="IMAGES", help="Image files and/or folders of images.", show_default=False)]),
    P("method", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--method", help="Solver, see `restore methods` (default: dps; posterior-mean on a Gaussian --model).",
        rich_help_panel="Method")]),
    P("model", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--model", help="Name in models.toml, or a diffusers folder (default: the method's).", rich_help_panel="Method")]),
    P("models_file", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], typer.Option(
        "--models-file", help="More models.toml entries.", rich_help_panel="Method")]),
    P("prompt", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--prompt", help="Prompt of a text-conditioned model.", rich_help_panel="Method")]),
    P("measured", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--measured", help="Inputs are already degraded: no metrics.")]),
    P("diffstategrad", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--diffstategrad/--no-diffstategrad", help="Project the gradients (on/off).", show_default=False,
        rich_help_panel="DiffStateGrad")]),
    P("var_cutoff", P.KEYWORD_ONLY, default=0.99, annotation=Annotated[float, typer.Option(
        "--var-cutoff", help="Variance kept, tau.", rich_help_panel="DiffStateGrad")]),
    P("period", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[int], typer.Option(
        "--period", help="Every F steps (default: method's).", rich_help_panel="DiffStateGrad")]),
    P("rank_mode", P.KEYWORD_ONLY, default="channels", annotation=Annotated[str, typer.Option(
        "--rank-mode", help="channels, paper, reference.", rich_help_panel="DiffStateGrad")]),
    P("device", P.KEYWORD_ONLY, default="auto", annotation=Annotated[str, typer.Option(
        "--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Device")]),
    P("dtype", P.KEYWORD_ONLY, default="fp32", annotation=Annotated[str, typer.Option(
        "--dtype", help="fp32, fp16 or bf16 (cuda).", rich_help_panel="Device")]),
    P("steps", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[int], typer.Option(
        "--steps", help="Sampling steps (default: the method's).", rich_help_panel="Method")]),
    P("seed", P.KEYWORD_ONLY, default=0, annotation=Annotated[int, typer.Option("--seed", help="Random seed.",
                                                                              rich_help_panel="Method")]),
    P("noise_sigma", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[float], typer.Option(
        "--noise-sigma", show_default=False, help=escape(f"Noise std on [-1, 1] images (default {DEFAULT_NOISE_SIGMA:g}; "
        "0 for jpeg and --then jpeg:Q, noiseless as PiGDM's)."))]),
    P("batch_size", P.KEYWORD_ONLY, default=1, annotation=Annotated[int, typer.Option(
        "--batch-size", help="Images solved together.", rich_help_panel="Device")]),
    P("samples", P.KEYWORD_ONLY, default=1, annotation=Annotated[int, typer.Option(
        "--samples", help="Samples per image: also their mean and std.", rich_help_panel="Method")]),
    P("output", P.KEYWORD_ONLY, default=Path("restored"), annotation=Annotated[Path, typer.Option(
        "--output", "-o", help="Output folder.", rich_help_panel="Output")]),
    P("sets", P.KEYWORD_ONLY, default=[], annotation=Annotated[list[str], typer.Option(
        "--set", help="A hyperparameter (repeatable).", metavar="KEY=VALUE", rich_help_panel="Method")]),
    P("fit", P.KEYWORD_ONLY, default="resize", annotation=Annotated[str, typer.Option(
        "--fit", help="resize, pad or none (to the model).", rich_help_panel="Output")]),
    P("compare", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--compare", help="Also write a labelled figure.", rich_help_panel="Output")]),
    P("overwrite", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--overwrite", help="Redo images whose outputs exist.", rich_help_panel="Output")]),
    P("low_memory", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--low-memory", help="Less memory, slower (checkpointing).", rich_help_panel="Device")]),
    P("lpips_net", P.KEYWORD_ONLY, default="alex", annotation=Annotated[str, typer.Option(
        "--lpips-net", help="LPIPS backbone: alex or vgg.", rich_help_panel="Output")]),
    P("quiet", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--quiet/--verbose", "-q", help="Only errors.", show_default=False, rich_help_panel="Output")]),
]
COMMON_NAMES = [p.name for p in COMMON]


def task_command(name: str, example: str):
    """Register a task: its function takes the task options and returns them as a dict."""

    def deco(fn: Callable[..., dict]):
        task_params = list(inspect.signature(fn, eval_str=True).parameters.values())

        def cmd(**kwargs):
            common = {k: kwargs.pop(k) for k in COMMON_NAMES}
            task_opts = fn(**kwargs)
            raise typer.Exit(_run(name, common, task_opts))

        cmd.__signature__ = inspect.Signature(COMMON + [p.replace(kind=P.KEYWORD_ONLY) for p in task_params])
        cmd.__doc__ = f"{inspect.getdoc(fn)}\n\nExample: [bold]{example}[/bold]"
        app.command(name)(cmd)
        return fn

    return deco


THEN = Annotated[Optional[str], typer.Option(
    "--then", help="Then JPEG-compress: jpeg:Q (e.g. jpeg:10).")]


def _then(opts: dict, then: str | None) -> dict:
    """The task options with ``then`` only when given (so runs without it record what they always did)."""
    return opts if then is None else {**opts, "then": then}


@task_command("inpaint", "restore inpaint --method daps --diffstategrad --mask freeform photo.png")
def inpaint(mask: Annotated[str, typer.Option("--mask", help="box, random, freeform, or PATH (white = missing).")] = "box",
            then: THEN = None):
    """Fill in missing pixels."""
    return _then({"mask": mask}, then)


@task_command("deblur", "restore deblur --kernel motion --method dps photos/")
def deblur(kernel: Annotated[str, typer.Option("--kernel", help="gaussian, motion, uniform, nonlinear, or PATH "
                                                "(.npy or image).")] = "gaussian",
           kernel_size: Annotated[int, typer.Option("--kernel-size", help="Kernel side (gaussian, motion).")] = 61,
           border: Annotated[str, typer.Option("--border", help="reflect, circular or zeros.")] = "reflect",
           kernel_model: Annotated[Optional[Path], typer.Option("--kernel-model", help="BKSE's GOPRO_wVAE.pth "
                                                              "(--kernel nonlinear).")] = None,
           then: THEN = None):
    """Remove blur."""
    opts = {"kernel": kernel, "kernel_size": kernel_size, "border": border}
    if kernel_model is not None:
        opts["kernel_model"] = str(kernel_model)
    return _then(opts, then)


@task_command("superres", "restore superres --scale 4 --filter bicubic face.png")
def superres(scale: Annotated[int, typer.Option("--scale", help="Integer factor.")] = 4,
             filter: Annotated[str, typer.Option("--filter", help="bicubic or avgpool.")] = "bicubic",  # noqa: A002
             then: THEN = None):
    """Increase resolution by an integer factor."""
    return _then({"scale": scale, "filter": filter}, then)


@task_command("phase-retrieval", "restore phase-retrieval --method daps --diffstategrad --restarts 4 face.png")
def phase_retrieval(restarts: Annotated[Optional[int], typer.Option("--restarts", help="Runs per image (default: 4).")] = None,
                    restart_rule: Annotated[str, typer.Option("--restart-rule", help="Best run: residual or oracle (README).")] = "residual",
                    oversample: Annotated[float, typer.Option("--oversample", help="Oversampling of the Fourier transform.")] = 2.0):
    """Recover an image from the magnitude of its Fourier transform."""
    return {"oversample": oversample, "_restarts": restarts, "_restart_rule": restart_rule}


@task_command("hdr", "restore hdr --method pigdm photo.png")
def hdr(hdr_scale: Annotated[float, typer.Option("--hdr-scale", help="Scale before clipping.")] = 2.0,
        then: THEN = None):
    """Undo the clipping of an over-exposed image (scale, then clip)."""
    return _then({"hdr_scale": hdr_scale}, then)


@task_command("jpeg", "restore jpeg --quality 10 --method pigdm --noise-sigma 0 photo.png")
def jpeg(quality: Annotated[Optional[int], typer.Option("--quality", help="Quality 2-100 (default: 10; "
                                                        "--measured: the file's).")] = None,
         rounding: Annotated[str, typer.Option("--rounding", help="ste or cubic (README).")] = "ste"):
    """Undo JPEG compression (a differentiable JPEG as the forward model); --measured: restore real .jpg files."""
    return {**({} if quality is None else {"quality": quality}), "rounding": rounding}


def quiet_warnings() -> None:
    """Python warnings that are not for the user's eyes: tqdm's "rich is experimental" (a TqdmExperimentalWarning
    about the download bars), numpy's "invalid value encountered" (a NaN is refused when read, or recorded in
    words), and the posterior mean's conjugate-gradient note (said per image as a warning line)."""
    import warnings

    warnings.filterwarnings("ignore", message="posterior-mean: conjugate")
    warnings.filterwarnings("ignore", message="rich is experimental")
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message="(invalid value|overflow|divide by zero) encountered")


def _run(task: str, common: dict, task_opts: dict) -> int:
    import os

    from .catalog import UsageError
    from .checks import RunConfig, check

    quiet = common.pop("quiet")
    restarts = task_opts.pop("_restarts", None)
    rule = task_opts.pop("_restart_rule", "residual")
    # under a launcher (accelerate launch, torchrun) only the first process talks; the others are quiet
    main = os.environ.get("RANK", "0") == "0"
    usage = usage_error if main else (lambda msg: 2)
    cfg = RunConfig(task=task, task_opts=task_opts, restarts=restarts, restart_rule=rule, argv=sys.argv[:], **common)
    try:
        check(cfg)  # names, ranges and paths, before torch is imported: a usage error comes at once
    except UsageError as e:
        return usage(str(e))
    from .hub import ModelUnavailable
    from .run import execute, resolve

    quiet_warnings()
    try:
        plan = resolve(cfg)  # imports torch (the solvers' --set names), never diffusers: a usage error in a second
    except UsageError as e:
        return usage(str(e))
    if task == "deblur" and task_opts.get("kernel") == "nonlinear":  # a bad --kernel-model: one line, before the model
        from .ops.nonlinear_blur import KernelModelError, load_kernel_wizard

        try:
            load_kernel_wizard(Path(task_opts["kernel_model"]))
        except KernelModelError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            return 1
    # the plan's warnings, once the output folder has taken the run (a refusal there is then the only line)
    unsaid = list(plan.warnings) if main else []

    def warn(message: str) -> None:
        if main:
            err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    try:
        with RunProgress(quiet or not main) as prog:
            def events(kind, info):
                while unsaid:
                    warn(unsaid.pop(0))
                if kind == "model":
                    quiet_libraries()  # imports diffusers and transformers (seconds), now that the model loads
                if kind == "warning":
                    warn(info["message"])
                else:
                    prog.event(kind, info)

            report = execute(plan, events, tqdm_class=rich_tqdm() if main else None)
    except UsageError as e:
        return usage(str(e))
    except ModelUnavailable as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: finished images are kept; rerun the same command to continue")
        return 130
    if main:
        print_summary(report, quiet, prog.reported)  # the failures not said yet
    return 1 if report.failed else 0


@app.command("methods")
def methods_cmd():
    """List the methods: model space, tasks, DiffStateGrad support, default steps and NFE.

    Example: [bold]restore methods[/bold]
    """
    rows = [[m.name, "/".join(m.spaces), ", ".join(m.tasks), "yes" if m.cls.gradient_guided else "no",
             str(m.cls.defaults[m.steps_key]), m.nfe, m.summary] for m in METHODS.values()]
    print_rows("methods", ["method", "space", "tasks", "DiffStateGrad", "default steps", "NFE / image", "paper"], rows)


def print_rows(title: str, columns: list[str], rows: list[list]) -> None:
    """A listing whose first column holds the names a user types, never cut.

    Not a terminal (a pipe, a file): tab-separated rows under a header line. A terminal: a table whose
    short columns keep their width and long ones fold; where even that does not fit, one block per row.
    """
    if not out.is_terminal:
        for row in [columns, *rows]:
            print("\t".join(" ".join(str(c).split()) for c in row))  # str(Text) is its plain text
        return
    widths = [max(len(str(c)) for c in [col, *(r[i] for r in rows)]) for i, col in enumerate(columns)]
    short = [i == 0 or w <= 14 for i, w in enumerate(widths)]  # the names: never folded
    if sum(w if s else 12 for w, s in zip(widths, short)) + 3 * len(columns) + 1 > out.width:  # + padding, rules
        for row in rows:
            pairs = [Text.assemble(f"{col}: ", c) for col, c in zip(columns[1:], row[1:]) if str(c)]
            out.print(Text(str(row[0]), style="bold"), Padding(Text("; ").join(pairs), (0, 0, 0, 4)))
        return
    t = Table(title=title, box=box.SIMPLE_HEAD)
    for col, w, s in zip(columns, widths, short):
        t.add_column(col, no_wrap=s, min_width=w if s else 12, overflow="fold")
    for row in rows:
        t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    out.print(t)


@app.command("bench")
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

    from .bench import SuiteError, load_suite, run_suite
    from .bench_results import compare, load_results, parse_tolerances
    from .registry import UsageError, resolve_device

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
    from .distributed import current

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


@models_app.command("list")
def models_list(models_file: Annotated[Optional[Path], typer.Option("--models-file")] = None):
    """Models and whether each is usable now without a network.

    Example: [bold]restore models list[/bold]
    """
    from .config import ConfigError, load_registry
    from .hub import availability

    try:
        reg = load_registry(models_file)
    except ConfigError as e:
        raise typer.Exit(usage_error(str(e)))
    rows = []
    for spec in reg.models.values():
        ok, why = availability(spec)
        dflt = ", ".join(k for k, v in reg.defaults.items() if v == spec.name)
        size = str(spec.resolution) if spec.resolution else ("any" if spec.source == "analytic" else "-")
        rows.append([spec.name, spec.kind, size, str(spec.channels), spec.repo_id or spec.source,
                     Text("yes", "green") if ok else Text("no", "red"), why, dflt])
    print_rows("models", ["name", "kind", "resolution", "channels", "source", "offline now", "where", "default for"], rows)


@models_app.command("info")
def models_info(name: str, models_file: Annotated[Optional[Path], typer.Option("--models-file")] = None):
    """Everything the registry knows about one model.

    Example: [bold]restore models info ddpm-celebahq-256[/bold]
    """
    import json

    from .config import ConfigError, load_registry
    from .hub import availability

    try:
        spec = load_registry(models_file).get(name)
    except ConfigError as e:
        raise typer.Exit(usage_error(str(e)))
    ok, why = availability(spec)
    out.print_json(json.dumps({**spec.record(), "offline_now": ok, "where": why}))


@models_app.command("download")
def models_download(name: str, models_file: Annotated[Optional[Path], typer.Option("--models-file")] = None,
                    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN or your login).")] = None):
    """Download a model's files into the Hub cache (revision-pinned; only what it needs).

    Example: [bold]restore models download ldm-celebahq-256[/bold]
    """
    from .config import ConfigError, load_registry
    from .hub import ModelUnavailable, download

    try:
        spec = load_registry(models_file).get(name)
    except ConfigError as e:
        raise typer.Exit(usage_error(str(e)))
    quiet_hub()
    quiet_warnings()
    try:
        path = download(spec, token=token, tqdm_class=rich_tqdm())
    except ModelUnavailable as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"{spec.name}: {path}", highlight=False)


@models_app.command("convert")
def models_convert(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="adm (a guided-diffusion .pt) or ldm (a CompVis LDM model.ckpt).")],
    checkpoint: Annotated[Path, typer.Argument(help="The original checkpoint file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the diffusers model (must not exist).")],
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture: ffhq-256 or imagenet-256 (adm); ldm-ffhq-256 (ldm, default).")] = None,
    ema: Annotated[bool, typer.Option("--ema", help="ldm: convert the EMA copy of the UNet (model_ema.*) instead of model.diffusion_model.*.")] = False,
):
    """Convert an original checkpoint you already have into a diffusers folder (safetensors) for --model DIR.

    Example: [bold]restore models convert ldm ffhq/model.ckpt -o models/ldm-ffhq-256[/bold]
    """
    from .convert.checkpoint import ARCHITECTURES as arches

    if fmt not in arches:
        raise typer.Exit(usage_error(f"FORMAT must be adm or ldm, got {fmt!r}"))
    arch = arch or (None if fmt == "adm" else "ldm-ffhq-256")
    if arch not in arches[fmt]:
        raise typer.Exit(usage_error(f"--arch for {fmt} must be one of {', '.join(arches[fmt])}"))
    if ema and fmt != "ldm":
        raise typer.Exit(usage_error("--ema applies to ldm checkpoints only"))
    if not checkpoint.is_file():
        raise typer.Exit(usage_error(f"no such checkpoint file: {checkpoint}"))
    if output.exists():
        raise typer.Exit(usage_error(f"{output} already exists; choose a new folder (nothing is overwritten)"))
    from .convert.checkpoint import sha256_file
    from .hub import ModelUnavailable, convert_checkpoint

    quiet_libraries()
    try:
        record = {"model": str(output.resolve()), "source_file": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)}
        path = convert_checkpoint(fmt, checkpoint, arch, output.resolve(), record, ema=ema)
    except OSError as e:  # an unreadable file
        err.print(f"[red]error:[/red] {checkpoint}: {e.strerror or e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    except ModelUnavailable as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"converted {checkpoint} ({arch}) -> {path}; use it as --model {path}", highlight=False)


def main():
    """The console script: Typer's app, with Click's own usage errors (an unknown option, a missing value)
    said in one line like restore's, instead of a framed block."""
    try:  # Typer (0.22+) carries its own copy of Click; older ones use Click itself
        from typer._click import exceptions as click_errors
        from typer.exceptions import Abort
    except ImportError:
        from click import exceptions as click_errors
        from click.exceptions import Abort

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:
        e.ctx.get_help()  # Typer prints the (Rich) help itself
        code = e.exit_code
    except click_errors.UsageError as e:
        hint = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
        code = usage_error(f"{e.format_message().rstrip('.')}{hint}")
    except Abort:
        err.print("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
