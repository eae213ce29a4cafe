"""Non-linear operators: phase retrieval, HDR (clipping) and quantisation.

* ``PhaseRetrieval``: ``y = |F(pad(x))|``, the magnitude of the orthonormal
  2-D DFT of the image zero-padded by ``int(oversample / 8 * side)`` pixels on
  every side (DPS's and DAPS's ``PhaseRetrievalOperator`` with oversampling
  2.0).  It acts on ``[0, 1]`` data, as DAPS and DiffStateGrad map the image
  to ``[0, 1]`` before the transform, so ``residual_scale = 1``.  Noise is
  added to the magnitudes.  The measurement is invariant to translation
  (wrapped within the padded frame), point reflection and a global phase,
  hence several restarts and the best-residual rule.
* ``HDR``: DAPS/DiffStateGrad's ``clip(scale * x, -1, 1)`` on ``[-1, 1]``
  data with scale 2; in ``[0, 1]`` units ``clip(scale * (x - 1/2) + 1/2, 0, 1)``.
  PiGDM's pseudo-inverse inverts the scaling where the value is not clipped.
* ``Quantize``: ``y = round(x * (L - 1)) / (L - 1)`` with ``L = 2^bits``
  levels (PiGDM's quantisation; its gradient is the straight-through identity),
  ``h_dagger = identity`` on the grid values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_SIGMA_Y, Operator


class PhaseRetrieval(Operator):
    name = "phase_retrieval"
    residual_scale = 1.0

    def __init__(self, in_shape, oversample: float = 2.0, sigma_y: float = DEFAULT_SIGMA_Y):
        super().__init__(in_shape, sigma_y)
        if oversample < 0:
            raise ValueError(f"oversampling must be >= 0, got {oversample}")
        _, h, w = self.in_shape
        self.oversample = float(oversample)
        self.pad_h, self.pad_w = int(oversample / 8.0 * h), int(oversample / 8.0 * w)

    @property
    def out_shape(self):
        c, h, w = self.in_shape
        return (c, h + 2 * self.pad_h, w + 2 * self.pad_w)

    def A(self, x):  # noqa: N802
        xp = F.pad(x, (self.pad_w, self.pad_w, self.pad_h, self.pad_h))
        return torch.fft.fft2(xp, norm="ortho").abs()

    def visualize(self, y):
        """Log-magnitude spectrum, centred and scaled to ``[0, 1]`` per image."""
        v = torch.fft.fftshift(torch.log1p(y.clamp_min(0)), dim=(-2, -1))
        lo = v.flatten(1).min(1).values.reshape(-1, 1, 1, 1)
        hi = v.flatten(1).max(1).values.reshape(-1, 1, 1, 1)
        return (v - lo) / (hi - lo).clamp_min(1e-12)

    def params(self):
        return {**super().params(), "oversample": self.oversample, "padding": [self.pad_h, self.pad_w]}


class HDR(Operator):
    name = "hdr"

    def __init__(self, in_shape, scale: float = 2.0, sigma_y: float = DEFAULT_SIGMA_Y):
        super().__init__(in_shape, sigma_y)
        if scale <= 0:
            raise ValueError(f"HDR scale must be > 0, got {scale}")
        self.scale = float(scale)

    def A(self, x):  # noqa: N802
        return torch.clamp(self.scale * (x - 0.5) + 0.5, 0.0, 1.0)

    def h_dagger(self, y):
        return (y - 0.5) / self.scale + 0.5

    def params(self):
        return {**super().params(), "scale": self.scale}


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """True rounding forward, identity gradient (straight-through): quantisation here, JPEG's coefficients."""
    return _RoundSTE.apply(x)


class Quantize(Operator):
    name = "quantize"

    def __init__(self, in_shape, bits: int = 3, sigma_y: float = 0.0):
        super().__init__(in_shape, sigma_y)
        if not 1 <= int(bits) <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        self.levels = 2 ** int(bits)

    def A(self, x):  # noqa: N802
        q = self.levels - 1
        return round_ste(torch.clamp(x, 0, 1) * q) / q

    def h_dagger(self, y):
        return y

    def params(self):
        return {**super().params(), "levels": self.levels}
