"""The prior interface and the noise schedule shared by all solvers.

Solvers speak one convention, variance exploding: ``x = x0 + sigma * eps`` in
the prior's model space.  A variance-preserving diffusion model trained on
``x_vp = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` is reached through
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` and
``x_vp = x / sqrt(1 + sigma^2)``.
"""

from __future__ import annotations

import torch
from torch import nn


class Schedule:
    """A discrete VP schedule (``alpha_bar_t`` for ``t = 0 .. T-1``) seen through sigma."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if a.dim() != 1 or not bool(((a > 0) & (a <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D tensor in (0, 1]")
        self.alphas_cumprod = a
        self.sigmas = ((1 - a) / a).sqrt()  # sigma_t, increasing in t
        self.log_sigmas = self.sigmas.clamp_min(1e-12).log()

    @classmethod
    def ddpm_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def from_scheduler_config(cls, config) -> "Schedule":
        """From a diffusers scheduler (or its config): betas as that scheduler builds them."""
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(dict(config))
        return cls(sched.alphas_cumprod.to(torch.float64))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of a noise level, linear in ``log sigma`` between grid points."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        ls = s.clamp(self.sigma_min, self.sigma_max).log()
        idx = torch.searchsorted(self.log_sigmas, ls.reshape(-1)).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((ls.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return ((idx - 1).to(torch.float64) + w).reshape(s.shape)

    def ddim_sigmas(self, steps: int) -> torch.Tensor:
        """Noise levels of DDIM's uniform timestep skip (``t = 0, c, 2c, ...``), descending, then 0."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps}, got {steps}")
        c = self.num_train_timesteps // steps
        ts = torch.arange(0, c * steps, c).flip(0)
        return torch.cat([self.sigmas[ts], torch.zeros(1, dtype=torch.float64)])

    def edm_sigmas(self, steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> torch.Tensor:
        """Karras et al.'s polynomial grid from ``sigma_max`` to ``sigma_min`` (``steps`` levels), then 0."""
        i = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def as_batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """A noise level (scalar or per image) as a ``[B, 1, 1, 1]`` tensor of ``x``'s dtype.

    A Python number becomes a fill on ``x``'s device (a copy from the host would make a GPU wait)."""
    shape = (x.shape[0], *([1] * (x.dim() - 1)))
    if isinstance(sigma, (int, float)):
        return torch.full(shape, float(sigma), dtype=x.dtype, device=x.device)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    return s.reshape(-1, *([1] * (x.dim() - 1)))


class Prior(nn.Module):
    """A denoiser ``E[x0 | x0 + sigma * eps = x]`` in a model space, with the maps to images.

    ``space`` is ``"pixel"`` or ``"latent"``.  ``nfe`` counts denoiser calls
    (network function evaluations, one per image batch call).
    """

    space = "pixel"
    name = "prior"

    def __init__(self, schedule: Schedule, channels: int):
        super().__init__()
        self.schedule = schedule
        self.channels = int(channels)
        self.nfe = 0

    def denoise(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """``E[x0 | x]``; conditional priors accept ``cond=`` (prompt embeddings, per image)."""
        self.nfe += 1
        return self._denoise(x, as_batch_sigma(sigma, x), **cond)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    learns_variance = False

    def denoise_with_variance(self, x: torch.Tensor, sigma, **cond):
        """``(E[x0 | x], v)`` where ``v`` is a learned-range variance output (None for priors without one)."""
        return self.denoise(x, sigma, **cond), None

    def model_shape(self, image_shape) -> tuple[int, ...]:
        """Shape (without batch) of the model-space tensor for images of ``(C, H, W)``."""
        return tuple(image_shape)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> images in ``[0, 1]`` (pixel priors: ``[-1, 1]`` -> ``[0, 1]``)."""
        return (x + 1) / 2

    def encode(self, img: torch.Tensor, gens=None) -> torch.Tensor:
        """Images in ``[0, 1]`` -> model space; ``gens``: sample a stochastic encoder (KL) instead of its mean."""
        return img * 2 - 1

    def info(self) -> dict:
        return {"name": self.name, "space": self.space}


def vp_scale(sigma: torch.Tensor) -> torch.Tensor:
    """``sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2)``."""
    return 1.0 / torch.sqrt(1.0 + sigma**2)


__all__ = ["Schedule", "Prior", "as_batch_sigma", "vp_scale"]
