"""Pixel solvers against the exact Gaussian posterior of linear tasks.

With the analytic Gaussian prior the denoiser is exact, so what remains is
each method's own approximation.  ``restore_cli.bench.oracle.compare`` runs a
solver 32 times on one measurement (3x12x12 image, sigma_y = 0.05) with its
*default* hyperparameters and reports

* ``rel``: ||mean of samples - exact posterior mean|| / ||prior mean - exact
  posterior mean|| (1 = the solver ignores y, 0 = exact);
* ``spread``: RMS per-pixel std of the samples / RMS exact posterior std
  (0 = collapses to a point, 1 = exact).

Bounds were set from measured values (seeds fixed), with a margin of at least
0.15 on ``rel`` and a factor ~1.5 on ``spread``, which covers the Monte-Carlo
error of 32 samples (the sample mean moves by ~0.18 posterior std per pixel)
and floating-point differences between machines.  Measured (box / gaussian):

    DPS   rel 0.41 / 0.21  spread 0.53 / 0.65   (DPS's known variance collapse)
    PiGDM rel 0.10 / 0.08  spread 0.69 / 0.64
    DAPS  rel 0.44 / 0.34  spread 0.75 / 0.77   (tau = 0.01 < the true noise, as in its code)

The negative controls below show that a sampler that ignores y, and one that
collapses to a point, fail these bounds.
"""

import pytest
import torch

from restore_cli.bench.oracle import compare, oracle_task
from restore_cli.rng import make_generators
from restore_cli.solvers import DAPS, DPS, PiGDM

BOUNDS = {  # (task, solver): (max rel, min spread, max spread)
    ("box", DPS): (0.60, 0.30, 1.5),
    ("box", PiGDM): (0.25, 0.40, 1.5),
    ("box", DAPS): (0.60, 0.40, 1.5),
    ("gaussian", DPS): (0.40, 0.40, 1.5),
    ("gaussian", PiGDM): (0.25, 0.40, 1.5),
    ("gaussian", DAPS): (0.50, 0.40, 1.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("task,solver", list(BOUNDS), ids=[f"{t}-{s.name}" for t, s in BOUNDS])
def test_solver_approaches_exact_posterior(task, solver):
    max_rel, lo, hi = BOUNDS[(task, solver)]
    r = compare(solver, task)
    assert r.rel_mean_error < max_rel, r
    assert lo < r.spread_ratio < hi, r
    assert r.nfe == {DPS: 1000, PiGDM: 100, DAPS: 1000}[solver]


@pytest.mark.parametrize("task", ["box", "gaussian"])
def test_negative_controls_fail_the_bounds(task):
    prior, op, truth, y = oracle_task(task)
    loosest_rel = max(b[0] for (t, _), b in BOUNDS.items() if t == task)
    lowest_spread = min(b[1] for (t, _), b in BOUNDS.items() if t == task)
    # ignores y: samples from the prior
    prior_samples = prior.decode(prior.sample(op.in_shape, make_generators(0, 32)))
    assert compare(None, task, samples=prior_samples).rel_mean_error > loosest_rel
    # collapses to a point: the exact posterior mean, 32 times
    mean_ex, _ = prior.posterior_dense(op, y.double())
    assert compare(None, task, samples=mean_ex.expand(32, -1, -1, -1)).spread_ratio < lowest_spread
    # DPS with its guidance switched off is a prior sampler too
    assert compare(DPS, task, n=16, zeta=0.0).rel_mean_error > loosest_rel


def test_gaussian_posterior_mean_cg_equals_dense():
    prior, op, truth, y = oracle_task("gaussian")
    dense, _ = prior.posterior_dense(op, y.double())
    torch.testing.assert_close(prior.posterior_mean(op, y), dense, rtol=1e-7, atol=1e-7)
