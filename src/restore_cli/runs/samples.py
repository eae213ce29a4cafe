"""Posterior samples of one image (``--samples N``): their mean and their per-pixel spread.

A run with ``--samples N`` restores every image N times, each sample with a generator of its own
(``rng.sample_generators``), and writes the samples, their mean (the MMSE estimate: the written
``<stem>.png``) and their per-pixel standard deviation, as numbers (``<stem>.std.npy``) and as a
colour map with a scale bar (``<stem>.std.png``).

* :class:`Moments` accumulates mean and variance one sample at a time (Welford, float64), so
  the samples of a large photo never have to be held together at the input's size.  The std is
  the unbiased sample std (divisor N - 1): its square is an unbiased estimate of the posterior
  variance for every N >= 2.
* The std map's picture (viridis, scale bar) is drawn by ``figures.std_figure``.
"""

from __future__ import annotations

import torch


class Moments:
    """Running per-pixel mean and unbiased variance of same-shaped images (Welford's update, float64)."""

    def __init__(self):
        self.n = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        self.n += 1
        if self._mean is None:
            self._mean, self._m2 = x.clone(), torch.zeros_like(x)
            return
        d = x - self._mean
        self._mean += d / self.n
        self._m2 += d * (x - self._mean)

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.float()

    @property
    def std(self) -> torch.Tensor:
        """The unbiased sample standard deviation (zeros for a single sample)."""
        if self.n < 2:
            return torch.zeros_like(self._mean, dtype=torch.float32)
        return (self._m2.clamp_min(0) / (self.n - 1)).sqrt().float()


def pixel_std(std: torch.Tensor) -> torch.Tensor:
    """One number per pixel of a ``[C, H, W]`` std: the root mean square over channels, ``[H, W]``."""
    return std.double().pow(2).mean(0).sqrt().float()
