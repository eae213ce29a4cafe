"""Super-resolution: ``y = D_f(x)``, a downsampling by an integer factor ``f``.

* ``filter="bicubic"`` (default, factor 4): MATLAB ``imresize``'s anti-aliased
  bicubic, as DPS's ``Resizer``: Keys' cubic (a = -0.5) widened by the factor
  (``s * cubic(s * d)``, ``s = 1/f``, support ``4f``), output pixel ``i``
  centred at input ``f * i + (f - 1) / 2``, weights normalised to sum 1,
  borders mirrored with the edge pixel repeated.  It is separable, so ``A x =
  W_h x W_w^T`` with two small matrices; the adjoint is ``W_h^T y W_w`` and the
  pseudo-inverse ``W_h^+ y (W_w^+)^T`` (closed form, through ``pinv``).
* ``filter="avgpool"`` (P2L's x8 setting): the mean of each ``f x f`` block;
  its pseudo-inverse is nearest-neighbour upsampling.

A side that is not a multiple of ``f`` gives ``floor(side / f)`` output
pixels (bicubic: the resampling grid still spans the whole side).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import DEFAULT_SIGMA_Y, LinearOperator

FILTERS = ("bicubic", "avgpool")


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return ((1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
            + (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def bicubic_matrix(n_in: int, factor: int) -> torch.Tensor:
    """The ``[n_in // factor, n_in]`` matrix of MATLAB-style anti-aliased bicubic downsampling."""
    n_out = n_in // factor
    s = 1.0 / factor
    out = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        c = (i + 0.5) * factor - 0.5
        j = torch.arange(math.floor(c - 2 * factor), math.ceil(c + 2 * factor) + 1)
        w = s * _cubic(s * (c - j.to(torch.float64)))
        idx = torch.remainder(j, 2 * n_in)
        idx = torch.where(idx >= n_in, 2 * n_in - 1 - idx, idx)  # symmetric, edge repeated
        out[i].index_add_(0, idx, w)
    return out / out.sum(1, keepdim=True)


class SuperResolution(LinearOperator):
    name = "superres"

    def __init__(self, in_shape, factor: int = 4, filter: str = "bicubic", sigma_y: float = DEFAULT_SIGMA_Y):  # noqa: A002
        super().__init__(in_shape, sigma_y)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"the super-resolution factor must be a positive integer, got {factor}")
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
        _, h, w = self.in_shape
        if h < factor or w < factor:
            raise ValueError(f"a {h}x{w} image is smaller than the factor {factor}")
        self.factor, self.filter = int(factor), filter
        if filter == "bicubic":
            self.register_buffer("wh", bicubic_matrix(h, self.factor).float(), persistent=False)
            self.register_buffer("ww", bicubic_matrix(w, self.factor).float(), persistent=False)
            # the pseudo-inverse's factors, once (PiGDM applies A_dagger at every step; an SVD per call
            # would also make a GPU wait for the host)
            self.register_buffer("ph", torch.linalg.pinv(bicubic_matrix(h, self.factor)).float(), persistent=False)
            self.register_buffer("pw", torch.linalg.pinv(bicubic_matrix(w, self.factor)).float(), persistent=False)

    @property
    def out_shape(self):
        c, h, w = self.in_shape
        return (c, h // self.factor, w // self.factor)

    def A(self, x):  # noqa: N802
        if self.filter == "avgpool":
            return F.avg_pool2d(x, self.factor)
        return self.wh.to(x.dtype) @ x @ self.ww.to(x.dtype).T

    def A_adjoint(self, y):  # noqa: N802
        if self.filter == "avgpool":
            return super().A_adjoint(y)
        return self.wh.to(y.dtype).T @ y @ self.ww.to(y.dtype)

    def A_dagger(self, y):  # noqa: N802
        if self.filter == "bicubic":
            return self.ph.to(y.dtype) @ y @ self.pw.to(y.dtype).T
        _, h, w = self.in_shape
        up = y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)
        return F.pad(up, (0, w - up.shape[-1], 0, h - up.shape[-2]))

    def params(self):
        return {**super().params(), "factor": self.factor, "filter": self.filter}
