"""Solver mechanics: batch independence, DiffStateGrad switch, restarts, non-linear tasks, diffusers priors."""

import pytest
import torch

from restore_cli.metrics import psnr
from restore_cli.ops import HDR, Inpainting, PhaseRetrieval, box_mask
from restore_cli.priors import DiffusionPrior, GaussianPrior
from restore_cli.rng import make_generators
from restore_cli.solvers import DAPS, DPS, SOLVERS, DiffStateGrad, PiGDM, run_with_restarts
from tests.conftest import tiny_unet

FAST = {DPS: dict(steps=50), PiGDM: dict(steps=20), DAPS: dict(annealing_steps=8, langevin_steps=5)}


def _setup(n=3, shape=(3, 10, 12)):
    prior = GaussianPrior.fitted(shape[0])
    x = prior.decode(prior.sample(shape, make_generators(0, n))).float().clamp(0, 1)
    op = Inpainting(box_mask(shape[1], shape[2], make_generators(1, n)), shape[0], sigma_y=0.01, kind="box")
    return prior, x, op, op(x, make_generators(2, n))


@pytest.mark.parametrize("solver", [DPS, PiGDM, DAPS])
@pytest.mark.parametrize("dsg", [None, DiffStateGrad(0.9)])
def test_result_does_not_depend_on_the_batch(solver, dsg):
    prior, x, op, y = _setup()
    full = solver(prior, op, dsg, **FAST[solver]).run(y, make_generators(7, 3))
    alone = solver(prior, op.select([1]), dsg, **FAST[solver]).run(y[1:2], make_generators(7, 1, offset=1))
    torch.testing.assert_close(full.images[1:2], alone.images, rtol=1e-4, atol=1e-5)
    again = solver(prior, op, dsg, **FAST[solver]).run(y, make_generators(7, 3))
    torch.testing.assert_close(full.images, again.images)  # seeded: reproducible


@pytest.mark.parametrize("solver", [DPS, PiGDM, DAPS])
def test_diffstategrad_switch(solver):
    prior, x, op, y = _setup(2, (3, 12, 12))
    base = solver(prior, op, None, **FAST[solver]).run(y, make_generators(3, 2))
    full_rank = solver(prior, op, DiffStateGrad(1.0), **FAST[solver]).run(y, make_generators(3, 2))
    torch.testing.assert_close(base.images, full_rank.images, rtol=1e-4, atol=1e-4)  # tau = 1, square: identity
    proj = solver(prior, op, DiffStateGrad(0.5), **FAST[solver]).run(y, make_generators(3, 2))
    assert (proj.images - base.images).abs().max() > 1e-3
    # F larger than the number of steps: only step 0 is projected, so close to the base run
    assert psnr(proj.images, x).mean() > 10


def test_hyperparameters_are_validated():
    prior, x, op, y = _setup(1)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        DPS(prior, op, zeta_typo=1.0)
    assert DPS(prior, op).hp["zeta"] == 0.5  # DPS's inpainting default
    assert DAPS(prior, op).hp["lr"] == 5e-5  # DAPS's box-inpainting default
    assert set(SOLVERS) == {"dps", "pigdm", "daps", "gml-dps", "psld", "resample", "p2l", "ddrm", "diffpir", "dds",
                           "pseudo-inverse", "posterior-mean", "posterior-sample"}


def test_pigdm_nonlinear_hdr_uses_h_dagger():
    prior = GaussianPrior.fitted(3)
    x = prior.decode(prior.sample((3, 12, 12), make_generators(0, 2))).float().clamp(0, 1)
    op = HDR((3, 12, 12), sigma_y=0.0)
    y = op.A(x)
    s = PiGDM(prior, op)
    assert s.mode == "noiseless"
    r = s.run(y, make_generators(1, 2))
    from restore_cli.metrics import measurement_residual

    assert (measurement_residual(op, r.images, y) < 0.05).all()  # consistent with the clipped measurement
    unclipped = ((y > 0) & (y < 1)).flatten(1).all(1)
    assert unclipped.tolist() == [False, True]
    assert psnr(r.images, x)[1] > 35  # where nothing is clipped, h^+ is exact and PiGDM recovers the image
    with pytest.raises(ValueError):
        PiGDM(prior, PhaseRetrieval((3, 12, 12)))  # no pseudo-inverse


def test_phase_retrieval_restarts_keep_smallest_residual():
    prior = GaussianPrior.fitted(1)
    x = prior.decode(prior.sample((1, 8, 8), make_generators(0, 2))).float().clamp(0, 1)
    op = PhaseRetrieval((1, 8, 8), sigma_y=0.01)
    y = op(x, make_generators(1, 2))
    solver = DAPS(prior, op, annealing_steps=10, langevin_steps=10)
    res = run_with_restarts(solver, y, make_generators(2, 2), restarts=3)
    assert res.extra["restart_rule"] == "min_measurement_residual" and len(res.extra["chosen_run"]) == 2
    # independently: rerun the three runs and check the kept one has the smallest residual
    from restore_cli.metrics import measurement_residual

    g = make_generators(2, 2)
    runs = [solver.run(y, g).images for _ in range(3)]
    resid = torch.stack([measurement_residual(op, r, y) for r in runs])
    best = resid.argmin(0)
    for i in range(2):
        torch.testing.assert_close(res.images[i], runs[best[i]][i])
    oracle = run_with_restarts(solver, y, make_generators(2, 2), restarts=3, rule="oracle", reference=x)
    assert (psnr(oracle.images, x) >= psnr(res.images, x) - 1e-9).all()


def test_solvers_run_on_a_diffusers_unet_prior():
    unet = tiny_unet(out_channels=6)
    prior = DiffusionPrior(unet, dict(num_train_timesteps=1000))
    x = torch.rand(2, 3, 8, 8)
    op = Inpainting(box_mask(8, 8, make_generators(0, 2)), 3, kind="box")
    y = op(x, make_generators(1, 2))
    for cls in (DPS, PiGDM, DAPS):
        r = cls(prior, op, DiffStateGrad(), **FAST[cls]).run(y, make_generators(2, 2))
        assert r.images.shape == x.shape and torch.isfinite(r.images).all()
        assert r.nfe > 0 and r.n_backward > 0


def test_dps_phase_retrieval_residual_is_in_the_dps_codes_units():
    """DPS's code measures |FFT(pad(x))| of [-1, 1] images; restore's operator is DAPS's, on [0, 1] images.
    DPS's residual is doubled on phase retrieval so that its zeta means the code's step: the code's
    residual norm for the same pair of images is within a few percent of the doubled one."""
    import torch.nn.functional as F

    from restore_cli import ops
    from restore_cli.priors import GaussianPrior
    from restore_cli.solvers import DPS

    op = ops.PhaseRetrieval((3, 32, 32), 2.0, 0.0)
    prior = GaussianPrior.fitted(3)
    g = torch.Generator().manual_seed(1)
    a, b = (F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=32, mode="bicubic").clamp(0, 1) for _ in range(2))
    y = op.A(a)
    ours = DPS(prior, op).residual(b * 2 - 1, y).norm()  # the prior's model space is [-1, 1]
    assert torch.allclose(ours, 2 * op.residual_scale * (y - op.A(b)).norm())

    def code_op(x):  # the DPS code's PhaseRetrievalOperator on [-1, 1] images
        return torch.fft.fft2(F.pad(x * 2 - 1, (op.pad_w,) * 2 + (op.pad_h,) * 2), norm="ortho").abs()

    code = (code_op(a) - code_op(b)).norm()
    assert 0.8 < float(ours / code) < 1.25, float(ours / code)
