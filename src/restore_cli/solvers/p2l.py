"""P2L: prompt-tuning latent diffusion models for inverse problems (Chung, Ye, Milanfar & Delbracio, ICML 2024).

Algorithm 1 over DDIM (eta = 0, ``steps`` = 1000), per step ``t = T .. 1``:

* line 2, Algorithm 2 (OPTIMIZEEMB): ``K`` (``prompt_steps``) Adam steps (lr ``prompt_lr``) on the
  prompt embedding ``C`` of a text-conditioned model, minimising ``||y - A D(z0'(C))||^2`` where
  ``z0'(C) = z0_hat(z_t, C) - prompt_rho grad_{z0} ||y - A D(z0_hat)||`` (Alg. 2 line 5, a DDS step;
  App. D: "a static step size rho = 1.0 with the gradient of the norm"; the gradient is held fixed
  while differentiating w.r.t. ``C``, a first-order choice of ours); the tuned ``C*`` starts the next
  step (line 13).  Each call of OPTIMIZEEMB runs a fresh Adam (zero moments, bias correction from
  step 1): Algorithm 2 is a function of ``(z_t, y, C_t^(0), K)`` alone and only ``C`` is passed on
  (line 13), and App. D runs Adam "with the learning rate and the number of iterations as denoted
  in Table 6 for every t".  On an unconditional model this step is skipped (the paper's "LDPS + projection");
* lines 3-4: ``eps_hat = eps(z_t, C*)``, Tweedie ``z0_hat`` (Eq. 14);
* lines 5-7, when ``t mod every = 0``: the projection onto the encoder's range (Sec. 3.3): the
  proximal pixel step ``x0 = argmin ||y - A x||^2 + lam ||x - D(z0_hat)||^2`` (Eq. 19, solved by CG
  on ``(A^T A + lam I) x = A^T y + lam D(z0_hat)``), then ``z0_tilde = E(x0)`` (Eq. 20);
  ``every = 0`` never projects;
* line 11: ``z'_{t-1} = DDIM(z0_tilde, eps_hat)`` (Eq. 15);
* the latent update, with ``g = grad_{z_t} ||y - A D(z0_hat)||`` (the unsquared norm, as LDPS,
  Eq. 6, and App. D.3's "static step size rho = 1"; ``z0_hat`` is the unprojected estimate):

  - ``latent_update = "gd"``, Algorithm 1 line 12 (Eq. 13): ``z_{t-1} = z'_{t-1} - rho g``;
  - ``latent_update = "adam"``, Algorithm 3 lines 11-14 (LDIR's history update, App. D.2):
    ``z_{t-1} = z'_{t-1} - rho m_hat / (sqrt(v_hat) + eps)`` with Adam's moments of ``g``
    (beta1 0.9, beta2 0.999, eps 1e-8, "the default setting").  Alg. 3 writes the bias correction
    as ``/(1 - beta)`` and never updates ``m``, ``v``; we use Adam as published (moments updated
    every step, bias correction ``1 - beta^k``), per image (``MaskedAdamW``, no weight decay).

Step sizes are the paper's, in its variance-preserving units: ``g`` and ``rho`` act on the VP
latent, so in our VE state the GD step reads ``rho sqrt((1 + sigma_t^2)(1 + sigma_{t-1}^2)) grad_z``
(as ``dps.py``), and the Adam step is fed the VP gradient ``sqrt(1 + sigma_t^2) grad_z`` and scaled
by ``sqrt(1 + sigma_{t-1}^2)``.  Residuals are in the code's ``[-1, 1]`` units.

Defaults: the "solid choice" paragraph (end of Sec. 3.4, "Guidance on hyperparameter selection"),
which equals Table 6's FFHQ SR x8 column: ``K`` = 5, ``prompt_lr`` = 1e-4, GD with ``rho`` = 1,
projection every 4 steps ("every 3-5"), ``lam`` = 1, the model's default prompt as initial embedding.
Per task (``defaults_for``), Table 6's FFHQ columns: Gaussian deblurring Adam, ``rho`` 0.05, every 4,
``lam`` 1, K 5, lr 1e-4; motion deblurring Adam, ``rho`` 0.05, every 5, ``lam`` 1, K 3, lr 5e-5;
inpainting (the paper's free-form masks; we use it for every mask) Adam, ``rho`` 0.05, every 3,
``lam`` 0.1, K 1, lr 1e-4.  (The ImageNet columns differ; other kernels keep the defaults.)
Linear operators only (Eq. 19 needs ``A^T``).
DiffStateGrad (a documented extension): ``g`` is projected onto the subspace of ``z_t``.

Step size and the oracle.  ``rho`` multiplies the gradient of the *unsquared* norm, a direction of
fixed length whatever the residual: an absolute step, set for 512 x 512 images.  On the 12 x 12
test oracle (432 values) it is far too long: latent DPS alone (no projection) runs in a period-2
oscillation across the data-consistent set for sigma between ~25 and ~2 (consecutive residuals at
cosine ~ -0.95, residual norm rising from ~1.2 to ~9.5), which is symmetric and cancels (rel 0.15).
A projection every ``every`` steps samples that oscillation, for an even period always at the same
phase: the two corrections stop cancelling (their net pushes point against each other, cosine
~ -0.95) and the LDPS push keeps a net part that the denoiser's prior correlations carry into the
unobserved region, which drifts.  Measured (box, GD, 1000 steps, 8 samples, rel as in the tests):
rho 1 with every 1/2/3/4/5/6/8: 0.24 / 1.67 / 0.14 / 0.88 / 0.13 / 0.59 / 0.46; every 4 with rho
0.5 / 0.25 / 0.1: 0.43 / 0.17 / 0.14 (at 0.1 latent DPS no longer oscillates); rho 1, every 4 on a
24 x 24 oracle: 0.32.  The VP-to-VE conversion (the same as ``dps.py``, whose latent DPS passes the
oracle) is not the cause; the algorithm is kept as written.  Table 6's inpainting column (Adam,
rho 0.05, every 3, lam 0.1) lands at 0.21 on the 12 x 12 box oracle, 0.06 on the 24 x 24 one.  On
the Gaussian-blur oracle its deblurring column gives 0.46, and so does the Adam update without the
projection (0.45; the projection alone 0.17, GD rho 1 0.35): Adam's step is coordinate-wise, and
the oracle's latent basis is a random rotation of the image, so there it is a weak proxy.
"""

from __future__ import annotations

import math

import torch

from ..ops import cg
from .base import MaskedAdamW, Solver
from .projection import projector

LATENT_UPDATES = ("gd", "adam")

# Table 6, FFHQ columns (gradient type, rho_t, gamma, lambda, K, learning rate)
_ADAM = {"latent_update": "adam", "rho": 0.05}
TABLE6_FFHQ = {
    "deblur_motion": {**_ADAM, "every": 5, "lam": 1.0, "prompt_steps": 3, "prompt_lr": 5e-5},
    "deblur_gaussian": {**_ADAM, "every": 4, "lam": 1.0, "prompt_steps": 5, "prompt_lr": 1e-4},
    "superres": {"latent_update": "gd", "rho": 1.0, "every": 4, "lam": 1.0, "prompt_steps": 5, "prompt_lr": 1e-4},
    "inpaint": {**_ADAM, "every": 3, "lam": 0.1, "prompt_steps": 1, "prompt_lr": 1e-4},
}


class P2L(Solver):
    name = "p2l"
    paper = "Chung et al. 2024, Prompt-tuning Latent Diffusion Models for Inverse Problems"
    linear_only = True
    defaults = {"steps": 1000, "latent_update": "gd", "rho": 1.0, "prompt_rho": 1.0, "prompt_steps": 5,
                "prompt_lr": 1e-4, "every": 4, "lam": 1.0, "cg_iters": 20}
    choices = {"latent_update": LATENT_UPDATES}
    guidance_keys = ("rho",)  # the z_t update's step (line 12 / Alg. 3 line 14)
    revision = 2  # 2: a fresh Adam for the prompt at every OPTIMIZEEMB call (Algorithm 2)

    def defaults_for(self, prior, task_key):
        """Table 6's FFHQ column for the task (every inpainting mask uses the inpainting column)."""
        key = "inpaint" if task_key.startswith("inpaint") else task_key
        return dict(TABLE6_FFHQ.get(key, {}))

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def run(self, y, gens, callback=None):
        self._sig = [float(v) for v in self.sigmas()]
        cond = getattr(self.prior, "conditional", False)
        self.emb = self.prior.cond.expand(y.shape[0], -1, -1).clone() if cond else None
        self.adam = None  # Algorithm 3's moments, created at the first step (m_T = v_T = 0)
        return super().run(y, gens, callback)

    def norm(self, z0, y):
        return self.residual(z0, y).flatten(1).norm(dim=1)

    def tune_prompt(self, z, sigma, y):
        """Algorithm 2: K Adam steps on the prompt embedding (per image)."""
        active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        opt = MaskedAdamW(self.emb, self.hp["prompt_lr"], weight_decay=0.0)  # fresh moments at every t
        for _ in range(int(self.hp["prompt_steps"])):
            emb = self.emb.detach().requires_grad_(True)
            z0 = self.prior.denoise(z.detach(), sigma, cond=emb)
            z0_fixed = z0.detach().requires_grad_(True)
            g = self.grad(self.norm(z0_fixed, y).sum(), z0_fixed)  # line 5's gradient, held fixed
            z0_dds = z0 - self.hp["prompt_rho"] * g
            loss = self.norm(z0_dds, y).pow(2).sum()  # line 6
            g_emb = self.grad(loss, emb)
            opt.p = self.emb
            opt.step(g_emb, active)

    def project(self, z0, y):
        """Eq. 19-20: proximal pixel step by CG, then re-encode (``D(z0)`` taken from the step when it decoded ``z0``)."""
        lam = self.hp["lam"]
        known = getattr(self, "_decoded", None)
        with torch.no_grad():
            d = known[1] if known is not None and known[0] is z0 else self.prior.decode(z0)
            rhs = self.op.A_adjoint(y) + lam * d
            x = cg(lambda v: self.op.A_adjoint(self.op.A(v)) + lam * v, rhs, x0=d, iters=int(self.hp["cg_iters"]),
                   sync_every=0)
            return self.prior.encode(x)

    def latent_step(self, g, sigma, sigma_next):
        """The VE displacement of line 12 (GD) or of Algorithm 3 lines 11-14 (Adam), in VP step sizes."""
        h = self.hp
        if h["latent_update"] == "gd":
            return -h["rho"] * math.sqrt((1 + sigma**2) * (1 + sigma_next**2)) * g
        g_vp = math.sqrt(1 + sigma**2) * g
        if self.adam is None:
            self.adam = MaskedAdamW(torch.zeros_like(g), h["rho"], weight_decay=0.0)
        self.adam.p = torch.zeros_like(g)  # Adam writes its step -rho m_hat / (sqrt(v_hat) + eps) here
        self.adam.step(g_vp, torch.ones(g.shape[0], dtype=torch.bool, device=g.device))
        return math.sqrt(1 + sigma_next**2) * self.adam.p

    def step(self, i, x, y, sigma, sigma_next, gens):
        h = self.hp
        if self.emb is not None:
            self.tune_prompt(x, sigma, y)
        x = x.detach().requires_grad_(True)
        kw = {"cond": self.emb.detach()} if self.emb is not None else {}
        z0 = self.prior.denoise(x, sigma, **kw)
        img = self.prior.decode(z0)  # decoded once: the guidance's residual and the projection's D(z0_hat)
        g = self.grad((self.op.residual_scale * (y - self.op.A(img))).flatten(1).norm(dim=1).sum(), x)
        z0 = z0.detach()
        self._decoded = (z0, img.detach())
        eps = (x.detach() - z0) / sigma
        t = len(self._sig) - 1 - i  # Algorithm 1's t = T .. 1
        every = int(h["every"])  # 0: never project (latent DPS with prompt tuning)
        z0_t = self.project(z0, y) if every > 0 and t % every == 0 else z0
        self._decoded = None
        z_next = z0_t + sigma_next * eps  # DDIM, eta = 0 (VE)
        proj = projector(self.dsg, x)
        return z_next + self.latent_step(proj(g, i), sigma, sigma_next), z0_t
