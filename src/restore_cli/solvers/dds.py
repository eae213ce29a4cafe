"""DDS: decomposed diffusion sampler (Chung, Lee & Ye, ICLR 2024, "Decomposed Diffusion Sampler for
Accelerating Large-Scale Inverse Problems").

Per DDIM step (Algorithm 1; P2L App. D.3, Eq. 53/54):

    x0      = D(x_t, sigma_t),  eps = (x_t - x0) / sigma_t             (Tweedie, VE form)
    x0'     = M steps of conjugate gradients on the data-consistency problem, started at x0:
              noisy y:     argmin_x 1/2 ||x - x0||^2 + gamma/2 ||y - A x||^2,  i.e. (I + gamma A^T A) x = x0 + gamma A^T y
              noiseless y: argmin_x 1/2 ||y - A x||^2,                      i.e. A^T A x = A^T y
    x_next  = x0' + sigma_next (eta * noise + sqrt(1 - eta^2) * eps)        (VE form of the code's DDIM step)

The CG iterates stay in the Krylov subspace ``x0 + K_M`` (the paper's tangent-space argument), which
is why DDS runs only ``M`` (``cg_iters`` = 5, the code's ``--CG_iter``) steps, never to convergence;
the last step (``sigma_next = 0``) returns ``x0'``.  Both systems are solved on ``[0, 1]`` images: CG's
iterates map affinely between ``[0, 1]`` and ``[-1, 1]`` units (both sides of either system scale
alike), so this is the code's solve in its units.  No backpropagation through the network.

Defaults and where they come from (``HJ-harry/DDS``, ``solver_2d.py``, ``main.py``):

* ``gamma`` = 1.0 (``--gamma``), weighting the data term as in the code's ``Acg_noise = x + gamma
  A^T A x`` (P2L's Eq. 53 puts ``gamma`` on the proximity term instead: the same at 1).  The noisy
  system is used when the operator's ``sigma_y > 0``, the noiseless one otherwise, as in the code.
* ``eta`` = 0.85 (``--eta``, every released script) in the code's renoising ``c1 = sqrt(1 - abar')
  eta``, ``c2 = sqrt(1 - abar') sqrt(1 - eta^2)``, with ``eps`` the network's own noise estimate.
  ``renoise="ddim"`` is the paper's Eq. (DDIM with ``eta`` scaling DDIM's ``sigma_t``, as P2L Eq. 54):
  ``x_next = x0' + sqrt(sigma_next^2 - c^2) eps + c noise``, ``c = eta sigma_next sqrt(sigma^2 -
  sigma_next^2) / sigma``.  P2L's grid search on natural images chose ``eta`` = 0 for Gaussian
  deblurring and 1 for the other tasks (``--set eta=...``).
* ``steps`` = 100 uniformly spaced DDIM timesteps (``t = 0, c, 2c, ...``, as the code's ``range(0,
  1000, skip)``): P2L's natural-image comparison (100 NFE); the code's medical scripts use 50.
* CG stops early only at a relative residual of ``default_tol`` (the code: an absolute ``1e-5``).

* ``clip_x0`` = false: the code's ``x0_t`` (and so its ``eps``) is not clipped to ``[-1, 1]``, which the
  pixel priors do for the other solvers.

Differences: the code's last step sets ``x`` to the noise-free ``x0'`` one step early and then takes a
step at ``t = 0``; ours renoises that step (``sigma`` of ``t = 0``, about 0.01) and returns the next
``x0'``.
DiffStateGrad is refused (``gradient_guided = False``): DDS never differentiates the network, and its
CG step is a Krylov-subspace solve, not a gradient on the state that a projection could act on.
"""

from __future__ import annotations

import math

import torch

from ..ops.base import cg, default_tol
from ..rng import Generators, noise_like
from .base import Solver

RENOISE = ("code", "ddim")


class DDS(Solver):
    name = "dds"
    paper = "Chung, Lee & Ye 2024, Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems"
    gradient_guided = False
    linear_only = True
    defaults = {"steps": 100, "eta": 0.85, "gamma": 1.0, "cg_iters": 5, "renoise": "code", "clip_x0": False}
    choices = {"renoise": RENOISE}
    guidance_keys = ("gamma",)

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if prior.space != "pixel":
            raise ValueError("dds works on pixel priors")
        if not 0 <= float(self.hp["eta"]) <= 1:
            raise ValueError(f"dds: eta must be in [0, 1], got {self.hp['eta']}")
        if int(self.hp["cg_iters"]) < 0:
            raise ValueError("dds: cg_iters must be >= 0")

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def data_step(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``cg_iters`` CG steps on the data-consistency system, from ``x0`` (model space in and out)."""
        img = self.prior.decode(x0)
        op, g = self.op, float(self.hp["gamma"])
        if op.sigma_y > 0:
            def apply(v):
                return v + g * op.A_adjoint(op.A(v))
            b = img + g * op.A_adjoint(y)
        else:
            def apply(v):
                return op.A_adjoint(op.A(v))
            b = op.A_adjoint(y)
        img = cg(apply, b, x0=img, iters=int(self.hp["cg_iters"]), tol=default_tol(img.dtype), sync_every=0)
        return self.prior.encode(img)

    @torch.no_grad()
    def step(self, i: int, x: torch.Tensor, y: torch.Tensor, sigma: float, sigma_next: float,
             gens: Generators) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.denoise(x, sigma, clip=bool(self.hp["clip_x0"]))  # the code's x0_t is not clipped
        eps = (x - x0) / sigma
        x0_hat = self.data_step(x0, y)
        if sigma_next <= 0:
            return x0_hat, x0_hat
        eta = float(self.hp["eta"])
        noise = noise_like(x, gens) if eta > 0 else torch.zeros_like(x)
        if self.hp["renoise"] == "code":
            x_next = x0_hat + sigma_next * (eta * noise + math.sqrt(1 - eta**2) * eps)
        else:
            c = eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma
            x_next = x0_hat + math.sqrt(max(sigma_next**2 - c**2, 0.0)) * eps + c * noise
        return x_next, x0_hat
