"""P2L: prompt-tuning latent diffusion models for inverse problems (Chung, Ye, Milanfar & Delbracio, ICML 2024).

Algorithm 1 over DDIM (eta = 0, ``steps`` = 1000), per step t:

* line 2, Algorithm 2 (OPTIMIZEEMB): ``K`` Adam steps (lr ``prompt_lr``) on the prompt embedding
  ``C`` of a text-conditioned model, minimising ``||y - A D(z0'(C))||^2`` where
  ``z0'(C) = z0_hat(z_t, C) - rho grad_{z0} ||y - A D(z0_hat)||`` (line 5, a DDS step; the
  gradient is held fixed while differentiating w.r.t. ``C``, a first-order choice of ours);
  the tuned ``C*`` starts the next step (line 13).  On an unconditional model this step is
  skipped (the paper's "LDPS + projection" ablation);
* lines 3-4: ``eps_hat = eps(z_t, C*)``, Tweedie ``z0_hat`` (Eq. 14);
* lines 5-7, every ``every`` steps: the projection onto the encoder's range (Sec. 3.3):
  the proximal pixel step ``x0 = argmin ||y - A x||^2 + lam ||x - D(z0_hat)||^2`` (Eq. 19,
  solved by CG on ``(A^T A + lam I) x = A^T y + lam D(z0_hat)``), then ``z0_tilde = E(x0)``
  (Eq. 20);
* line 11: ``z'_{t-1} = DDIM(z0_tilde, eps_hat)`` (Eq. 15);
* line 12: ``z_{t-1} = z'_{t-1} - rho grad_{z_t} ||y - A D(z0_hat)||`` (LDPS with a static
  step on the gradient of the norm, "rho = 1.0 with the gradient of the norm", App. D).

Defaults from the "solid choice" paragraph, which equal Table 6's FFHQ SRx8 column:
``K`` = 5, ``prompt_lr`` = 1e-4, GD with ``rho`` = 1, projection every 4 steps ("every 3-5"),
``lam`` = 1 ("between 0.1 and 1.0 with negligible difference"), the model's default prompt as
initial embedding ("A high quality photo").  Table 6's other columns use Algorithm 3 (an Adam
latent step, rho 0.05) for deblurring and inpainting, which is not implemented here.  Residuals are in the code's ``[-1, 1]`` units.
Linear operators only (the proximal step needs ``A^T``).  DiffStateGrad (a documented
extension): the line-12 gradient is projected onto the subspace of ``z_t``.
"""

from __future__ import annotations

import math

import torch

from ..ops import cg
from .base import MaskedAdamW, Solver
from .projection import projector


class P2L(Solver):
    name = "p2l"
    paper = "Chung et al. 2024, Prompt-tuning Latent Diffusion Models for Inverse Problems"
    linear_only = True
    defaults = {"steps": 1000, "rho": 1.0, "prompt_steps": 5, "prompt_lr": 1e-4, "every": 4, "lam": 1.0,
                "cg_iters": 20}

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def run(self, y, gens, callback=None):
        self._sig = [float(v) for v in self.sigmas()]
        cond = getattr(self.prior, "conditional", False)
        self.emb = self.prior.cond.expand(y.shape[0], -1, -1).clone() if cond else None
        self.emb_opt = MaskedAdamW(self.emb, self.hp["prompt_lr"], weight_decay=0.0) if cond else None
        return super().run(y, gens, callback)

    def norm(self, z0, y):
        return self.residual(z0, y).flatten(1).norm(dim=1)

    def tune_prompt(self, z, sigma, y):
        """Algorithm 2: K Adam steps on the prompt embedding (per image)."""
        active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        for _ in range(int(self.hp["prompt_steps"])):
            emb = self.emb.detach().requires_grad_(True)
            z0 = self.prior.denoise(z.detach(), sigma, cond=emb)
            z0_fixed = z0.detach().requires_grad_(True)
            g = self.grad(self.norm(z0_fixed, y).sum(), z0_fixed)  # line 5's gradient, held fixed
            z0_dds = z0 - self.hp["rho"] * g
            loss = self.norm(z0_dds, y).pow(2).sum()  # line 6
            g_emb = self.grad(loss, emb)
            self.emb_opt.p = self.emb
            self.emb_opt.step(g_emb, active)

    def project(self, z0, y):
        """Eq. 19-20: proximal pixel step by CG, then re-encode."""
        lam = self.hp["lam"]
        with torch.no_grad():
            d = self.prior.decode(z0)
            rhs = self.op.A_adjoint(y) + lam * d
            x = cg(lambda v: self.op.A_adjoint(self.op.A(v)) + lam * v, rhs, x0=d, iters=int(self.hp["cg_iters"]))
            return self.prior.encode(x)

    def step(self, i, x, y, sigma, sigma_next, gens):
        h = self.hp
        if self.emb is not None:
            self.tune_prompt(x, sigma, y)
        x = x.detach().requires_grad_(True)
        kw = {"cond": self.emb.detach()} if self.emb is not None else {}
        z0 = self.prior.denoise(x, sigma, **kw)
        g = self.grad(self.norm(z0, y).sum(), x)
        z0 = z0.detach()
        eps = (x.detach() - z0) / sigma
        index = len(self._sig) - 2 - i
        z0_t = self.project(z0, y) if index % int(h["every"]) == 0 else z0
        z_next = z0_t + sigma_next * eps  # DDIM, eta = 0 (VE)
        proj = projector(self.dsg, x)
        weight = math.sqrt((1 + sigma**2) * (1 + sigma_next**2))  # VP step, in VE units (see dps.py)
        return z_next - h["rho"] * weight * proj(g, i), z0_t
