"""Best-of-k restarts for ill-posed non-linear tasks (phase retrieval).

DPS, DAPS and DiffStateGrad run phase retrieval four times and report the
best run.  The DAPS code picks the best run *against the ground truth* (an
oracle: max PSNR per image), which a user with only a measurement cannot do.
Our default rule, ``"residual"``, keeps per image the run with the smallest
measurement residual ``||A(x) - y|| / ||y||``; ``"oracle"`` (max PSNR against
a reference, for benchmarks that want the papers' protocol) is available when
a reference is given.  The rule used is recorded in ``Result.extra``.
"""

from __future__ import annotations

import torch

from ..metrics.basic import measurement_residual, psnr
from ..rng import Generators
from .base import Callback, Result, Solver

RULES = ("residual", "oracle")


def run_with_restarts(solver: Solver, y: torch.Tensor, gens: Generators, restarts: int = 1,
                      rule: str = "residual", reference: torch.Tensor | None = None,
                      callback: Callback | None = None) -> Result:
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
    for _ in range(restarts):
        res = solver.run(y, gens, callback)
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
             "chosen_run": chosen.tolist()}
    if restarts == 1:  # the solver's own report (e.g. posterior-mean's conjugate-gradient convergence)
        extra = {**res.extra, **extra}
    return Result(best, best_model, nfe, nb, extra)
