"""GML-DPS: latent DPS with a "goodness" (fixed-point) term (Rout et al. 2023; P2L Eq. 44).

Each step is a latent DPS step (``dps.py``) whose guidance adds a term pulling the Tweedie
estimate ``z0_hat`` towards the autoencoder's fixed points::

    z_{t-1} = z'_{t-1} - grad_{z_t} [ omega ||y - A(D(z0_hat))|| + gamma ||z0_hat - E(glue(D(z0_hat)))|| ]

with ``glue(x) = x`` here (P2L Eq. 44); PSLD (``psld.py``) replaces it by the gluing of the
measurement.  Norms are unsquared and the gradient is taken w.r.t. ``z_t`` and applied to the
DDIM sample; P2L App. D.3 (Eq. 44/45): 1000 DDIM steps with ``eta = 0``, static step
``rho`` (our ``omega``) = 1 and ``gamma`` = 0.1, "as advised in" Rout et al.  In our VE state the step is scaled by ``sqrt((1 + sigma_t^2)(1 + sigma_{t-1}^2))``
(see ``dps.py``).  DiffStateGrad (PLoRG Algorithm 3): the combined gradient is projected onto
the subspace of the state ``z_t`` every ``period``-th step (F = 1).

The encoder in the fixed-point term: on a KL autoencoder (Stable Diffusion) the PSLD code's
``get_first_stage_encoding`` *samples* the encoder's posterior at every step; so do we by default
(``encode="sample"``, each image with its own generator); ``encode="mean"`` takes its mean.  VQ
encoders are deterministic either way.
"""

from __future__ import annotations

import math

import torch

from .base import Solver
from .projection import projector


class GMLDPS(Solver):
    name = "gml-dps"
    paper = "Rout et al. 2023 (GML-DPS baseline), as written in P2L Eq. 44"
    defaults = {"steps": 1000, "eta": 0.0, "omega": 1.0, "gamma": 0.1, "encode": "sample"}
    choices = {"encode": ("sample", "mean")}
    guidance_keys = ("omega", "gamma")
    revision = 2  # 2: the encoder samples the KL posterior (encode=sample), as PSLD's code

    def glue(self, img: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The image whose encoding ``z0_hat`` should equal (GML-DPS: the decoded image itself)."""
        return img

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def step(self, i, x, y, sigma, sigma_next, gens):
        h = self.hp
        x = x.detach().requires_grad_(True)
        z0 = self.prior.denoise(x, sigma)
        img = self.prior.decode(z0)
        meas = (self.op.residual_scale * (y - self.op.A(img))).flatten(1).norm(dim=1)
        enc = self.prior.encode(self.glue(img, y), gens=gens if h["encode"] == "sample" else None)
        fixed = (z0 - enc).flatten(1).norm(dim=1)
        g = self.grad((h["omega"] * meas + h["gamma"] * fixed).sum(), x)
        proj = projector(self.dsg, x)
        z_next = self.ddim_next(x, z0, sigma, sigma_next, gens, eta=h["eta"])
        weight = math.sqrt((1 + sigma**2) * (1 + sigma_next**2))
        return z_next - weight * proj(g, i), z0.detach()
