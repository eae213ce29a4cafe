"""PSLD: Posterior Sampling with Latent Diffusion (Rout et al., NeurIPS 2023).

PLoRG Algorithm 2 / P2L Eq. 45: a latent DPS step plus the "gluing" term, which asks the
Tweedie estimate ``z0_hat`` to be a fixed point of the autoencoder *after* the measured part
of its decoded image is replaced by the measurement::

    glue(x) = A^T y + (I - A^T A) x                       (x = D(z0_hat))
    z_{t-1} = z'_{t-1} - grad_{z_t} [ omega ||y - A(x)|| + gamma ||z0_hat - E(glue(x))|| ]

Linear operators only (it needs ``A^T``; the PSLD code's "transpose" is nearest upsampling for
super-resolution and the identity for blur, we use the exact adjoint; the code also adds fresh
noise to ``A(x)`` inside the norm at every step, which we do not).  Weights: the official
scripts' per model and task (``omega`` 0.1 to 1, ``gamma`` 0.1; 0.01 for SD box inpainting).  ``A^T y`` and ``(I - A^T A) x`` are computed in
``[-1, 1]`` image units as in the code, then mapped back to ``[0, 1]`` for the encoder.  All
else (steps, weights, the VE scaling, DiffStateGrad on the combined gradient as PLoRG
Algorithm 3) is GML-DPS's (``gml_dps.py``).
"""

from __future__ import annotations

import torch

from .gml_dps import GMLDPS


class PSLD(GMLDPS):
    name = "psld"
    paper = "Rout et al. 2023, Solving Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion Models"
    linear_only = True
    # the official scripts' weights (omega: measurement, gamma: gluing), per model family and task
    LDM_VQ = {"superres": {"omega": 0.9, "gamma": 0.1}, "*": {"omega": 0.1, "gamma": 0.1}}
    STABLE_DIFFUSION = {"inpaint_box": {"omega": 0.1, "gamma": 0.01}, "*": {"omega": 1.0, "gamma": 0.1}}

    def defaults_for(self, prior, task_key):
        """LDM-VQ-4 FFHQ (unconditional) or Stable Diffusion (text-conditioned) weights of the code;
        other models (and the oracle) get P2L's omega = 1, gamma = 0.1."""
        if getattr(prior, "is_vq", False) and not getattr(prior, "conditional", False):
            table = self.LDM_VQ
        elif getattr(prior, "conditional", False):
            table = self.STABLE_DIFFUSION
        else:
            return {}
        return table.get(task_key, table["*"])

    def glue(self, img: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = img * 2 - 1
        y_pm = self.op.residual_scale * y - self.op.A(torch.ones_like(img))  # y measured on [-1, 1] images
        glued = self.op.A_adjoint(y_pm) + x - self.op.A_adjoint(self.op.A(x))
        return (glued + 1) / 2
