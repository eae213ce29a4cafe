"""A run resolved before anything loads: :func:`resolve` checks every name and option (``checks.py``),
parses ``--set`` and picks the device, and returns the :class:`Plan` that :func:`execute.execute` runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.catalog import MethodInfo, resolve_prompt
from ..models.config import ModelSpec
from ..models.registry import parse_set, resolve_device, resolve_dtype
from ..solvers import DiffStateGrad
from .checks import RunConfig, check
from .distributed import Shard, current


@dataclass
class Plan:
    cfg: RunConfig
    model: ModelSpec
    method: MethodInfo
    hparams: dict
    dsg: DiffStateGrad | None
    device: torch.device
    dtype: torch.dtype
    images: list[Path]
    restarts: int
    prompt: str | None = None  # the text prompt a text-conditioned model runs with
    stems: list[str] = field(default_factory=list)  # each image's output stem (checks.output_stems)
    overrides: dict = field(default_factory=dict)  # the hyperparameters given (--set, --steps)
    warnings: list[str] = field(default_factory=list)  # said once before the run, recorded in metrics.json
    shard: Shard = field(default_factory=Shard)  # this process's place under a launcher (distributed.py)


def resolve(cfg: RunConfig) -> Plan:
    """Validate the whole run; raises UsageError (exit 2) before any download or load."""
    c = check(cfg)
    info = c.method
    hp = parse_set(cfg.sets, info)
    if cfg.steps is not None:
        hp[info.steps_key] = cfg.steps
    dsg = None
    if cfg.diffstategrad:  # (a method without a measurement gradient was refused by check)
        try:
            dsg = DiffStateGrad(cfg.var_cutoff, cfg.period or info.cls.dsg_default_period(hp), cfg.rank_mode)
        except ValueError as e:
            raise UsageError(str(e)) from None
    shard = current(cpu=cfg.device == "cpu")
    device = shard.place(resolve_device(cfg.device))  # under a launcher: one GPU per process
    dtype = resolve_dtype(cfg.dtype, device)
    # solver construction validates the hyperparameters' values against the task (cheap, no model)
    return Plan(cfg, c.model, info, hp, dsg, device, dtype, c.images, c.restarts,
                resolve_prompt(c.model, info.name, cfg.prompt), c.stems, dict(hp),
                steps_warnings(info, hp, c.model.kind) + dtype_warnings(dtype, device) + jpeg_warnings(cfg), shard)


def jpeg_warnings(cfg: RunConfig) -> list[str]:
    """Measured JPEG takes each file's own tables: a --quality given is not used."""
    if cfg.measured and cfg.task == "jpeg" and "quality" in cfg.task_opts:
        return [f"--quality {cfg.task_opts['quality']} is ignored with --measured: each file's own quantisation tables "
                "and chroma subsampling are used (recorded per image under 'operator')"]
    return []


def steps_warnings(info: MethodInfo, hp: dict, space: str = "pixel") -> list[str]:
    """A warning when fewer steps are asked for than the method's step sizes were tuned for (on a ``space``
    model; none for a method without step sizes, such as DDRM)."""
    tuned = info.cls.tuned_steps(space, info.steps_key)
    steps = hp.get(info.steps_key)
    if not tuned or steps is None or steps >= tuned:
        return []
    return [f"{info.name}'s step sizes are tuned for {tuned} {info.steps_key.replace('_', ' ')}; at {steps} expect a "
            f"much worse (even noisy) result unless you also retune them with --set"]


def dtype_warnings(dtype: torch.dtype, device: torch.device) -> list[str]:
    """A warning where a precision is known to be slow on the device."""
    if dtype == torch.bfloat16 and device.type == "cpu":
        return ["bf16 on the CPU is emulated by most processors and can be far slower than fp32 "
                "(2 DPS steps of ddpm-celebahq-256 did not finish in 2000 s, against 110 s in fp32); use --dtype fp32"]
    return []
