"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., 2024).

Follows the paper's release of the official code (commit 25471a8, "V24"):

for each annealing level ``sigma_i`` (200 levels, EDM ``rho = 7`` grid from
``sigma_max = 100`` to ``sigma_min = 0.1``, then 0):

1. ``x0_hat``: solve the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) /
   sigma`` from ``sigma_i`` to 0 with ``ode_steps`` Euler steps on a ``rho = 7``
   grid down to 0.01 then 0 (5 network evaluations; the last step is the
   Tweedie denoise at 0.01);
2. Langevin dynamics on ``x0`` (``langevin_steps`` = 100) for
   ``p(x0 | x_t, y) ∝ N(y; A(x0), tau^2) N(x0; x0_hat, sigma_i^2)``
   (paper Eq. 9-10, ``r_t = sigma_t``)::

       x0 <- x0 - lr_i * grad[ ||A(x0) - y||^2 / (2 tau^2) + ||x0 - x0_hat||^2 / (2 sigma_i^2) ]
                + sqrt(2 lr_i) * eps,
       lr_i = lr * (1 + (i / N) * (lr_min_ratio - 1))          (linear decay to 1%)

3. re-noise: ``x_{i+1} = x0 + sigma_{i+1} * eps``.

Residuals are in the code's ``[-1, 1]`` units (``Operator.residual_scale``),
so ``tau = 0.01`` and the per-task learning rates of the code
(``configs/task/*.yaml``) keep their meaning.  The later refactor of the code
weighs the data term twice (``||A(x0) - y||^2 / tau^2``); we keep the paper's
Gaussian likelihood.  Where a Langevin step produces a non-finite value the
code returns zeros; we restart that image's chain from ``x0_hat`` instead.

DiffStateGrad (DiffStateGrad paper, Appendix C.5): the SVD of ``x0_hat`` (the
ODE estimate, "our diffusion state") is computed once per annealing level and
the full Langevin gradient (likelihood + prior term) is projected every
``period``-th step (F = 1); the injected noise is not projected.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, noise_like, per_image_sq_norm
from .projection import projector


class DAPS(Solver):
    name = "daps"
    paper = "Zhang et al. 2024, Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing"
    defaults = {
        "annealing_steps": 200, "sigma_max": 100.0, "sigma_min": 0.1, "ode_steps": 5, "ode_sigma_min": 0.01,
        "langevin_steps": 100, "lr": 1e-4, "lr_min_ratio": 0.01, "tau": 0.01,
    }
    guidance_keys = ("lr",)  # the Langevin step size
    # the code's per-task learning rates (pixel configs)
    task_defaults = {
        "inpaint_box": {"lr": 5e-5}, "inpaint_freeform": {"lr": 5e-5}, "inpaint_file": {"lr": 5e-5}, "inpaint_random": {"lr": 1e-4},
        "deblur_gaussian": {"lr": 1e-4}, "deblur_motion": {"lr": 5e-5}, "superres": {"lr": 1e-4},
        "phase_retrieval": {"lr": 5e-5}, "hdr": {"lr": 2e-5},
    }

    def sigmas(self):
        h = self.hp
        return self.prior.schedule.edm_sigmas(int(h["annealing_steps"]), h["sigma_max"], h["sigma_min"])

    def ode_x0(self, x, sigma):
        """Euler PF-ODE from ``sigma`` to 0 (``ode_steps`` evaluations)."""
        h = self.hp
        grid = self.prior.schedule.edm_sigmas(int(h["ode_steps"]), sigma, h["ode_sigma_min"]) if sigma > h["ode_sigma_min"] \
            else torch.tensor([sigma, 0.0], dtype=torch.float64)
        with torch.no_grad():
            for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
                d = self.prior.denoise(x, s)
                x = d + (s_next / s) * (x - d)  # x + (1 - s_next/s) (D - x)
        return x

    def step(self, i, x, y, sigma, sigma_next, gens):
        h = self.hp
        x0_hat = self.ode_x0(x, sigma)
        proj = projector(self.dsg, x0_hat)
        lr = h["lr"] * (1 + (i / int(h["annealing_steps"])) * (h["lr_min_ratio"] - 1))
        x0 = x0_hat.clone()
        for k in range(int(h["langevin_steps"])):
            x0.requires_grad_(True)
            loss = (per_image_sq_norm(self.residual(x0, y)) / (2 * h["tau"] ** 2)
                    + per_image_sq_norm(x0 - x0_hat) / (2 * sigma**2)).sum()
            g = self.grad(loss, x0)
            with torch.no_grad():
                x0 = x0 - lr * proj(g, k) + math.sqrt(2 * lr) * noise_like(x0, gens)
                bad = ~torch.isfinite(x0.flatten(1)).all(1)  # restart those chains, without asking the device
                x0 = torch.where(bad.reshape(-1, *([1] * (x0.dim() - 1))), x0_hat, x0)
        x_next = x0 + sigma_next * noise_like(x0, gens) if sigma_next > 0 else x0
        return x_next, x0
