"""Image files in and out, size adaptation to a model, output layout, atomic JSON.

Reading accepts PNG, JPEG, WebP, TIFF and BMP, 8 or 16 bits, grey, grey+alpha,
RGB and RGBA (alpha is composited onto white); every image becomes a float
``[C, H, W]`` tensor in ``[0, 1]``.  Writing produces 8-bit PNGs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
FITS = ("resize", "pad", "none")


class ImageReadError(Exception):
    pass


def list_images(paths: list[Path]) -> list[Path]:
    """Files given directly, and every image file (by suffix) inside given folders, sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def read_image(path: Path, channels: int | None = None) -> torch.Tensor:
    """``[C, H, W]`` float in ``[0, 1]``; ``channels`` converts to grey (1) or RGB (3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = _to_array(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e
    return to_channels(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), channels)


def to_channels(img: torch.Tensor, channels: int | None) -> torch.Tensor:
    """``[C, H, W]`` to grey (1: ITU-R 601 luma of RGB) or RGB (3: grey repeated); else unchanged."""
    if channels == 1 and img.shape[0] == 3:
        return 0.299 * img[0:1] + 0.587 * img[1:2] + 0.114 * img[2:3]
    if channels == 3 and img.shape[0] == 1:
        return img.repeat(3, 1, 1)
    return img


def _to_array(im) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = a / (65535.0 if a.max() > 255 or mode.startswith("I;16") else 255.0)
        return np.clip(a, 0, 1)[None]
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float64), 0, 1)[None]
    if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # composite onto white
        if mode == "LA":
            return rgb[..., :1].transpose(2, 0, 1)
        return rgb.transpose(2, 0, 1)
    if mode in ("L", "1"):
        return (np.asarray(im.convert("L"), dtype=np.float64) / 255.0)[None]
    return (np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0).transpose(2, 0, 1)


def write_png(path: Path, img: torch.Tensor) -> None:
    """Write a ``[C, H, W]`` image in ``[0, 1]`` as an 8-bit PNG (atomically)."""
    from PIL import Image

    a = (img.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(a).save(tmp, format="PNG")
    os.replace(tmp, path)


def resize(img: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bicubic resize of ``[C, H, W]`` (or ``[B, C, H, W]``) to ``hw``."""
    x = img[None] if img.dim() == 3 else img
    if tuple(x.shape[-2:]) == tuple(hw):
        return img
    down = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    y = F.interpolate(x, size=hw, mode="bicubic", antialias=down, align_corners=False).clamp(0, 1)
    return y[0] if img.dim() == 3 else y


def fit_to(img: torch.Tensor, hw: tuple[int, int] | None, fit: str) -> tuple[torch.Tensor, dict]:
    """Adapt an image to a model's working size; returns the image and what undoes it.

    ``resize``: bicubic to ``hw`` (aspect ratio not kept; undone by resizing
    back); ``pad``: reflect-pad (centred) up to ``hw`` (the image must not be
    larger), cropped back afterwards; ``none`` or ``hw=None``: keep the size.
    """
    h, w = img.shape[-2:]
    if hw is None or fit == "none" or (h, w) == tuple(hw):
        return img, {"fit": "none", "size": [h, w]}
    if fit == "resize":
        return resize(img, hw), {"fit": "resize", "size": [h, w]}
    if fit == "pad":
        if h > hw[0] or w > hw[1]:
            raise ValueError(f"a {h}x{w} image is larger than the model's {hw[0]}x{hw[1]}: use --fit resize")
        top, left = (hw[0] - h) // 2, (hw[1] - w) // 2
        pad = (left, hw[1] - w - left, top, hw[0] - h - top)
        mode = "reflect" if all(p < s for p, s in zip(pad, (w, w, h, h))) else "replicate"
        return F.pad(img[None], pad, mode=mode)[0], {"fit": "pad", "size": [h, w], "offset": [top, left]}
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")


def unfit(img: torch.Tensor, how: dict) -> torch.Tensor:
    h, w = how["size"]
    if how["fit"] == "resize":
        return resize(img, (h, w))
    if how["fit"] == "pad":
        top, left = how["offset"]
        return img[..., top:top + h, left:left + w]
    return img


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def side_by_side(images: list[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """Images (``[C, H, W]``, resized to the first one's height) side by side on white."""
    h = images[0].shape[-2]
    c = max(i.shape[0] for i in images)
    tiles = []
    for im in images:
        im = im.expand(c, -1, -1) if im.shape[0] != c else im
        w = max(1, round(im.shape[-1] * h / im.shape[-2]))
        tiles += [resize(im, (h, w)), torch.ones(c, h, gap)]
    return torch.cat(tiles[:-1], -1)
