"""Best-of-k restarts for ill-posed non-linear tasks (phase retrieval).

DPS, DAPS and DiffStateGrad run phase retrieval four times and report the
best run.  The DAPS code (``eval.py``, ``Evaluator.report``/``display``) scores
every run *against the ground truth* and reports, per image, the best value of
each metric on its own (max PSNR, max SSIM, min LPIPS: possibly three different
runs), which a user with only a measurement cannot do.  Our default rule,
``"residual"``, keeps per image the run with the smallest measurement residual
``||A(x) - y|| / ||y||``; ``"oracle"`` keeps the run of max PSNR against a
reference.  ``keep_runs`` returns every run's images (``extra["runs"]``), so
that ``restore bench`` can score the papers' per-metric rule (a suite's
``restart_rule = "best-per-metric"``).  The rule used is recorded in ``Result.extra``.
"""

from __future__ import annotations

import torch

from ..metrics.basic import measurement_residual, psnr
from ..rng import Generators
from .base import Callback, Result, Solver

RULES = ("residual", "oracle")


def run_with_restarts(solver: Solver, y: torch.Tensor, gens: Generators, restarts: int = 1,
                      rule: str = "residual", reference: torch.Tensor | None = None,
                      callback: Callback | None = None, keep_runs: bool = False) -> Result:
    """Run ``solver`` ``restarts`` times (each continuing the images' own random streams)."""
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if rule not in RULES:
        raise ValueError(f"restart rule must be one of {RULES}, got {rule!r}")
    if rule == "oracle" and reference is None:
        raise ValueError("the oracle restart rule needs a reference image")
    best = None
    scores_all = []
    nfe = nb = 0
    runs = []
    for _ in range(restarts):
        res = solver.run(y, gens, callback)
        if keep_runs:
            runs.append(res.images.clone())
        nfe += res.nfe
        nb = res.n_backward
        if rule == "residual":
            score = -measurement_residual(solver.op, res.images, y)
        else:
            score = psnr(res.images, reference)
        scores_all.append(score)
        if best is None:
            best, best_model, best_score = res.images.clone(), res.model.clone(), score.clone()
        else:
            better = score > best_score
            best[better] = res.images[better]
            best_model[better] = res.model[better]
            best_score = torch.where(better, score, best_score)
    chosen = torch.stack(scores_all).argmax(0)
    extra = {"restarts": restarts, "restart_rule": "min_measurement_residual" if rule == "residual" else "oracle_max_psnr",
             "chosen_run": chosen.tolist(), **({"runs": runs} if keep_runs else {})}
    if restarts == 1:  # the solver's own report (e.g. posterior-mean's conjugate-gradient convergence)
        extra = {**res.extra, **extra}
    return Result(best, best_model, nfe, nb, extra)
