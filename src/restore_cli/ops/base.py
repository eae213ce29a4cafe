"""Degradation operators: the forward model ``A`` kept apart from the noise.

``A(x)`` is the clean, differentiable forward model on images in ``[0, 1]``;
``forward(x, gens)`` (calling the operator) adds Gaussian noise of standard
deviation ``sigma_y`` (in ``[0, 1]`` image units) drawn from one generator per
image.  Linear operators also give ``A_adjoint`` (by default an autograd
vector-Jacobian product, which is exact for a linear map, as P2L's Appendix E
notes) and ``A_dagger`` (closed form where one exists, else conjugate
gradients on the normal equations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..rng import Generators, randn_like

DEFAULT_SIGMA_Y = 0.01  # [0, 1] units, for operators built directly; the CLI converts --noise-sigma (registry.noise_unit)


class Operator(nn.Module):
    """A measurement operator ``y = A(x) + sigma_y * n``.

    ``residual_scale``: the reference codes of DPS, DAPS, PSLD and ReSample
    measure images in ``[-1, 1]``; for the same image, a residual there is
    ``residual_scale`` times the residual in our ``[0, 1]`` convention (2 for
    linear operators and HDR, 1 for phase retrieval, which maps to ``[0, 1]``
    first).  Solvers multiply residuals by it so that the papers' step sizes
    keep their meaning.
    """

    linear: bool = False
    in_shape: tuple[int, int, int]  # (C, H, W) of the images it measures
    residual_scale: float = 2.0
    name: str = "operator"

    def __init__(self, in_shape, sigma_y: float = DEFAULT_SIGMA_Y):
        super().__init__()
        self.in_shape = tuple(int(v) for v in in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        self.sigma_y = float(sigma_y)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - named like the math
        raise NotImplementedError

    def forward(self, x: torch.Tensor, gens: Generators | None = None) -> torch.Tensor:
        y = self.A(x)
        if self.sigma_y > 0:
            if gens is None:
                raise ValueError("a noisy measurement needs one generator per image")
            y = y + self.sigma_y * randn_like(y, gens)
        return y

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """The shape of one measurement: the image's for the image-valued operators (most of them)."""
        return self.in_shape

    def visualize(self, y: torch.Tensor) -> torch.Tensor:
        """A measurement as a viewable image in ``[0, 1]`` (for ``<stem>.measurement.png``)."""
        return y.clamp(0, 1)

    def h_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """PiGDM's pseudo-inverse ``h^dagger`` (Eq. 8/9); linear operators use ``A_dagger``."""
        raise NotImplementedError(f"{type(self).__name__} defines no pseudo-inverse")

    @property
    def has_h_dagger(self) -> bool:
        return type(self).h_dagger is not Operator.h_dagger

    @property
    def task_key(self) -> str:
        """Key of the task-specific defaults of the solvers (``inpaint_box``, ``deblur_gaussian``, ...)."""
        kind = getattr(self, "kind", None)
        return f"{self.name}_{kind}" if kind else self.name

    def params(self) -> dict:
        """The operator's parameters, for the run record."""
        return {"name": self.name, "task_key": self.task_key, "sigma_y": self.sigma_y}

    def select(self, idx: torch.Tensor | list[int] | slice) -> "Operator":
        """The operator restricted to some images of the batch (per-image parameters)."""
        return self


class LinearOperator(Operator):
    linear = True

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``A^T y`` by a vector-Jacobian product (exact for a linear map)."""
        x = torch.zeros((y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.A(x), x, grad_outputs=y)
        return g

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Minimum-norm least-squares solution ``A^+ y`` by CG on ``A^T A x = A^T y``.

        Subclasses override this with a closed form where one exists.
        """
        b = self.A_adjoint(y)
        return cg(lambda v: self.A_adjoint(self.A(v)), b, iters=300, tol=1e-9)

    def h_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self.A_dagger(y)

    def solve_AAt(self, v: torch.Tensor, r2: torch.Tensor | float, s2: float) -> torch.Tensor:  # noqa: N802
        """``(r2 * A A^T + s2 * I)^{-1} v`` per image (PiGDM's Eq. 7); CG unless overridden.

        CG stops at a relative residual of ``default_tol(v.dtype)`` (1e-10 in float64, 1e-6 in
        float32: a tighter target is below float32's rounding and only burns the iteration cap).
        """
        r2 = _per_image(r2, v)

        def op(u):
            return r2 * self.A(self.A_adjoint(u)) + s2 * u

        return cg(op, v, iters=100, tol=default_tol(v.dtype))

    def prox(self, z: torch.Tensor, rho: float, y: torch.Tensor) -> torch.Tensor:
        """The data-consistency proximal map ``argmin_x 1/2 ||y - A x||^2 + rho/2 ||x - z||^2`` per image.

        The minimiser solves ``(A^T A + rho I) x = A^T y + rho z``; by the push-through (Woodbury)
        identity it is ``z + A^T (A A^T + rho I)^{-1} (y - A z)``, solved in measurement space by
        :meth:`solve_AAt`: closed form where an operator has one (inpainting: ``(y + rho z) / (1 + rho)``
        on the observed pixels and ``z`` elsewhere; the circular blur in Fourier), preconditioned or
        plain CG otherwise (capped at ``solve_AAt``'s iterations: inaccurate for a tiny ``rho`` on an
        ill-conditioned ``A``).  ``rho > 0`` (DiffPIR's ``rho_t``; a weight on the data term is ``1 / rho``
        here).
        """
        if not rho > 0:
            raise ValueError(f"prox needs rho > 0, got {rho}")
        return z + self.A_adjoint(self.solve_AAt(y - self.A(z), 1.0, float(rho)))


def _per_image(a, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() > 0 else a


def default_tol(dtype: torch.dtype) -> float:
    """A CG tolerance that ``dtype`` can reach: 1e-10 in float64, 1e-6 in float32 and below."""
    return 1e-10 if dtype == torch.float64 else 1e-6


@dataclass
class CGInfo:
    """How a (preconditioned) CG solve ended, per image of the batch."""

    converged: torch.Tensor  # bool [B]: relative residual <= tol
    rel_residual: torch.Tensor  # [B]: ||b - apply(x)|| / ||b||, recomputed from x at the end
    iterations: int  # iterations run (the batch stops when every image has converged)


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
       iters: int = 100, tol: float = 1e-8, precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
       return_info: bool = False, sync_every: int = 8):
    """(Preconditioned) conjugate gradients for a symmetric positive semi-definite ``apply``, per image.

    Every image of the batch (first dimension) is its own system; an image stops moving once its
    relative residual ``||r|| / ||b||`` is below ``tol`` and iteration stops when every image has.
    ``precond``: an approximation of ``apply``'s inverse (symmetric positive definite, per image);
    the residual tested is still that of the original system.  ``return_info=True`` returns
    ``(x, CGInfo)``, with the final residual recomputed from ``x`` (one more ``apply``).

    Which images are still moving is decided on the device at every iteration; whether all have stopped
    (a host-device synchronisation) is asked after iterations 1, 2, 4, ... up to ``sync_every`` and then
    every ``sync_every`` iterations (an exact one-step system stops after one), and never with
    ``sync_every=0`` (a fixed budget of ``iters``, as DDS's and P2L's few steps are): the result is the
    same either way, since a stopped image is no longer touched.
    """
    dims = tuple(range(1, b.dim()))

    def dot(u, v):
        return (u * v).sum(dims, keepdim=True)

    def safe_div(a, d):
        return a / torch.where(d == 0, torch.ones_like(d), d)

    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = dot(r, z)
    bnorm = dot(b, b).clamp_min(1e-30)
    moved = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)  # iterations each image took
    for it in range(iters):
        active = (dot(r, r) / bnorm > tol**2)
        asks = sync_every and it and (it % sync_every == 0 or (it < sync_every and it & (it - 1) == 0))
        if asks and not bool(active.any()):
            break
        moved = moved + active.reshape(-1)
        ap = apply(p)
        alpha = torch.where(active, safe_div(rz, dot(p, ap)), torch.zeros_like(rz))
        x = torch.where(active, x + alpha * p, x)  # a stopped image is not touched (not even by 0 * NaN)
        r = torch.where(active, r - alpha * ap, r)
        z = precond(r) if precond is not None else r
        rz_new = dot(r, z)
        beta = safe_div(rz_new, rz)
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_new, rz)
    if not return_info:
        return x
    res = b - apply(x)
    rel = (dot(res, res) / bnorm).sqrt().reshape(-1)
    return x, CGInfo(rel <= tol, rel, int(moved.max()) if moved.numel() else 0)
