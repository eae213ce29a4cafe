"""``restore models``: list, inspect, download and convert models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from .console import err, out, print_rows, quiet_hub, quiet_libraries, quiet_warnings, rich_tqdm, usage_error

models_app = typer.Typer(no_args_is_help=True, help="List, inspect and download models (models.toml).")


@models_app.command("list")
def models_list(models_file: Annotated[Optional[Path], typer.Option("--models-file")] = None):
    """Models and whether each is usable now without a network.

    Example: [bold]restore models list[/bold]
    """
    from ..models.config import ConfigError, load_registry
    from ..models.hub import availability

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

    from ..models.config import ConfigError, load_registry
    from ..models.hub import availability

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
    from ..models.config import ConfigError, load_registry
    from ..models.hub import ModelUnavailable, download

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
    from ..convert.checkpoint import ARCHITECTURES as arches

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
    from ..convert.checkpoint import sha256_file
    from ..models.hub import ModelUnavailable, convert_checkpoint

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
