"""DPS: Diffusion Posterior Sampling (Chung et al., ICLR 2023).

Follows the official code (``guided_diffusion/condition_methods.py``,
``configs/*.yaml``), which differs from the paper's Algorithm 1 in its step
rule:

1. DDPM ancestral step over all 1000 training timesteps (``x'_{t-1}`` from
   ``x_t`` and the Tweedie estimate ``x0_hat(x_t)``, clamped to ``[-1, 1]``);
2. ``x_{t-1} = x'_{t-1} - zeta * grad_{x_t} ||y - A(x0_hat(x_t))||`` with the
   *unsquared* norm (the paper's ``zeta' / ||r|| * grad ||r||^2`` equals
   ``2 zeta' grad ||r||``, so the code's ``zeta`` is the paper's ``zeta' / 2``).

``zeta`` defaults are the code's: 0.3 for super-resolution and deblurring, 0.5
for inpainting, 1.0 for phase retrieval (0.3 for HDR, which DPS does not
study).  The residual is measured in the code's ``[-1, 1]`` units
(``Operator.residual_scale``).  Phase retrieval is the exception: restore's
operator is DAPS's, ``|FFT|`` of the ``[0, 1]`` image (``residual_scale`` 1),
while the DPS code takes ``|FFT|`` of the ``[-1, 1]`` image, whose residuals are
about twice as large (exactly twice but for the DC box of the offset); on a
pixel prior DPS doubles that residual so that ``zeta = 1`` is the step the DPS
code took (``tests/solvers/test_solvers.py`` checks the factor against the code's
operator).  The noise (``--noise-sigma``) stays in DAPS's ``[0, 1]`` units: the DPS
code's 0.05 is about 0.025 there.  The code's gradient is taken w.r.t. the VP
state; in our VE state ``x = x_vp / sqrt(alpha_bar)`` the same update reads
``x_{t-1} -= zeta * sqrt((1 + sigma_t^2)(1 + sigma_{t-1}^2)) * grad_x ||r||``.
The code takes one norm over the whole batch, which couples the images; we sum
per-image norms, so every image gets the gradient it would get alone.

The ancestral step's noise: on a model with a learned-range variance (the ADM
checkpoints ``ffhq-256``/``imagenet-256`` the DPS code runs), the code samples
``x'_{t-1}`` with the model's learned variance (``p_sample`` with
``model_var_type: learned_range``), and so do we by default
(``learned_variance = true``); ``--set learned_variance=false`` uses DDPM's
``beta_tilde`` instead (what a model without variance output always gets).

On a latent prior this is Latent DPS (P2L Eq. 6; PLoRG Sec. 2): the same step through the
decoder, with P2L App. D.3's settings, DDIM with ``eta = 0`` over 1000 steps and ``zeta``
(their ``rho``) = 1 for every task.

DiffStateGrad (PLoRG Eq. 1, "a gradient-guided sampler"): the gradient is
projected onto the subspace of the unconditional sample ``x'_{t-1}`` (the state
that the gradient step updates) every ``period``-th step.
"""

from __future__ import annotations

import math

from .base import Solver
from .projection import projector


class DPS(Solver):
    name = "dps"
    paper = "Chung et al. 2023, Diffusion Posterior Sampling for General Noisy Inverse Problems"
    defaults = {"steps": 1000, "zeta": 0.3, "eta": 1.0, "learned_variance": True}
    guidance_keys = ("zeta",)
    # Latent DPS (P2L Eq. 6 and App. D.3): 1000 DDIM steps with eta = 0 and a static step rho = 1
    latent_defaults = {"zeta": 1.0, "eta": 0.0}
    task_defaults = {"inpaint_box": {"zeta": 0.5}, "inpaint_random": {"zeta": 0.5}, "inpaint_freeform": {"zeta": 0.5},
                     "inpaint_file": {"zeta": 0.5}, "phase_retrieval": {"zeta": 1.0}}

    @classmethod
    def method_revision(cls, task: str, space: str = "pixel") -> int:
        """2 for pixel DPS on phase retrieval: the residual in the DPS code's units (twice the earlier step)."""
        return 2 if task == "phase-retrieval" and space == "pixel" else cls.revision

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(int(self.hp["steps"]))

    def residual(self, x0, y):
        r = super().residual(x0, y)
        if self.op.name == "phase_retrieval" and self.prior.space == "pixel":
            return 2 * r  # the DPS code's |FFT| of [-1, 1] images (see the module docstring)
        return r

    def step(self, i, x, y, sigma, sigma_next, gens):
        x = x.detach().requires_grad_(True)
        if self.hp["learned_variance"]:
            x0, var = self.prior.denoise_with_variance(x, sigma)
        else:
            x0, var = self.prior.denoise(x, sigma), None
        norm = self.residual(x0, y).flatten(1).norm(dim=1).sum()  # sum of per-image norms
        g = self.grad(norm, x)
        x_next = self.ddim_next(x, x0, sigma, sigma_next, gens, eta=self.hp["eta"], var=var)  # x'_{t-1}: DDPM if eta = 1
        proj = projector(self.dsg, x_next)
        weight = self.hp["zeta"] * math.sqrt((1 + sigma**2) * (1 + sigma_next**2))
        return x_next - weight * proj(g, i), x0.detach()
