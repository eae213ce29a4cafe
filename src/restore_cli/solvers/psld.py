"""PSLD: Posterior Sampling with Latent Diffusion (Rout et al., NeurIPS 2023).

PLoRG Algorithm 2 / P2L Eq. 45: a latent DPS step plus the "gluing" term, which asks the
Tweedie estimate ``z0_hat`` to be a fixed point of the autoencoder *after* the measured part
of its decoded image is replaced by the measurement::

    glue(x) = A^T y + (I - A^T A) x                       (x = D(z0_hat))
    z_{t-1} = z'_{t-1} - grad_{z_t} [ omega ||y - A(x)|| + gamma ||z0_hat - E(glue(x))|| ]

Linear operators only.  ``A^T`` is, by default (``glue="code"``), the operator the PSLD code
calls ``transpose`` (DPS's ``measurements.py``): nearest-neighbour upsampling for
super-resolution and the identity for deblurring and inpainting -- not adjoints, but what
produced PSLD's and DiffStateGrad-PSLD's tables.  It matters: on bicubic x4 super-resolution the
exact adjoint of the row-normalised filter is nearly blind to the measurement (the glued image
removes ~6 % of the measurement residual), the code's upsampling 80-93 %
(``tests/solvers/test_latent.py``), so with the adjoint PSLD is effectively GML-DPS there.
``glue="adjoint"`` uses the exact adjoint ``A^T`` that the paper's equation writes.  (The code also
adds fresh noise to ``A(x)`` inside the norm at every step, which we do not.)  Weights: the official
scripts' per model and task (``omega`` 0.1 to 1, ``gamma`` 0.1; 0.01 for SD box inpainting).  ``A^T y`` and ``(I - A^T A) x`` are computed in
``[-1, 1]`` image units as in the code, then mapped back to ``[0, 1]`` for the encoder.  All
else (steps, weights, the VE scaling, DiffStateGrad on the combined gradient as PLoRG
Algorithm 3) is GML-DPS's (``gml_dps.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gml_dps import GMLDPS


class PSLD(GMLDPS):
    name = "psld"
    paper = "Rout et al. 2023, Solving Linear Inverse Problems Provably via Posterior Sampling with Latent Diffusion Models"
    linear_only = True
    # the official scripts' weights (omega: measurement, gamma: gluing), per model family and task
    LDM_VQ = {"superres": {"omega": 0.9, "gamma": 0.1}, "*": {"omega": 0.1, "gamma": 0.1}}
    STABLE_DIFFUSION = {"inpaint_box": {"omega": 0.1, "gamma": 0.01}, "*": {"omega": 1.0, "gamma": 0.1}}
    defaults = {**GMLDPS.defaults, "glue": "code"}
    choices = {**GMLDPS.choices, "glue": ("code", "adjoint")}
    revision = 2  # 2: glue with the code's "transpose" (glue=code); the encoder samples the KL posterior

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

    def transpose(self, v: torch.Tensor) -> torch.Tensor:
        """The gluing's ``A^T``: the exact adjoint, or the PSLD code's operator (see the module docstring)."""
        if self.hp["glue"] == "adjoint":
            return self.op.A_adjoint(v)
        if self.op.name == "superres":
            up = F.interpolate(v, scale_factor=self.op.factor, mode="nearest")
            h, w = self.op.in_shape[1:]  # a side that is not a multiple of the factor: pad back to it
            return F.pad(up, (0, w - up.shape[-1], 0, h - up.shape[-2]))
        return v  # deblurring and inpainting: the identity

    def glued_measurement(self, img: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` with ``y`` measured on ``[-1, 1]`` images: the same at every step, computed once per measurement."""
        cached = getattr(self, "_aty", None)
        if cached is None or cached[0] is not y or cached[1] != (img.shape, img.dtype, img.device):
            y_pm = self.op.residual_scale * y - self.op.A(torch.ones_like(img))  # y measured on [-1, 1] images
            self._aty = cached = (y, (img.shape, img.dtype, img.device), self.transpose(y_pm).detach())
        return cached[2]

    def glue(self, img: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = img * 2 - 1
        glued = self.glued_measurement(img, y) + x - self.transpose(self.op.A(x))
        return (glued + 1) / 2
