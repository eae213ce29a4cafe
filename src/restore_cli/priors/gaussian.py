"""An analytic Gaussian image prior whose denoiser is exact.

``x ~ N(mu, Sigma)`` in the model space ``[-1, 1]``, with
``Sigma = C (x) S``: a 3x3 (or 1x1) colour covariance ``C`` times a stationary
spatial covariance ``S`` that is diagonal in the 2-D DFT, with power spectrum
``s(f) ∝ (|f|^2 + f0^2)^(-beta/2)`` (``f`` in cycles per pixel) normalised to
mean 1 on the image grid, so that ``C`` is the per-pixel covariance.  The
boundary is periodic.

With ``C = Q diag(lam) Q^T`` the eigenvectors of ``Sigma`` are the colour
eigenvectors times the Fourier modes and its eigenvalues ``lam_c * s(f)``.
The MMSE denoiser (Tweedie) is then exact and costs two FFTs:

    E[x0 | x] = mu + Sigma (Sigma + sigma^2 I)^{-1} (x - mu).

It is the test oracle of every solver (for a linear task the posterior is
Gaussian and known in closed form) and a fast classical baseline (its
posterior mean is the Wiener filter).  Default parameters were fitted to
scikit-image's photographs by ``scripts/fit_gaussian_prior.py``.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

from ..rng import Generators, randn
from .base import Prior, Schedule


def _load_fit() -> dict:
    return json.loads(resources.files("restore_cli").joinpath("data/gaussian_prior.json").read_text())


class GaussianPrior(Prior):
    name = "gaussian"

    def __init__(self, mean, color_cov, beta: float, f0: float, schedule: Schedule | None = None):
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        c = torch.as_tensor(color_cov, dtype=torch.float64).reshape(len(mean), len(mean))
        super().__init__(schedule or Schedule.ddpm_linear(), channels=len(mean))
        lam, q = torch.linalg.eigh(c)
        if bool((lam <= 0).any()):
            raise ValueError("the colour covariance must be positive definite")
        self.register_buffer("mu", mean)
        self.register_buffer("color_cov", c)
        self.register_buffer("lam", lam)
        self.register_buffer("q", q)
        self.beta, self.f0 = float(beta), float(f0)
        self._spec_cache: dict = {}

    @classmethod
    def fitted(cls, channels: int = 3, schedule: Schedule | None = None, fit: str = "photos") -> "GaussianPrior":
        """The prior fitted to natural photographs (RGB, or its luminance for 1 channel), or with
        ``fit="fashion-mnist"`` to the Fashion-MNIST training split (grey, the bundled models' data)."""
        fit_name, fit = fit, _load_fit()
        if fit_name == "fashion-mnist":
            if channels != 1:
                raise ValueError("the Fashion-MNIST Gaussian prior is grey (1 channel)")
            fit = fit["fashion_mnist"]
        elif fit_name != "photos":
            raise ValueError(f"unknown Gaussian prior fit {fit_name!r}: photos or fashion-mnist")
        if channels == 3:
            return cls(fit["mean"], fit["color_cov"], fit["beta"], fit["f0"], schedule)
        if channels == 1:
            return cls([fit["grey_mean"]], [[fit["grey_var"]]], fit["beta"], fit["f0"], schedule)
        raise ValueError(f"the Gaussian prior supports 1 or 3 channels, got {channels}")

    def spectrum(self, h: int, w: int) -> torch.Tensor:
        """``s(f)`` on the ``h x w`` DFT grid, mean 1 (float64)."""
        key = (h, w)
        if key not in self._spec_cache:
            fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
            fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
            s = (fy**2 + fx**2 + self.f0**2) ** (-self.beta / 2)
            self._spec_cache[key] = s / s.mean()
        return self._spec_cache[key]

    def _eig(self, h, w, device):
        """Eigenvalues of Sigma, ``[C, H, W]``: ``lam_c * s(f)``."""
        return (self.lam[:, None, None] * self.spectrum(h, w).to(self.lam.device)[None]).to(device)

    def _spectral(self, v: torch.Tensor, fn) -> torch.Tensor:
        """``Q F^-1 diag(fn(eigs)) F Q^T v`` for ``v`` in ``[B, C, H, W]``."""
        dt = v.dtype
        v64 = v.to(torch.float64)
        rot = torch.einsum("dc,bdhw->bchw", self.q, v64)  # Q^T v
        spec = torch.fft.fft2(rot)
        out = torch.fft.ifft2(spec * fn(self._eig(v.shape[-2], v.shape[-1], v.device))).real
        return torch.einsum("cd,bdhw->bchw", self.q, out).to(dt)

    def _denoise(self, x, sigma):
        mu = self.mu.to(x.dtype).reshape(1, -1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1, 1)
        dt = x.dtype
        r = (x - mu).to(torch.float64)
        rot = torch.einsum("dc,bdhw->bchw", self.q, r)
        eig = self._eig(x.shape[-2], x.shape[-1], x.device)[None]
        out = torch.fft.ifft2(torch.fft.fft2(rot) * (eig / (eig + s2**2))).real
        return mu + torch.einsum("cd,bdhw->bchw", self.q, out).to(dt)

    def cov_apply(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma v``."""
        return self._spectral(v, lambda e: e)

    def sample(self, shape, gens: Generators) -> torch.Tensor:
        """Exact samples ``mu + Sigma^{1/2} n`` of shape ``[len(gens), C, H, W]`` (model space)."""
        n = randn(shape, gens, dtype=torch.float64)
        return self.mu.reshape(1, -1, 1, 1) + self._spectral(n, lambda e: e.sqrt())

    # -- the exact posterior of a linear task (model space) ---------------------------
    # The operator acts on images (x + 1) / 2, so y = H x + b + n with H = A / 2, b = A(1) / 2.

    def posterior_mean(self, op, y: torch.Tensor, iters: int = 500, tol: float = 1e-10) -> torch.Tensor:
        """``E[x | y] = mu + Sigma H^T (H Sigma H^T + s^2 I)^{-1} (y - b - H mu)`` by CG (any size).

        Returns the posterior mean as an image in ``[0, 1]`` units (not clamped).
        It is the Wiener filter of the task: a classical baseline.
        """
        from ..ops.base import cg

        if not op.linear:
            raise ValueError("the Gaussian posterior is closed-form for linear operators only")
        y64 = y.to(torch.float64)
        mu = self.mu.reshape(1, -1, 1, 1).expand(y.shape[0], -1, *op.in_shape[1:])
        with torch.no_grad():
            hmu_b = op.A(self.decode(mu.to(torch.float64)).to(torch.float64))  # H mu + b
            s2 = max(op.sigma_y, 1e-6) ** 2

            def apply(v):
                return op.A(self.cov_apply(op.A_adjoint(v) / 2) / 2) + s2 * v

            v = cg(apply, y64 - hmu_b, iters=iters, tol=tol)
            m = mu + self.cov_apply(op.A_adjoint(v) / 2)
        return self.decode(m)

    def posterior_dense(self, op, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior mean and per-pixel standard deviation (image units), by dense algebra.

        For tests on small images (``C*H*W`` up to a few thousand); float64.
        """
        c, h, w = op.in_shape
        n = c * h * w
        eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
        sigma = self.cov_apply(eye).reshape(n, n)  # symmetric
        sigma = (sigma + sigma.T) / 2
        outs = []
        for i in range(y.shape[0]):
            opi = op.select([i])
            hmat = torch.stack([opi.A(e[None] / 2).reshape(-1) for e in eye], 1)  # [m, n]
            b = opi.A(torch.full((1, c, h, w), 0.5, dtype=torch.float64)).reshape(-1)
            mu = self.mu.reshape(-1, 1, 1).expand(c, h, w).reshape(-1)
            s = hmat @ sigma @ hmat.T + (op.sigma_y**2) * torch.eye(hmat.shape[0], dtype=torch.float64)
            k = torch.linalg.solve(s, hmat @ sigma).T  # Sigma H^T S^{-1}
            m = mu + k @ (y[i].reshape(-1).to(torch.float64) - b - hmat @ mu)
            cov = sigma - k @ hmat @ sigma
            outs.append(((m.reshape(c, h, w) + 1) / 2, cov.diagonal().clamp_min(0).sqrt().reshape(c, h, w) / 2))
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def info(self):
        return {**super().info(), "beta": self.beta, "f0": self.f0, "mean": self.mu.tolist()}
