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
from rich.markup import escape

from ..version import __version__
from ..models.catalog import DEFAULT_NOISE_SIGMA, METHODS, NOISE_UNIT_NAMES, task_options
from .bench import bench_cmd
from .bench import report_app as bench_report_app
from .console import (
    RunProgress,
    err,
    out,
    print_rows,
    print_summary,
    quiet_libraries,
    quiet_warnings,
    rich_tqdm,
    usage_error,
)
from .models import models_app

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
        "--noise-sigma", show_default=False, help=escape(
            f"Noise std on [-1, 1] images as the papers' codes add it (PLoRG's text, 000:252: [0, 1]). "
            f"Default {DEFAULT_NOISE_SIGMA:g}; 0 for jpeg and --then jpeg:Q."))]),
    P("noise_unit", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--noise-unit", show_default=False, help=escape(
            f"{' or '.join(NOISE_UNIT_NAMES)}: --noise-sigma on [-1, 1] or [0, 1] images (default: the papers')."))]),
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


# the task options' Typer parameters come from one table (models/catalog.py, TASK_OPTIONS), as a suite's task keys
# do: each defaults to None (not given), so that a run records only the options given over TASK_DEFAULTS
_TYPES = {"str": str, "int": int, "float": float, "path": Path, "pair": str}


def task_option_params(task: str) -> list[inspect.Parameter]:
    """The Typer parameters of ``task``'s operator options (catalog.TASK_OPTIONS)."""
    params = []
    for o in task_options(task):
        extra = {"metavar": o.metavar} if o.metavar else {}
        params.append(P(o.name, P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[_TYPES[o.type]], typer.Option(
            o.flag, help=escape(o.cli_help()), show_default=False, **extra)]))
    return params


def task_command(name: str, example: str):
    """Register a task: its operator's options come from the table (:func:`task_option_params`); the function
    takes the task's other options (none, or phase retrieval's restarts) and returns them as a dict."""

    def deco(fn: Callable[..., dict]):
        task_params = list(inspect.signature(fn, eval_str=True).parameters.values())
        option_params = task_option_params(name)

        def cmd(**kwargs):
            common = {k: kwargs.pop(k) for k in COMMON_NAMES}
            given = {p.name: kwargs.pop(p.name) for p in option_params}
            task_opts = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}
            task_opts.update(fn(**kwargs))
            raise typer.Exit(_run(name, common, task_opts))

        cmd.__signature__ = inspect.Signature(COMMON + option_params + [p.replace(kind=P.KEYWORD_ONLY) for p in task_params])
        cmd.__doc__ = f"{inspect.getdoc(fn)}\n\nExample: [bold]{example}[/bold]"
        app.command(name)(cmd)
        return fn

    return deco


@task_command("inpaint", "restore inpaint --method daps --diffstategrad --mask freeform photo.png")
def inpaint():
    """Fill in missing pixels."""
    return {}


@task_command("deblur", "restore deblur --kernel motion --method dps photos/")
def deblur():
    """Remove blur."""
    return {}


@task_command("superres", "restore superres --scale 4 --filter bicubic face.png")
def superres():
    """Increase resolution by an integer factor."""
    return {}


@task_command("phase-retrieval", "restore phase-retrieval --method daps --diffstategrad --restarts 4 face.png")
def phase_retrieval(restarts: Annotated[Optional[int], typer.Option("--restarts", help="Runs per image (default: 4).")] = None,
                    restart_rule: Annotated[str, typer.Option("--restart-rule", help="Best run: residual or oracle (README).")] = "residual"):
    """Recover an image from the magnitude of its Fourier transform."""
    return {"_restarts": restarts, "_restart_rule": restart_rule}


@task_command("hdr", "restore hdr --method pigdm photo.png")
def hdr():
    """Undo the clipping of an over-exposed image (scale, then clip)."""
    return {}


@task_command("jpeg", "restore jpeg --quality 10 --method pigdm --noise-sigma 0 photo.png")
def jpeg():
    """Undo JPEG compression (a differentiable JPEG as the forward model); --measured: restore real .jpg files."""
    return {}


def _run(task: str, common: dict, task_opts: dict) -> int:
    import os

    from ..errors import UsageError
    from ..runs.checks import RunConfig, check

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
    from ..models.hub import ModelUnavailable
    from ..runs.execute import execute
    from ..runs.plan import resolve

    quiet_warnings()
    try:
        plan = resolve(cfg)  # imports torch (the solvers' --set names), never diffusers: a usage error in a second
    except UsageError as e:
        return usage(str(e))
    if task == "deblur" and task_opts.get("kernel") == "nonlinear":  # a bad --kernel-model: one line, before the model
        from ..ops.nonlinear_blur import KernelModelError, load_kernel_wizard

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


app.command("bench")(bench_cmd)


def main():
    """The console script: Typer's app, with Click's own usage errors (an unknown option, a missing value)
    said in one line like restore's, instead of a framed block."""
    try:  # Typer (0.22+) carries its own copy of Click; older ones use Click itself
        from typer._click import exceptions as click_errors
        from typer.exceptions import Abort
    except ImportError:
        from click import exceptions as click_errors
        from click.exceptions import Abort

    argv = sys.argv[1:]
    try:
        if argv[:2] == ["bench", "report"]:  # beside `restore bench SUITE`: a command of its own (cli/bench.py)
            code = bench_report_app(args=argv[2:], prog_name="restore bench report", standalone_mode=False)
        elif argv[:2] == ["bench", "throughput"]:  # the throughput benchmark (bench/throughput.py, its own options)
            from ..bench.throughput import main as throughput

            try:
                code = throughput(argv[2:], prog="restore bench throughput")
            except SystemExit as e:  # argparse: --help (0) or a usage error (2, said on stderr)
                code = e.code if isinstance(e.code, int) else 2
        else:
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
