"""PiGDM: pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz, ICLR 2023).

Algorithm 1 (App. A.1), over ``steps`` = 100 uniformly spaced timesteps
with DDIM stochasticity ``eta`` = 1.0:

    x0_hat = E[x0 | x_t]                                   (Eq. 5, Tweedie)
    g = ((y - H x0_hat)^T (H H^T + sigma_y^2 / r_t^2 I)^{-1} H  d x0_hat / d x_t)^T     (noisy, r_t^2 x Eq. 7)
    g = ((h^+(y) - h^+(h(x0_hat)))^T d x0_hat / d x_t)^T                                (noiseless, Eq. 8/9)
    x_s = DDIM(x_t -> s; eta) + g                          (Eq. 10/11, VE form)

with ``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` (App. A.3).  Where the paper's two
forms disagree we follow Eq. 10/11: in VP units the guidance is then
``sqrt(alpha_s) sqrt(alpha_t) g_VP``, which is what the authors' own
implementation in NVlabs' RED-diff (``coeff = sqrt(alpha_s) * sqrt(alpha_t)``)
adds; Algorithm 1 as printed adds ``sqrt(alpha_t) g_VP``, larger by
``1 / sqrt(alpha_s) = sqrt(1 + sigma_s^2)``, which is ~1 late in sampling but
100x at the start, and diverges on our Gaussian-prior oracle.

``guidance="auto"`` uses the noisy form for a linear operator with
``sigma_y > 0`` and the pseudo-inverse form otherwise (``A_dagger``, or
``h_dagger`` of a non-linear operator: HDR, quantisation).  Residuals and
``sigma_y`` are in the model's ``[-1, 1]`` units.  The vector-Jacobian
product differentiates the denoiser only, never ``H`` or ``H^+`` (Listing 1).
PiGDM's super-resolution runs start from the noised upsampled image at
t = 500 (SDEdit); we start from noise for every task.

DiffStateGrad (a documented extension): ``g`` is projected onto the subspace
of the DDIM sample ``x'_s`` before it is added.
"""

from __future__ import annotations

import torch

from .base import Solver
from .projection import projector

GUIDANCE = ("auto", "noisy", "noiseless")


class PiGDM(Solver):
    name = "pigdm"
    paper = "Song et al. 2023, Pseudoinverse-Guided Diffusion Models for Inverse Problems"
    defaults = {"steps": 100, "eta": 1.0, "guidance": "auto"}
    choices = {"guidance": GUIDANCE}

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if prior.space != "pixel":
            raise ValueError("pigdm works on pixel priors")
        mode = self.hp["guidance"]
        if mode == "auto":
            mode = "noisy" if (op.linear and op.sigma_y > 0) else "noiseless"
        if mode == "noisy" and not op.linear:
            raise ValueError("pigdm: noisy guidance (Eq. 7) needs a linear operator")
        if mode == "noiseless" and not op.has_h_dagger:
            raise ValueError(f"pigdm: {op.name} has no pseudo-inverse h_dagger")
        self.mode = mode

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def encoded_h_dagger(self, y):
        """``encode(h^+(y))``, the same at every step: computed once per measurement."""
        cached = getattr(self, "_hy", None)
        if cached is None or cached[0] is not y:
            self._hy = cached = (y, self.prior.encode(self.op.h_dagger(y)))
        return cached[1]

    def step(self, i, x, y, sigma, sigma_next, gens):
        x = x.detach().requires_grad_(True)
        x0 = self.prior.denoise(x, sigma)
        with torch.no_grad():
            img = self.prior.decode(x0)
            if self.mode == "noisy":
                # model-space operator H_m(x0) = s * A((x0 + 1) / 2): slope c = s / 2, y_m - H_m x0 = s (y - A(img))
                r2 = sigma**2 / (1 + sigma**2)
                s = self.op.residual_scale
                c = s / 2
                v = self.op.solve_AAt(s * (y - self.op.A(img)), c**2, (s * self.op.sigma_y) ** 2 / r2)
                vec = c * self.op.A_adjoint(v)
            else:
                vec = self.encoded_h_dagger(y) - self.prior.encode(self.op.h_dagger(self.op.A(img)))
        g = self.grad(x0, x, grad_outputs=vec)  # the vector-Jacobian product through the denoiser only
        x_next = self.ddim_next(x, x0, sigma, sigma_next, gens, eta=self.hp["eta"])
        proj = projector(self.dsg, x_next)
        return x_next + proj(g, i), x0.detach()
