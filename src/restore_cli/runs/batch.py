"""One batch, measured, solved and scored: the step that ``restore <task>`` (execute.py) and
``restore bench`` (bench/runner.py) share, so that a benchmark measures exactly what a run does.

Randomness is per image (``rng.make_generators(seed, 1, offset=i)`` for image ``i`` of the
run or suite), so an image's result depends neither on the batch it is in nor on its order.
With ``samples = N > 1`` each image is solved N times (rows ``b * N .. b * N + N - 1`` of the
result): sample 0 continues the image's generator after its measurement (exactly the one-sample
result), sample ``k`` has its own generator (``rng.sample_generators``); the rows are solved at
most ``chunk`` at a time, which changes nothing in the results.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..metrics import measurement_residual, psnr, ssim
from ..models.registry import build_operator
from ..profiling import measure
from ..rng import make_generators, sample_generators
from ..solvers import Result, run_with_restarts


@dataclass
class SolvedBatch:
    op: Any              # the degradation operator (its random parts drawn per image)
    y: torch.Tensor      # the measurements
    result: Any          # solvers.SolveResult (best of the restarts)
    solver: Any          # the solver, for its resolved hyperparameters
    usage: Any           # profiling.measure: seconds and peak memory of the solve
    samples: int = 1     # posterior samples per image: result rows b * samples .. (b + 1) * samples - 1
    nfe: list | None = None         # per image, all its samples and restarts (None: result.nfe)
    n_backward: list | None = None  # per image, likewise

    def rows(self) -> list[int]:
        """The image (batch position) of each result row."""
        return [b for b in range(self.y.shape[0]) for _ in range(self.samples)]

    def cost(self, k: int) -> tuple[int, int]:
        """Image ``k``'s network evaluations and backward passes (all its samples and restarts)."""
        if self.nfe is None:
            return self.result.nfe, self.result.n_backward
        return self.nfe[k], self.n_backward[k]

    def residuals(self) -> list:
        """Per-row relative measurement residual ``||A(x) - y|| / ||y||`` (None where diverged)."""
        if self.samples == 1:
            return finite(measurement_residual(self.op, self.result.images.float(), self.y))
        rows = self.rows()
        return finite(measurement_residual(self.op.select(rows), self.result.images.float(), self.y[rows]))


@dataclass(frozen=True)
class Solve:
    """How every batch of a run (or of a benchmark cell) is measured and solved: built once, then
    :func:`solve_batch` per batch.

    ``samples`` solves per image (each its own best-of-``restarts`` run), ``chunk`` rows at a time;
    ``keep_runs``: every restart's images in ``result.extra["runs"]`` (one sample, one chunk);
    ``guidance`` multiplies the method's measurement-guidance step sizes (``guidance_keys``);
    ``measured``: the input is the measurement itself (no reference)."""

    task: str
    task_opts: dict
    noise_sigma: float
    seed: int
    method_cls: Any
    prior: Any
    dsg: Any = None
    hparams: dict = field(default_factory=dict)
    guidance: float = 1.0
    restarts: int = 1
    rule: str = "residual"
    measured: bool = False
    samples: int = 1
    chunk: int | None = None
    keep_runs: bool = False


def solve_batch(how: Solve, x: torch.Tensor, ids: list[int], shape: tuple | None = None,
                on_step: Callable | None = None) -> SolvedBatch:
    """Build the operator for ``x`` ([B, C, H, W], image ids ``ids``), measure (or, with
    ``how.measured``, take ``x`` as the measurement itself), and solve as ``how`` says.
    ``shape`` is the working image's shape when it differs from ``x``'s (measured super-resolution);
    ``on_step`` receives each step's :class:`~restore_cli.solvers.StepInfo`."""
    task, seed, samples, method_cls = how.task, how.seed, how.samples, how.method_cls
    gens = [make_generators(seed, 1, offset=i)[0] for i in ids]
    op = build_operator(task, how.task_opts, tuple(shape or x.shape[1:]), gens, how.noise_sigma).to(x.device)
    if how.measured:
        y, ref = (x * op.mask if task == "inpaint" else x), None
    else:
        y, ref = op(x, gens), x

    def make_solver(o):
        solver = method_cls(how.prior, o, how.dsg, **(how.hparams or {}))
        for k in method_cls.guidance_keys:
            solver.hp[k] = solver.hp[k] * how.guidance
        return solver

    b = y.shape[0]
    rows = [i for i in range(b) for _ in range(samples)]
    row_gens = [g for i, g in zip(ids, gens) for g in [g, *sample_generators(seed, i, samples)]]
    chunk = len(rows) if how.chunk is None else max(1, int(how.chunk))
    if how.keep_runs and (samples != 1 or chunk < len(rows)):
        raise ValueError("keep_runs needs one sample per image, solved in one chunk")
    parts, solver = [], None
    with measure(x.device) as usage:
        for start in range(0, len(rows), chunk):
            sel = rows[start:start + chunk]
            whole = sel == list(range(b))  # one sample per image, all in one solve: the batch as it is
            solver = make_solver(op if whole else op.select(sel))
            part = run_with_restarts(solver, y if whole else y[sel], row_gens[start:start + chunk], how.restarts, how.rule,
                                     None if ref is None else (ref if whole else ref[sel]), on_step, how.keep_runs)
            parts.append((sel, part))
    if len(parts) == 1 and samples == 1:
        return SolvedBatch(op, y, parts[0][1], solver, usage)
    nfe, nb = [0] * b, [0] * b
    for sel, part in parts:
        for i in sel:
            nfe[i] += part.nfe
            nb[i] += part.n_backward
    return SolvedBatch(op, y, _concat([p for _, p in parts]), solver, usage, samples, nfe, nb)


def _concat(parts: list) -> Result:
    """The results of consecutive chunks of rows as one (per-row lists in ``extra`` joined)."""
    if len(parts) == 1:
        return parts[0]
    extra = {}
    for k, v in parts[0].extra.items():
        if isinstance(v, list):
            extra[k] = [e for p in parts for e in p.extra.get(k, [])]
        elif isinstance(v, dict):  # e.g. posterior-mean's conjugate-gradient report: its per-row lists joined
            extra[k] = {kk: ([e for p in parts for e in p.extra[k][kk]] if isinstance(vv, list) else vv)
                        for kk, vv in v.items()}
        else:
            extra[k] = v
    return Result(torch.cat([p.images for p in parts]), torch.cat([p.model for p in parts]),
                  max(p.nfe for p in parts), max(p.n_backward for p in parts), extra)


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
    """One line saying what went wrong, in words (with the remedy for running out of GPU memory); the
    exception's class is not for the user's eyes: records keep it as ``error_type`` (:func:`error_fields`)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: lower --batch-size, use --dtype fp16/bf16, or a smaller --fit size"
    if isinstance(e, MemoryError):
        return "out of memory: lower --batch-size, or use a smaller --fit size"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, KeyError) and msg:
        msg = f"missing entry {msg}"
    return msg or "an unexpected failure with no message (a bug in restore: please report it with metrics.json)"


def error_fields(e: Exception) -> dict:
    """A failed image's record fields: the line a user reads, and the exception's class with where it was
    raised (for a bug report)."""
    where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    detail = type(e).__name__ + (f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else "")
    return {"error": error_line(e), "error_type": detail}
