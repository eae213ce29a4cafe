"""``<stem>.compare.png`` (``--compare``): the panels side by side under a strip of labels (reference,
measurement, restored, std), with the missing region of an inpainting task outlined in colour.

The figure is always RGB, so that the outline (magenta) shows on grey images too, and on the black
backgrounds of Fashion-MNIST, where a zero-filled box is otherwise invisible.  A random mask (scattered
pixels) has no outline: its measurement shows the missing pixels themselves.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .io import side_by_side, unfit

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
                   std: torch.Tensor | None = None, samples: int = 1) -> torch.Tensor:
    """The compare figure ``[3, H, W]``: reference (when known), measurement, restored (the samples' mean
    with ``samples > 1``) and, given ``std``, its colour map and scale bar; ``op`` is the image's
    operator, ``how`` how the image was fitted to the model (``io.fit_to``: the mask is at the working size)."""
    from .samples import std_colours, with_colour_bar

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
