"""Inpainting: ``y = m * x`` with a binary mask ``m`` (1 = observed), zeros elsewhere.

Masks are per image (``[B, 1, H, W]``, shared by the channels) and drawn from
each image's own generator:

* ``box_mask``: a rectangle of missing pixels, by default half the image side
  (128x128 on 256x256, as DPS, ReSample and DiffStateGrad); placed at random
  inside a margin of 1/16 of the side (DPS's ``margin=(16, 16)`` on 256) or
  centred;
* ``random_mask``: each pixel missing independently with probability 0.7
  (PLoRG F.1 "70% random mask");
* ``freeform_mask``: brush strokes as in Palette / PiGDM (polylines of random
  angle, length and width, with round joints), added until 20-30% of the
  image is covered;
* ``mask_from_file``: an image file where white (>= 0.5) marks the pixels to
  fill in and black the known ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..rng import Generators, rand
from .base import DEFAULT_SIGMA_Y, LinearOperator, _per_image


class Inpainting(LinearOperator):
    name = "inpaint"

    def __init__(self, mask: torch.Tensor, channels: int, sigma_y: float = DEFAULT_SIGMA_Y, kind: str = "custom"):
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be [B, 1, H, W], got {tuple(mask.shape)}")
        super().__init__((channels, mask.shape[2], mask.shape[3]), sigma_y)
        self.register_buffer("mask", (mask > 0.5).to(torch.float32))
        self.kind = kind

    def A(self, x):  # noqa: N802
        return x * self.mask.to(x.dtype)

    def A_adjoint(self, y):  # noqa: N802 - A is a diagonal projection: self-adjoint
        return y * self.mask.to(y.dtype)

    def A_dagger(self, y):  # noqa: N802 - the pseudo-inverse of a projection is itself
        return y * self.mask.to(y.dtype)

    def solve_AAt(self, v, r2, s2):  # A A^T = diag(m)
        d = _per_image(r2, v) * self.mask.to(v.dtype) + s2
        return torch.where(d > 0, v / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(v))

    def params(self):
        return {**super().params(), "mask": self.kind, "missing_fraction": float(1 - self.mask.mean())}

    def select(self, idx):
        return Inpainting(self.mask[idx], self.in_shape[0], self.sigma_y, self.kind)


def box_mask(h: int, w: int, gens: Generators, size: tuple[int, int] | None = None,
             placement: str = "random") -> torch.Tensor:
    bh, bw = size if size is not None else (h // 2, w // 2)
    if not (0 < bh <= h and 0 < bw <= w):
        raise ValueError(f"box {bh}x{bw} does not fit a {h}x{w} image")
    masks = torch.ones(len(gens), 1, h, w)
    for i, g in enumerate(gens):
        if placement == "center":
            top, left = (h - bh) // 2, (w - bw) // 2
        elif placement == "random":
            # DPS: top, left ~ randint(16, 256 - 16 - 128), upper bound exclusive
            mh, mw = min(h // 16, (h - bh) // 2), min(w // 16, (w - bw) // 2)
            top = int(torch.randint(mh, max(h - bh - mh, mh + 1), (1,), generator=g))
            left = int(torch.randint(mw, max(w - bw - mw, mw + 1), (1,), generator=g))
        else:
            raise ValueError(f"box placement must be 'random' or 'center', got {placement!r}")
        masks[i, :, top:top + bh, left:left + bw] = 0
    return masks


def random_mask(h: int, w: int, gens: Generators, missing: float = 0.7) -> torch.Tensor:
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing fraction must be in [0, 1), got {missing}")
    return (rand((1, h, w), gens) >= missing).to(torch.float32)


def _stroke(canvas: np.ndarray, pts: np.ndarray, width: float) -> None:
    """Rasterise a polyline of the given width (round caps and joints) into ``canvas``."""
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = (width / 2.0) ** 2
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        dy, dx = y1 - y0, x1 - x0
        ll = dy * dy + dx * dx
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / ll, 0, 1) if ll > 0 else np.zeros_like(yy)
        d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
        canvas[d2 <= r2] = 1.0


def freeform_mask(h: int, w: int, gens: Generators, coverage: tuple[float, float] = (0.2, 0.3)) -> torch.Tensor:
    """Brush-stroke masks covering a fraction of the image drawn in ``coverage``."""
    lo, hi = coverage
    if not 0 < lo <= hi < 1:
        raise ValueError(f"coverage must satisfy 0 < lo <= hi < 1, got {coverage}")
    side = math.sqrt(h * w)
    out = []
    for g in gens:
        target = lo + (hi - lo) * float(torch.rand((), generator=g))
        for _attempt in range(20):
            hole = np.zeros((h, w))
            while hole.mean() < target:
                prev = hole.copy()
                n_vertex = int(torch.randint(4, 13, (), generator=g))
                width = max(1.0, side * (0.04 + 0.08 * float(torch.rand((), generator=g))))
                y, x = float(torch.rand((), generator=g)) * h, float(torch.rand((), generator=g)) * w
                pts = [(y, x)]
                angle = 2 * math.pi * float(torch.rand((), generator=g))
                for _ in range(n_vertex):
                    angle += (float(torch.rand((), generator=g)) - 0.5) * math.pi * 0.8
                    length = side * (0.05 + 0.15 * float(torch.rand((), generator=g)))
                    y = min(max(y + length * math.sin(angle), 0), h - 1)
                    x = min(max(x + length * math.cos(angle), 0), w - 1)
                    pts.append((y, x))
                _stroke(hole, np.asarray(pts), width)
                if hole.mean() > hi:  # this stroke overshoots: keep the strokes before it
                    hole = prev
                    break
            if lo <= hole.mean() <= hi:
                break
        out.append(torch.from_numpy(1.0 - hole).float())
    return torch.stack(out)[:, None]


def mask_from_file(path, h: int, w: int) -> torch.Tensor:
    """Load a mask image (white = pixels to fill in), resized to ``h x w`` with nearest neighbours."""
    from PIL import Image

    img = Image.open(path).convert("L")
    if img.size != (w, h):
        img = img.resize((w, h), Image.NEAREST)
    hole = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0) >= 0.5
    return (~hole).float()[None, None]
