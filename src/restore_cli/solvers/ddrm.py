"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon & Song, NeurIPS 2022).

DDRM samples in the spectral space of the degradation ``H = U diag(s) V^T`` (``ops/svd.py``):
``x_bar = V^T x``, ``y_bar = diag(s)^+ U^T y``, with measurement noise ``sigma_y`` (the paper's
``sigma_y``, the code's ``sigma_0``).  With ``x0_bar = V^T x0_theta(x_t, t)``, each coefficient ``i``
of ``x_{t-1}`` is drawn from one of three Gaussians (Eq. 7-8, the code's
``efficient_generalized_steps`` in ``functions/denoising.py``):

    not observed (s_i = 0):          x0_bar + sigma_{t-1} (sqrt(1 - eta^2) eps_bar + eta z)
    s_i sigma_{t-1} <  sigma_y:      x0_bar + sqrt(1 - eta^2) sigma_{t-1} (U^T y - s_i x0_bar)_i / sigma_y
                                     + eta sigma_{t-1} z
    s_i sigma_{t-1} >  sigma_y:      eta_b y_bar + (1 - eta_b) x0_bar + sqrt(sigma_{t-1}^2 - eta_b^2 sigma_y^2 / s_i^2) z

where ``eps_bar = V^T (x_t - x0_theta) / sigma_t`` (the code's ``Vt(et)``), ``z ~ N(0, I)`` and
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` (our VE state ``x_t`` is the code's
``xt / sqrt(alpha_bar_t)``).  The middle case is the paper's ``(y_bar - x0_bar) / (sigma_y / s_i)``
written as the code writes it, so that it also covers coefficients that are observed but whose
singular value was thresholded to zero (the code's ``ZERO``): with noise they take that case, without
noise the first.  The start (Eq. 7, the code's ``init_y``): ``x_bar_T = y_bar + sqrt(sigma_T^2 -
sigma_y^2 / s_i^2) z`` where ``s_i sigma_T > sigma_y``, else ``sigma_T z``.  The last step (to
``sigma = 0``) returns ``x0_theta``, as the code's last ``x0_t``.

Defaults are the paper's and the code's README commands: ``steps`` = 20 (DDIM's uniform skip,
``t = 0, 50, ..., 950`` as the code's ``seq``; its ``--timesteps`` default of 1000 is not what the
paper ran), ``eta`` = 0.85 (the code's ``etaA`` and ``etaC``), ``eta_b`` = 1.0, and 1-D singular
values below ``svd_zero`` = 3e-2 set to zero (``SRConv``, ``Deblurring``; ``--set svd_zero=0``
keeps them all, as the paper's equations).  The denoiser's ``x0`` is not clipped, as in the code
(``clip_x0 = false``; the pixel priors clip it for the other solvers).  Where the code divides the
initial state by ``sigma_T`` to make it a VP state we use the exact VE state (the two differ by
``1 / (2 sigma_T^2)`` ~ 5e-5 relatively).  Noise ``z`` is drawn in image space from each image's
generator and rotated by ``V^T`` (the same law: ``V`` is orthogonal).

Model space: pixel priors map ``[0, 1]`` images to ``[-1, 1]``, so the model-space operator is
``H_m x = c A x`` with ``c = residual_scale / 2`` (= 1), measured as ``y_m = residual_scale (y -
A(decode(0)))`` with noise ``sigma_0 = residual_scale * op.sigma_y`` (the code's ``2 * sigma_0``).

DDRM takes no measurement gradient (``gradient_guided = False``: DiffStateGrad does not apply) and
needs a linear operator with an SVD (``ops.svd.svd_of``).
"""

from __future__ import annotations

import math

import torch

from ..ops.svd import DEFAULT_ZERO, svd_of
from ..rng import noise_like
from .base import Solver


class DDRM(Solver):
    name = "ddrm"
    paper = "Kawar et al. 2022, Denoising Diffusion Restoration Models"
    gradient_guided = False
    linear_only = True
    defaults = {"steps": 20, "eta": 0.85, "eta_b": 1.0, "svd_zero": DEFAULT_ZERO, "clip_x0": False}

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if prior.space != "pixel":
            raise ValueError("ddrm works on pixel priors")
        for key in ("eta", "eta_b"):
            if not 0.0 <= float(self.hp[key]) <= 1.0:
                raise ValueError(f"ddrm: {key} must be in [0, 1], got {self.hp[key]}")
        if float(self.hp["svd_zero"]) < 0:
            raise ValueError(f"ddrm: svd_zero must be >= 0, got {self.hp['svd_zero']}")
        self.svd = svd_of(op, float(self.hp["svd_zero"]))
        self.c = op.residual_scale / 2  # model-space slope: H_m x = c A x
        self.sigma_0 = op.residual_scale * op.sigma_y

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def spectral_measurement(self, y, like):
        """``(U^T y_m, y_bar, s)`` in the spectral layout, the same at every step: cached per measurement."""
        cached = getattr(self, "_spec", None)
        if cached is None or cached[0] is not y:
            offset = self.op.A(self.prior.decode(torch.zeros_like(like)))
            uty = self.svd.Ut(self.op.residual_scale * (y - offset))
            s = self.c * self.svd.singulars(uty)
            ybar = uty / torch.where(s > 0, s, torch.ones_like(s))
            self._spec = cached = (y, uty, ybar, s, self.svd.observed.to(uty.device))
        return cached[1:]

    def init_x(self, y, gens, sigma_max):
        """``x_T`` from Eq. 7 (the code's ``init_y``)."""
        x = super().init_x(y, gens, 1.0)  # z ~ N(0, I), from the images' generators
        uty, ybar, s, obs = self.spectral_measurement(y, x)
        zb = self.svd.Vt(x)
        near = obs & (s * sigma_max > self.sigma_0)
        std = (sigma_max**2 - (self.sigma_0 / torch.where(near, s, torch.ones_like(s))) ** 2).clamp_min(0).sqrt()
        return self.svd.V(torch.where(near, ybar + std * zb, sigma_max * zb))

    def step(self, i, x, y, sigma, sigma_next, gens):
        with torch.no_grad():
            x0 = self.denoise(x.detach(), sigma, clip=bool(self.hp["clip_x0"]))  # the code does not clip
            if sigma_next <= 0:
                return x0, x0
            uty, ybar, s, obs = self.spectral_measurement(y, x)
            eta, eta_b, s0 = float(self.hp["eta"]), float(self.hp["eta_b"]), self.sigma_0
            x0b = self.svd.Vt(x0)
            eps = self.svd.Vt((x - x0) / sigma)
            z = self.svd.Vt(noise_like(x0, gens))
            keep = math.sqrt(1 - eta**2)
            missing = x0b + sigma_next * (keep * eps + eta * z)
            after = obs & (s * sigma_next < s0)  # less noisy than y
            before = obs & (s * sigma_next > s0)  # noisier than y
            toward_y = x0b + sigma_next * keep * (uty - s * x0b) / (s0 if s0 > 0 else 1.0) + eta * sigma_next * z
            s_safe = torch.where(s > 0, s, torch.ones_like(s))
            std_b = (sigma_next**2 - (eta_b * s0 / s_safe) ** 2).clamp_min(0).sqrt()
            at_y = eta_b * ybar + (1 - eta_b) * x0b + std_b * z
            xb = torch.where(before, at_y, torch.where(after, toward_y, missing))
            return self.svd.V(xb), x0
