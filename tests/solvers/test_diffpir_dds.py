"""DiffPIR (Zhu et al. 2023) and DDS (Chung, Lee & Ye 2024) against independent references.

* The data steps against dense linear algebra on tiny problems: ``LinearOperator.prox`` (DiffPIR's
  Eq. 12) against ``(A^T A + rho I)^{-1} (A^T y + rho z)`` with the objective's gradient ~ 0, and DDS's
  ``M`` CG steps against a textbook dense CG.
* The samplers against the exact Gaussian posterior (``oracle.compare``, 32 samples, 3x12x12,
  sigma_y = 0.05).  Measured (rel / spread; pseudo-inverse rel: box 3.9, gaussian 140):

      DiffPIR, defaults (100 steps)      box       0.30 / 0.59
      DiffPIR, steps = 20                 gaussian  0.17 / 0.73   (100 steps: 0.08 / 0.99, but ~40 s: blur's CG prox)
        broken: eps_hat from x0, not x0_hat          gaussian  0.36
        broken: no data step (lambda = 1e9)          box 0.67 (steps 20) / gaussian 0.90
      DDS, defaults (100 steps, eta 0.85, gamma 1)    box 0.55 / 0.60, gaussian 0.34 / 0.47
        broken: no data step (cg_iters = 0)          box 1.41, gaussian 1.42

  Bounds leave >= 0.1 above each measured value and below each broken variant's.
* Measurement fit, rho_t and the timestep grid against the code's formulas, the CLI end to end on the
  bundled pixel model, and the refusal of ``--diffstategrad``.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.bench.oracle import compare, oracle_task
from restore_cli.ops import Blur, Inpainting, SuperResolution, gaussian_kernel
from restore_cli.priors import GaussianPrior
from restore_cli.rng import make_generators
from restore_cli.solvers import DDS, DiffPIR
from restore_cli.rng import noise_like
from restore_cli.solvers.diffpir import diffpir_timesteps

ROOT = Path(__file__).resolve().parents[2]
FMNIST = ROOT / "examples" / "fmnist" / "0000-ankle-boot.png"
runner = CliRunner()


def dense(op, n_in):
    """The matrix of a linear operator on flattened images (float64)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *op.in_shape)
    return op.A(eye).reshape(n_in, -1).T


def tiny_ops():
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(1, 1, 6, 6, generator=g) > 0.4).double()
    k = torch.rand(1, 1, 3, 3, generator=g).double()
    k = k / k.sum()
    return [Inpainting(m, 1, sigma_y=0.0),
            Blur(gaussian_kernel(5, 1.0).double(), (1, 6, 6), sigma_y=0.0, border="reflect"),
            Blur(k, (1, 6, 6), sigma_y=0.0, border="circular"),
            SuperResolution((1, 6, 6), 2, "bicubic", sigma_y=0.0),
            SuperResolution((1, 6, 6), 3, "avgpool", sigma_y=0.0)]


@pytest.mark.parametrize("op", tiny_ops(), ids=lambda o: f"{o.name}-{getattr(o, 'border', getattr(o, 'kind', ''))}")
@pytest.mark.parametrize("rho", [1e-3, 0.1, 10.0])
def test_prox_matches_the_dense_closed_form(op, rho):
    g = torch.Generator().manual_seed(1)
    z = torch.rand(2, *op.in_shape, generator=g, dtype=torch.float64)
    y = op.A(torch.rand(2, *op.in_shape, generator=g, dtype=torch.float64))
    y = y + 0.05 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    n = z[0].numel()
    A = dense(op, n)
    x = op.prox(z, rho, y)
    for b in range(2):
        ref = torch.linalg.solve(A.T @ A + rho * torch.eye(n, dtype=torch.float64),
                                 A.T @ y[b].flatten() + rho * z[b].flatten())
        assert torch.allclose(x[b].flatten(), ref, atol=1e-6, rtol=1e-6)
        grad = A.T @ (A @ x[b].flatten() - y[b].flatten()) + rho * (x[b].flatten() - z[b].flatten())
        assert grad.abs().max() < 1e-6 * max(1.0, rho)


def test_prox_inpainting_is_the_codes_mask_formula():
    op = tiny_ops()[0]
    z = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    y = op.A(torch.rand(1, 1, 6, 6, dtype=torch.float64))
    rho = 0.3
    m = op.mask.double()
    assert torch.allclose(op.prox(z, rho, y), (m * y + rho * z) / (m + rho))  # main_ddpir_inpainting.py


def reference_cg(M, b, x, iters):
    """Textbook CG on a dense SPD system, as DDS's ``utils.CG``."""
    r = b - M @ x
    p = r.copy()
    rs = r @ r
    for _ in range(iters):
        Ap = M @ p
        a = rs / (p @ Ap)
        x = x + a * p
        r = r - a * Ap
        rs_new = r @ r
        p = r + rs_new / rs * p
        rs = rs_new
    return x


@pytest.mark.parametrize("sigma_y", [0.0, 0.05])
def test_dds_data_step_is_m_cg_steps_from_tweedie(sigma_y):
    op = SuperResolution((1, 6, 6), 2, "bicubic", sigma_y=sigma_y)
    prior = GaussianPrior.fitted(1)
    solver = DDS(prior, op, cg_iters=3, gamma=0.7)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    y = op.A(torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64))
    A = dense(op, 36).numpy()
    img = ((x0 + 1) / 2).flatten().numpy()
    if sigma_y > 0:  # (I + gamma A^T A) x = x0 + gamma A^T y
        M, b = np.eye(36) + 0.7 * A.T @ A, img + 0.7 * A.T @ y.flatten().numpy()
    else:  # A^T A x = A^T y
        M, b = A.T @ A, A.T @ y.flatten().numpy()
    ref = reference_cg(M, b, img, 3)
    got = (solver.data_step(x0, y) + 1) / 2
    assert np.allclose(got.flatten().numpy(), ref, atol=1e-8)
    assert np.abs(ref - reference_cg(M, b, img, 1)).max() > 1e-4  # the iteration count matters


def test_diffpir_rho_and_timesteps_follow_the_code():
    prior = GaussianPrior.fitted(1)
    op = Inpainting(torch.ones(1, 1, 4, 4), 1, sigma_y=0.05)
    s = DiffPIR(prior, op, **{"lambda": 7.0})
    assert math.isclose(s.rho(2.0), 7.0 * 0.05**2 / 4.0)
    noiseless = DiffPIR(prior, Inpainting(torch.ones(1, 1, 4, 4), 1, sigma_y=0.0))
    assert math.isclose(noiseless.rho(0.5), 1.0 * 0.001**2 / 0.25)  # sigma = max(0.001, 0), inpaint lambda 1
    # main_ddpir_*.py, skip_type 'quad': seq = int(sqrt(linspace(0, T^2, N))), seq[-1] -= 1, t = T - 1 - seq
    seq = [int(v) for v in np.sqrt(np.linspace(0, 1000**2, 100))]
    seq[-1] -= 1
    assert diffpir_timesteps(1000, 100, "quad") == [999 - v for v in seq]
    assert diffpir_timesteps(1000, 3, "quad") == [999, 292, 0]
    assert diffpir_timesteps(1000, 10, "uniform") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    sig = s.sigmas()
    assert len(sig) == 101 and float(sig[-1]) == 0 and bool((sig[:-1] > sig[1:]).all())


def test_per_task_defaults():
    prior = GaussianPrior.fitted(1)
    blur = Blur(gaussian_kernel(5, 1.0), (1, 8, 8), sigma_y=0.05)
    assert DiffPIR(prior, blur).hp["lambda"] == 7.0 and DiffPIR(prior, blur).hp["zeta"] == 0.3
    inp = Inpainting(torch.ones(1, 1, 8, 8), 1)
    assert DiffPIR(prior, inp).hp["zeta"] == 1.0
    assert DiffPIR(prior, inp, zeta=0.5).hp["zeta"] == 0.5
    assert DDS(prior, blur).hp == {"steps": 100, "eta": 0.85, "gamma": 1.0, "cg_iters": 5, "renoise": "code",
                                "clip_x0": False}
    with pytest.raises(ValueError, match="zeta"):
        DiffPIR(prior, inp, zeta=1.5)


class EpsFromX0(DiffPIR):
    """Broken on purpose: eps_hat from the denoiser's x0 instead of the data-consistent x0_hat."""

    @torch.no_grad()
    def step(self, i, x, y, sigma, sigma_next, gens):
        if sigma_next <= 0:
            return x, x
        x0 = self.prior.denoise(x, sigma)
        x0_hat = self.data_step(x0, y, sigma)
        z = float(self.hp["zeta"])
        return x0_hat + sigma_next * (math.sqrt(1 - z) * (x - x0) / sigma + math.sqrt(z) * noise_like(x, gens)), x0_hat


ORACLE = {  # (task, solver, hparams): (max rel, min spread, max spread, nfe)
    ("box", DiffPIR, ()): (0.45, 0.35, 1.5, 99),
    ("gaussian", DiffPIR, (("steps", 20),)): (0.28, 0.45, 1.5, 19),
    ("box", DDS, ()): (0.70, 0.35, 1.5, 100),
    ("gaussian", DDS, ()): (0.50, 0.30, 1.5, 100),
}
BROKEN = {  # a variant that must fail the bound of the same (task, solver)
    ("box", DiffPIR, ()): (DiffPIR, {"lambda": 1e9}),
    ("gaussian", DiffPIR, (("steps", 20),)): (EpsFromX0, {}),
    ("box", DDS, ()): (DDS, {"cg_iters": 0}),
    ("gaussian", DDS, ()): (DDS, {"cg_iters": 0}),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ORACLE), ids=[f"{t}-{s.name}" for t, s, _ in ORACLE])
def test_oracle_against_the_exact_posterior(key):
    task, solver, hp = key
    max_rel, lo, hi, nfe = ORACLE[key]
    r = compare(solver, task, **dict(hp))
    assert r.rel_mean_error < max_rel, r
    assert lo < r.spread_ratio < hi, r
    assert r.nfe == nfe
    broken, bhp = BROKEN[key]
    b = compare(broken, task, n=16, **{**dict(hp), **bhp})
    assert b.rel_mean_error > max_rel + 0.05, b


def test_gaussian_deblur_diffpir_broken_without_data_step():
    b = compare(DiffPIR, "gaussian", n=16, steps=20, **{"lambda": 1e9})
    assert b.rel_mean_error > ORACLE[("gaussian", DiffPIR, (("steps", 20),))][0] + 0.3, b


@pytest.mark.parametrize("solver,hp", [(DiffPIR, {"final_prox": True}), (DiffPIR, {}), (DDS, {})],
                         ids=["diffpir-final-prox", "diffpir", "dds"])
def test_measurement_fit(solver, hp):
    prior, op, truth, y = oracle_task("box", sigma_y=0.0)
    res = solver(prior, op, **hp).run(y, make_generators(3, 1))
    img = prior.decode(res.model)
    resid = float((op.A(img) - y).pow(2).sum().sqrt() / op.mask.sum().mul(3).sqrt())
    prior_resid = float((op.A(prior.decode(prior.sample(op.in_shape, make_generators(4, 1)))) - y).pow(2).sum().sqrt()
                        / op.mask.sum().mul(3).sqrt())
    # noiseless inpainting: DiffPIR's x0_hat is within rho = 0.01 of y at the last step (final_prox), the
    # code's returned x_0 carries noise of std 0.005 ([0, 1] units); DDS's CG fits the observed pixels exactly
    bound = {"diffpir-final-prox": 0.01, "diffpir": 0.02, "dds": 1e-4}
    key = "dds" if solver is DDS else ("diffpir-final-prox" if hp else "diffpir")
    assert resid < bound[key] < 0.1 * prior_resid, (resid, prior_resid)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("method", ["diffpir", "dds"])
@pytest.mark.parametrize("task,opts", [("inpaint", []), ("deblur", ["--kernel-size", "9"]),
                                       ("superres", ["--scale", "2"])])
def test_cli_end_to_end_on_the_bundled_pixel_model(method, task, opts, tmp_path):
    r = run(task, FMNIST, "--model", "fmnist-ddpm-32", "--method", method, "--steps", "3", *opts,
            "-o", tmp_path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "0000-ankle-boot.png").exists()


@pytest.mark.parametrize("method", ["diffpir", "dds"])
def test_diffstategrad_refused_with_exit_2(method, tmp_path):
    r = run("inpaint", FMNIST, "--model", "fmnist-ddpm-32", "--method", method, "--diffstategrad", "-o", tmp_path)
    assert r.exit_code == 2, r.output
    assert "DiffStateGrad" in r.output and "Traceback" not in r.output


def test_latent_model_and_nonlinear_task_refused():
    for args, needle in [(["inpaint", "--method", "dds", "--model", "fmnist-ldm-32"], "pixel"),
                         (["phase-retrieval", "--method", "diffpir", "--model", "fmnist-ddpm-32"], "does not support"),
                         (["hdr", "--method", "dds", "--model", "fmnist-ddpm-32"], "does not support")]:
        r = run(*args, FMNIST)
        assert r.exit_code == 2 and needle in r.output, r.output


def test_methods_lists_both():
    r = run("methods")
    assert r.exit_code == 0 and "diffpir" in r.output and "dds" in r.output
