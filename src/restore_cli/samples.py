"""Posterior samples of one image (``--samples N``): their mean, their per-pixel spread and its picture.

A run with ``--samples N`` restores every image N times, each sample with a generator of its own
(``rng.sample_generators``), and writes the samples, their mean (the MMSE estimate: the written
``<stem>.png``) and their per-pixel standard deviation, as numbers (``<stem>.std.npy``) and as a
colour map with a scale bar (``<stem>.std.png``).

* :class:`Moments` accumulates mean and variance one sample at a time (Welford, float64), so
  the samples of a large photo never have to be held together at the input's size.  The std is
  the unbiased sample std (divisor N - 1): its square is an unbiased estimate of the posterior
  variance for every N >= 2.
* :func:`viridis` is matplotlib's perceptually uniform colour map (not a dependency here) as a
  degree-6 polynomial in t per channel (within about 0.015 of the published table).
* :func:`std_figure` and :func:`with_colour_bar` draw the map and its scale bar (0 at the
  bottom, the largest std at the top, in ``[0, 1]`` image units).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# viridis(t) = sum_i c_i t^i, per channel (R, G, B)
_VIRIDIS = torch.tensor([
    [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055260068105],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832],
], dtype=torch.float64)


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


def viridis(t: torch.Tensor) -> torch.Tensor:
    """The viridis colour of each value of ``t`` (clamped to [0, 1]): ``[3, *t.shape]`` in [0, 1]."""
    t = t.double().clamp(0, 1)
    rgb = torch.zeros((3, *t.shape), dtype=torch.float64)
    for c in reversed(_VIRIDIS):  # Horner
        rgb = rgb * t + c.reshape(3, *([1] * t.dim()))
    return rgb.clamp(0, 1).float()


def _enlarge(img: torch.Tensor, min_height: int) -> torch.Tensor:
    h = img.shape[-2]
    k = math.ceil(min_height / h) if min_height and h < min_height else 1
    return img.repeat_interleave(k, -2).repeat_interleave(k, -1) if k > 1 else img


def _label(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def colour_bar(height: int, vmax: float, bar_width: int = 14) -> torch.Tensor:
    """A vertical scale bar ``[3, height, W]`` on white: viridis from 0 (bottom) to ``vmax`` (top), labelled."""
    from PIL import Image, ImageDraw

    from .figures import font as default_font

    font = default_font(max(10, min(24, height // 18)))
    top, bottom = _label(vmax), "0"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), s, font=font)[2] for s in (top, bottom, "std"))
    text_h = probe.textbbox((0, 0), "0123456789", font=font)[3]
    width = bar_width + 4 + text_w + 2
    canvas = Image.new("RGB", (width, height), "white")
    t = torch.linspace(1, 0, height)[:, None].expand(height, bar_width)
    bar = (viridis(t).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((bar_width + 4, 0), top, fill="black", font=font)
    draw.text((bar_width + 4, max(0, height - text_h - 2)), bottom, fill="black", font=font)
    if height > 4 * text_h:
        draw.text((bar_width + 4, height // 2 - text_h // 2), "std", fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


def std_colours(std: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The colour map of a ``[C, H, W]`` std (``[3, H, W]``) and the value its top colour stands for."""
    s = pixel_std(std)
    vmax = float(s.max()) if s.numel() else 0.0
    return viridis(s / vmax if vmax > 0 else s), vmax


def with_colour_bar(figure: torch.Tensor, vmax: float, gap: int = 4) -> torch.Tensor:
    """``figure`` ([C, H, W]) with a scale bar from 0 to ``vmax`` on its right."""
    bar = colour_bar(figure.shape[-2], vmax)
    fig = figure.expand(3, -1, -1) if figure.shape[0] == 1 else figure[:3]
    return torch.cat([fig, torch.ones(3, fig.shape[-2], gap), bar], -1)


def std_figure(std: torch.Tensor, min_height: int = 256) -> torch.Tensor:
    """The per-pixel std of ``[C, H, W]`` samples as a viridis map (enlarged, nearest neighbour, to at
    least ``min_height`` pixels high) with its scale bar: ``[3, H', W']`` in [0, 1]."""
    rgb, vmax = std_colours(std)
    return with_colour_bar(_enlarge(rgb, min_height), vmax)
