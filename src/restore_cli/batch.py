"""One batch, measured, solved and scored: the step that ``restore <task>`` (run.py) and
``restore bench`` (bench.py) share, so that a benchmark measures exactly what a run does.

Randomness is per image (``rng.make_generators(seed, 1, offset=i)`` for image ``i`` of the
run or suite), so an image's result depends neither on the batch it is in nor on its order.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .metrics import measurement_residual, psnr, ssim
from .profiling import measure
from .registry import build_operator
from .rng import make_generators
from .solvers import run_with_restarts


@dataclass
class SolvedBatch:
    op: Any              # the degradation operator (its random parts drawn per image)
    y: torch.Tensor      # the measurements
    result: Any          # solvers.SolveResult (best of the restarts)
    solver: Any          # the solver, for its resolved hyperparameters
    usage: Any           # profiling.measure: seconds and peak memory of the solve

    def residuals(self) -> list:
        """Per-image relative measurement residual ``||A(x) - y|| / ||y||`` (None where diverged)."""
        return finite(measurement_residual(self.op, self.result.images.float(), self.y))


def solve_batch(x: torch.Tensor, ids: list[int], *, task: str, task_opts: dict, noise_sigma: float, seed: int,
                method_cls, prior, dsg=None, hparams: dict | None = None, guidance: float = 1.0,
                restarts: int = 1, rule: str = "residual", measured: bool = False,
                shape: tuple | None = None, on_step: Callable | None = None) -> SolvedBatch:
    """Build the operator for ``x`` ([B, C, H, W], image ids ``ids``), measure (or, with
    ``measured``, take ``x`` as the measurement itself), and solve with best-of-``restarts``.

    ``guidance`` multiplies the method's measurement-guidance step sizes (``guidance_keys``);
    ``shape`` is the working image's shape when it differs from ``x``'s (measured super-resolution)."""
    gens = [make_generators(seed, 1, offset=i)[0] for i in ids]
    op = build_operator(task, task_opts, tuple(shape or x.shape[1:]), gens, noise_sigma).to(x.device)
    if measured:
        y, ref = (x * op.mask if task == "inpaint" else x), None
    else:
        y, ref = op(x, gens), x
    solver = method_cls(prior, op, dsg, **(hparams or {}))
    for k in method_cls.guidance_keys:
        solver.hp[k] = solver.hp[k] * guidance
    with measure(x.device) as usage:
        res = run_with_restarts(solver, y, gens, restarts, rule, ref, on_step)
    return SolvedBatch(op, y, res, solver, usage)


def finite(v: torch.Tensor) -> list:
    """Per-image values; a diverged image (NaN or inf) is recorded as None (JSON null)."""
    return [x if math.isfinite(x) else None for x in v.double().tolist()]


def score(out: torch.Tensor, ref: torch.Tensor, lp=None) -> tuple[dict[str, list], list[str]]:
    """Per-image PSNR, SSIM and (with an LPIPS module ``lp``) LPIPS of ``out`` against ``ref``.

    A metric that fails is reported in the second value and never loses the others."""
    out, ref = out.float(), ref.float()
    fns = {"psnr": lambda: psnr(out, ref), "ssim": lambda: ssim(out, ref)}
    if lp is not None:
        fns["lpips"] = lambda: lp(out, ref)
    metrics, errors = {}, []
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                metrics[name] = finite(fn())
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {error_line(e)}")
    return metrics, errors


def error_line(e: Exception) -> str:
    """One line saying what went wrong (with the remedy for running out of GPU memory)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: lower --batch-size, use --dtype fp16/bf16, or a smaller --fit size"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__ + " " + traceback.format_exc(limit=1).splitlines()[-1]
