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
scikit-image's photographs by ``training/fit_gaussian_prior.py``.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

from ..ops.base import cg
from ..ops.blur import dct1_matrix
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
            s = self._raw_spectrum(torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64))
            self._spec_cache[key] = s / s.mean()
        return self._spec_cache[key]

    def _raw_spectrum(self, fy: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        return (fy[:, None] ** 2 + fx[None, :] ** 2 + self.f0**2) ** (-self.beta / 2)

    def _cosine_spectrum(self, h: int, w: int) -> torch.Tensor:
        """``s(f)`` at the DCT-I frequencies ``(k / 2(h-1), l / 2(w-1))``, with the ``h x w`` torus' normalisation."""
        fy = torch.arange(h, dtype=torch.float64) / (2 * max(h - 1, 1))
        fx = torch.arange(w, dtype=torch.float64) / (2 * max(w - 1, 1))
        norm = self._raw_spectrum(torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)).mean()
        return self._raw_spectrum(fy, fx) / norm

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

    def posterior_mean(self, op, y: torch.Tensor, iters: int = 500, tol: float = 1e-10,
                       return_info: bool = False):
        """``E[x | y] = mu + Sigma H^T (H Sigma H^T + s^2 I)^{-1} (y - b - H mu)`` (any size), float64.

        Returns the posterior mean as an image in ``[0, 1]`` units (not clamped): the Wiener filter
        of the task, a classical baseline.  ``return_info=True`` also returns a dict:
        ``converged`` and ``rel_residual`` (one per image: the relative residual
        ``||rhs - K v|| / ||rhs||`` of the linear system solved, ``<= tol`` when converged),
        ``iterations`` (the most any image needed), ``system`` and ``tol``.

        ``Sigma``'s eigenvalues span ~6 decades (``beta = 3``, small ``f0``) and ``s^2`` is small,
        so plain CG stalls (hundreds of iterations at a residual ~0.5 on 512x512).  For blur,
        inpainting and super-resolution, which act on every channel alike, the solve runs in
        the colour eigenbasis of ``Sigma`` (one system per image and rotated channel, exact) with
        CG preconditioned as :meth:`_posterior_system` describes; the circular-border blur is
        solved exactly by its preconditioner (the closed-form Wiener filter, one iteration).  Any
        other linear operator gets plain CG.  A solve that stops at ``iters`` above ``tol`` is
        reported (``converged`` false) by the caller, never taken as exact.
        """
        if not op.linear:
            raise ValueError("the Gaussian posterior is closed-form for linear operators only")
        b = y.shape[0]
        mu = self.mu.reshape(1, -1, 1, 1).expand(b, -1, *op.in_shape[1:]).to(torch.float64)
        delta = torch.zeros_like(mu)
        rel = torch.zeros(b, dtype=torch.float64)
        n_iter, systems = 0, []
        with torch.no_grad():
            r = y.to(torch.float64) - op.A(self.decode(mu))  # y - b - H mu
            s2 = max(op.sigma_y, 1e-6) ** 2
            for idx, system in self._posterior_groups(op, b):
                opi = op if len(idx) == b else op.select(idx)
                d, rel_i, n = self._posterior_solve(opi, r[idx], s2, system, iters, tol)
                delta[idx], rel[idx] = d, rel_i.cpu()
                n_iter, systems = max(n_iter, n), systems + [system]
        out = self.decode(mu + delta)
        if not return_info:
            return out
        return out, {"converged": [bool(v <= tol) for v in rel], "rel_residual": rel.tolist(),
                     "iterations": n_iter, "system": "+".join(systems), "tol": tol}

    def _posterior_groups(self, op, b: int) -> list[tuple[list[int], str]]:
        """``[(image indices, system)]``: the linear system each image's posterior mean is solved in."""
        from ..ops import Blur, Inpainting, SuperResolution

        everyone = list(range(b))
        if isinstance(op, Blur):
            return [(everyone, "data" if op.border == "circular" else "precision")]
        if isinstance(op, SuperResolution):
            return [(everyone, "data")]
        if not isinstance(op, Inpainting):
            return [(everyone, "generic")]
        # large holes (most missing pixels have only missing neighbours): the data-space system;
        # scattered holes: the precision form (see _posterior_system)
        hole = 1.0 - op.mask.to(torch.float64)
        interior = -torch.nn.functional.max_pool2d(-hole, 3, stride=1, padding=1)
        frac = interior.flatten(1).sum(1) / hole.flatten(1).sum(1).clamp_min(1.0)
        names = ["data" if float(f) >= 0.5 or float(hk.sum()) == 0 else "precision" for f, hk in zip(frac, hole)]
        if len(names) == 1:  # one mask for the whole batch
            return [(everyone, names[0])]
        return [([i for i, n in enumerate(names) if n == name], name) for name in ("data", "precision") if name in names]

    def _posterior_solve(self, op, r: torch.Tensor, s2: float, system: str, iters: int, tol: float):
        """``(mean - mu, relative residual per image, iterations)`` for the data residual ``r``."""
        if system == "generic":  # an operator that may mix channels: plain CG on the data-space system
            def apply(v):
                return op.A(self.cov_apply(op.A_adjoint(v) / 2)) / 2 + s2 * v

            v, info = cg(apply, r, iters=iters, tol=tol, return_info=True)
            return self.cov_apply(op.A_adjoint(v) / 2), info.rel_residual, info.iterations
        b, c = r.shape[:2]
        q = self.q.to(r.device)

        def to_systems(v):  # [B, C, h, w] -> rotated colours Q^T v, one system per (image, channel)
            return torch.einsum("dc,bdhw->bchw", q, v).reshape(b * c, 1, *v.shape[-2:])

        def from_systems(v):
            return torch.einsum("cd,bdhw->bchw", q, v.reshape(b, c, *v.shape[-2:]))

        apply, rhs, precond, finish = self._posterior_system(op, to_systems(r), s2, system, b, c)
        v, info = cg(apply, rhs, iters=iters, tol=tol, precond=precond, return_info=True)
        # per image: || residual over its channels || / || rhs over its channels ||
        bn2 = rhs.flatten(1).pow(2).sum(1)
        rel = ((info.rel_residual**2 * bn2).reshape(b, c).sum(1) / bn2.reshape(b, c).sum(1).clamp_min(1e-300)).sqrt()
        return from_systems(finish(v)), rel, info.iterations

    def _posterior_system(self, op, r: torch.Tensor, s2: float, system: str, b: int, c: int):
        """``(apply, rhs, precond, finish)`` on ``[B * C, 1, h, w]`` (rotated colour ``k`` of image ``i`` at
        ``i * C + k``): CG solves ``apply(v) = rhs`` and the mean is ``mu + Q finish(v)``.

        With ``H = A / 2`` (the operator acts on ``(x + 1) / 2``) and ``Sigma_k = lam_k S`` the
        covariance of rotated colour ``k``, both systems are exact: ``"data"`` solves
        ``(H Sigma_k H^T + s^2) v = Q^T r`` (``finish = Sigma_k H^T``), ``"precision"`` solves
        ``(Sigma_k^{-1} + H^T H / s^2) d = H^T Q^T r / s^2`` (``finish = identity``).  Only the
        preconditioners (SPD approximations of the inverse) are approximate:

        * blur, circular border: ``H Sigma_k H^T`` is diagonal in Fourier; its exact inverse;
        * blur, reflect / zeros border (precision form: ``Sigma^{-1}`` is nearly local, so the
          border matters little there): ``Sigma^{-1}`` and ``H^T H`` as DCT-I diagonals
          (``Blur.cosine_otf2``), in which a reflect-border blur by a kernel symmetric in both axes
          is exact (~100 iterations at 512x512); motion kernels need several hundred;
        * inpainting, large holes: ``M (Sigma_k / 4 + s^2)^{-1} M + (1 - M) / s^2``, exact far from
          the holes' edges;
        * inpainting, scattered holes (precision form): ``W (Sigma_k^{-1} + mean(M) / (4 s^2))^{-1} W``
          with ``W`` the Jacobi scaling that matches the diagonal;
        * super-resolution: the circulant matching ``H S H^T`` at the centre of the measurement grid.
        """
        from ..ops import Blur, Inpainting, SuperResolution

        h, w = op.in_shape[1:]
        lam = self.lam.to(r.device).repeat(b).reshape(b * c, 1, 1, 1)
        spec = self.spectrum(h, w).to(r.device)

        def per_system(t):  # a per-image [B or 1, 1, ...] tensor for the B * C systems
            return t if t.shape[0] == 1 else t.repeat_interleave(c, 0)

        def A(v):  # noqa: N802 - H acts on every channel alike, so on rotated ones too
            return _per_channel(op.A, v, b, c)

        def At(v):  # noqa: N802
            return _per_channel(op.A_adjoint, v, b, c)

        def fourier(v, mult):
            return torch.fft.ifft2(torch.fft.fft2(v) * mult).real

        def cov(v):  # Sigma_k v
            return fourier(v, lam * spec)

        if system == "data":
            def apply(v):
                return A(cov(At(v) / 2)) / 2 + s2 * v

            if isinstance(op, Blur):
                mult = 1.0 / (per_system(op._centered_otf(torch.float64).abs() ** 2) * lam * spec / 4 + s2)

                def precond(u):
                    return fourier(u, mult)
            elif isinstance(op, Inpainting):
                mask = per_system(op.mask.to(torch.float64))
                mult = 1.0 / (lam * spec / 4 + s2)

                def precond(u):
                    return mask * fourier(mask * u, mult) + (1 - mask) * u / s2
            elif isinstance(op, SuperResolution):
                mult = 1.0 / (lam * self._probe_spectrum(op, r.shape[-2:], r.device) + s2)

                def precond(u):
                    return fourier(u, mult)
            else:
                precond = None
            return apply, r, precond, lambda v: cov(At(v) / 2)

        inv_eig = 1.0 / (lam * spec)  # Sigma_k^{-1}
        rhs = At(r) / (2 * s2)
        if isinstance(op, Inpainting):
            mask = per_system(op.mask.to(torch.float64))
            alpha = mask.flatten(1).mean(1).reshape(-1, 1, 1, 1)
            diag = inv_eig.mean((-2, -1), keepdim=True)  # Sigma_k^{-1}'s diagonal
            jacobi = ((diag + alpha / (4 * s2)) / (diag + mask / (4 * s2))).sqrt()

            def apply(d):
                return fourier(d, inv_eig) + mask * d / (4 * s2)

            def precond(u):
                return jacobi * fourier(jacobi * u, 1.0 / (inv_eig + alpha / (4 * s2)))
        else:  # blur, reflect or zeros border
            def apply(d):
                return fourier(d, inv_eig) + At(A(d)) / (4 * s2)

            if min(h, w) > 1:
                otf2 = per_system(op.cosine_otf2(torch.float64))
                mult = 1.0 / (1.0 / (lam * self._cosine_spectrum(h, w).to(r.device)) + otf2 / (4 * s2))
                uh, uw = dct1_matrix(h, device=r.device), dct1_matrix(w, device=r.device)

                def precond(u):
                    return uh @ ((uh @ u @ uw) * mult) @ uw
            else:
                mult = 1.0 / (inv_eig + per_system(op._centered_otf(torch.float64).abs() ** 2) / (4 * s2))

                def precond(u):
                    return fourier(u, mult)
        return apply, rhs, precond, lambda d: d

    def _probe_spectrum(self, op, grid, device) -> torch.Tensor:
        """Eigenvalues of the circulant on the measurement ``grid`` whose kernel is ``H S H^T``'s
        column at the grid's centre (``S`` the spatial covariance)."""
        hm, wm = grid
        c, h, w = op.in_shape
        delta = torch.zeros(1, c, hm, wm, dtype=torch.float64, device=device)
        delta[..., hm // 2, wm // 2] = 1.0
        t = torch.fft.ifft2(torch.fft.fft2(op.A_adjoint(delta) / 2) * self.spectrum(h, w).to(device)).real
        col = op.A(t)[:, :1] / 2  # the same in every channel
        return torch.fft.fft2(torch.roll(col, (-(hm // 2), -(wm // 2)), dims=(-2, -1))).real.clamp_min(0)

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


def _per_channel(fn, v: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """``fn`` (an operator acting on ``[B, C, h, w]``, the same on every channel) on ``[B * C, 1, h, w]``."""
    out = fn(v.reshape(b, c, *v.shape[-2:]))
    return out.reshape(b * c, 1, *out.shape[-2:])
