"""``<stem>.compare.png`` (``--compare``): the panels side by side under a strip of labels (reference,
measurement, restored, std), with the missing region of an inpainting task outlined in colour.

The figure is always RGB, so that the outline (magenta) shows on grey images too, and on the black
backgrounds of Fashion-MNIST, where a zero-filled box is otherwise invisible.  A random mask (scattered
pixels) has no outline: its measurement shows the missing pixels themselves.

``<stem>.std.png`` (``--samples N``): :func:`std_figure` draws the per-pixel std with :func:`viridis`
(matplotlib's perceptually uniform colour map as a degree-6 polynomial in t per channel, within about
0.015 of the published table) and a scale bar (0 at the bottom, the largest std at the top, in
``[0, 1]`` image units).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..images.read import side_by_side, unfit
from .samples import pixel_std

GAP = 4  # between panels (side_by_side's)
OUTLINE = torch.tensor([1.0, 0.0, 1.0])  # magenta: visible on black, white, grey and most photographs


def font(size: int):
    """Pillow's default font at ``size`` pixels (the fixed bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def missing_region(op) -> torch.Tensor | None:
    """One image's operator's missing pixels (``[H, W]`` bool, at the working size), for an inpainting task
    (alone or composed, ``--then``) with a contiguous mask; None otherwise."""
    inner = getattr(op, "first", op)
    mask = getattr(inner, "mask", None)
    if mask is None or getattr(inner, "kind", "") == "random":
        return None
    return mask[0, 0] < 0.5


def compare_figure(reference: torch.Tensor | None, measurement: torch.Tensor, restored: torch.Tensor, op, how: dict,
                   *, std: torch.Tensor | None = None, samples: int = 1) -> torch.Tensor:
    """The compare figure ``[3, H, W]``: reference (when known), measurement, restored (the samples' mean
    with ``samples > 1``) and, given ``std``, its colour map and scale bar; ``op`` is the image's
    operator, ``how`` how the image was fitted to the model (``images.read.fit_to``: the mask is at the working size)."""

    missing = missing_region(op)
    at_input = None if missing is None else unfit(missing[None].float(), how)[0] >= 0.5
    panels = [(reference, "reference", at_input), (measurement, "measurement", missing),
              (restored, "restored" if samples == 1 else f"restored (mean of {samples})", at_input)]
    panels = [p for p in panels if p[0] is not None]
    vmax = None
    if std is not None:
        colours, vmax = std_colours(std)
        panels.append((colours, "std", None))
    fig = side_by_side([p[0] for p in panels], gap=GAP)
    fig = fig.expand(3, -1, -1).clone() if fig.shape[0] == 1 else fig[:3].clone()
    tiles = _tiles([p[0] for p in panels], fig.shape[-2])
    for (x0, w), (_, _, region) in zip(tiles, panels):
        if region is not None:
            _outline(fig[:, :, x0:x0 + w], region)
    if vmax is not None:
        fig = with_colour_bar(fig, vmax)
    return with_labels(fig, [(x0, w, p[1]) for (x0, w), p in zip(tiles, panels)])


def _tiles(images: list[torch.Tensor], height: int) -> list[tuple[int, int]]:
    """Where :func:`io.side_by_side` put each image in a figure ``height`` pixels high: (left, width)."""
    h = images[0].shape[-2]
    k = height // h
    tiles, x = [], 0
    for im in images:
        w = max(1, round(im.shape[-1] * h / im.shape[-2])) * k
        tiles.append((x, w))
        x += w + GAP
    return tiles


def _outline(tile: torch.Tensor, region: torch.Tensor) -> None:
    """Draw the inner border of ``region`` (bool ``[h, w]``, scaled to the tile) on ``tile`` ``[3, H, W]``, in place."""
    hh, ww = tile.shape[-2:]
    inside = F.interpolate(region[None, None].float(), size=(hh, ww), mode="nearest")
    t = max(2, hh // 128)  # the line's width in pixels
    near_outside = F.max_pool2d(1 - inside, 2 * t + 1, stride=1, padding=t)  # observed pixels within t
    border = (inside[0, 0] > 0.5) & (near_outside[0, 0] > 0.5)
    tile[:, border] = OUTLINE[:, None].to(tile.dtype)


def with_labels(fig: torch.Tensor, labels: list[tuple[int, int, str]]) -> torch.Tensor:
    """``fig`` ``[3, H, W]`` under a white strip with each label centred over its (left, width) span."""
    from PIL import Image, ImageDraw

    size = max(12, min(24, fig.shape[-2] // 16))
    f = font(size)
    strip = Image.new("RGB", (fig.shape[-1], size + 8), "white")
    draw = ImageDraw.Draw(strip)
    for x0, w, text in labels:
        tw = draw.textbbox((0, 0), text, font=f)[2]
        draw.text((x0 + max(0, (w - tw) // 2), 3), text, fill="black", font=f)
    top = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255).permute(2, 0, 1)
    return torch.cat([top, fig], -2)


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

    fnt = font(max(10, min(24, height // 18)))
    top, bottom = _label(vmax), "0"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), s, font=fnt)[2] for s in (top, bottom, "std"))
    text_h = probe.textbbox((0, 0), "0123456789", font=fnt)[3]
    width = bar_width + 4 + text_w + 2
    canvas = Image.new("RGB", (width, height), "white")
    t = torch.linspace(1, 0, height)[:, None].expand(height, bar_width)
    bar = (viridis(t).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((bar_width + 4, 0), top, fill="black", font=fnt)
    draw.text((bar_width + 4, max(0, height - text_h - 2)), bottom, fill="black", font=fnt)
    if height > 4 * text_h:
        draw.text((bar_width + 4, height // 2 - text_h // 2), "std", fill="black", font=fnt)
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
