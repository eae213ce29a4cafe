"""Image files in and out, size adaptation to a model, output layout, atomic JSON.

Reading accepts PNG, JPEG, WebP, TIFF and BMP, 8 or 16 bits, grey, grey+alpha,
RGB and RGBA (alpha is composited onto white); every image becomes a float
``[C, H, W]`` tensor in ``[0, 1]``, turned upright by its EXIF orientation.
16-bit colour PNG and TIFF are read at full precision (Pillow has no 16-bit
colour mode: the high and low bytes are decoded in two passes).  Images
larger than a pixel limit are refused from their header, before decoding.
Writing (8- or 16-bit PNGs, float32 ``.npy`` arrays, JSON; atomically) is in ``write.py``.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .files import FITS, MAX_PIXELS_ENV, max_pixels_limit


class ImageReadError(Exception):
    pass


@dataclass(frozen=True)
class ImageInfo:
    """What ``read_image_info`` found in the file."""

    bits: int  # 8, or 16 when the file holds more than 8 bits per sample
    channels: int  # the file's colour channels before conversion: 1 grey, 3 colour
    converted: str | None  # "colour to grey", "grey to colour" or None
    orientation: int | None  # the EXIF orientation applied (2..8), None when none
    size: tuple[int, int]  # (H, W) after orientation


def _pixel_limit(max_pixels: int | None = None) -> int | None:
    """:func:`files.max_pixels_limit` (``restore`` checks the variable before it starts), as a read error."""
    try:
        return max_pixels_limit(max_pixels)
    except UsageError as e:
        raise ImageReadError(str(e)) from None


def read_image(path: Path, channels: int | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """``[C, H, W]`` float in ``[0, 1]``; ``channels`` converts to grey (1) or RGB (3)."""
    return read_image_info(path, channels, max_pixels)[0]


def read_image_info(
    path: Path, channels: int | None = None, max_pixels: int | None = None
) -> tuple[torch.Tensor, ImageInfo]:
    """``read_image`` and what the file held (bit depth, channels, conversion, orientation).

    Raises ``ImageReadError`` (a one-line message) for unreadable files and
    for images over ``max_pixels`` (see :func:`restore_cli.images.files.max_pixels_limit`), the latter
    from the header alone, before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    limit = _pixel_limit(max_pixels)
    size_hint = ""
    try:
        try:
            im = _open(path)
        except UnidentifiedImageError:
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise
            arr, scale, alpha, bits, orientation = _read_tiff_fallback(path, limit)  # e.g. planar 16-bit RGB
            grey = False
        else:
            with im:
                w, h = im.size
                size_hint = f" ({w}x{h}, {w * h / 1e6:.1f} MP)"
                _check_size(path, w, h, limit)
                tiff16 = _tiff_colour16(im)
                if tiff16 is not None:  # Pillow misreads some of these (planar ones): tifffile when installed
                    arr, scale, alpha, bits, orientation = tiff16
                    grey = False
                else:
                    arr, scale, alpha, grey, bits = _decode(im, path)
                    orientation = _orientation(im)
        img = _to_tensor(arr, scale, alpha, orientation)
        del arr
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(
            f"cannot read {path}: out of memory decoding it{size_hint}; "
            f"set {MAX_PIXELS_ENV}=N to refuse images over N pixels"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(
            f"cannot read {path}: {_one_line(e)}; set {MAX_PIXELS_ENV}=N to allow larger images"
        ) from e
    except UnidentifiedImageError:  # Pillow's message repeats the path
        raise ImageReadError(f"cannot read {path}: not an image file (or one in a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
        raise ImageReadError(f"cannot read {path}: {_one_line(e)}") from e
    if grey and img.shape[0] == 3:  # 16-bit grey+alpha, which Pillow opens as RGBA
        img = img[:1]
    file_channels = img.shape[0]
    out = to_channels(img, channels)
    converted = None
    if file_channels == 3 and out.shape[0] == 1:
        converted = "colour to grey"
    elif file_channels == 1 and out.shape[0] == 3:
        converted = "grey to colour"
    info = ImageInfo(bits=bits, channels=file_channels, converted=converted, orientation=orientation,
                     size=(int(out.shape[-2]), int(out.shape[-1])))
    return out, info


def to_channels(img: torch.Tensor, channels: int | None) -> torch.Tensor:
    """``[C, H, W]`` to grey (1: ITU-R 601 luma of RGB) or RGB (3: grey repeated); else unchanged."""
    if channels == 1 and img.shape[0] == 3:
        return 0.299 * img[0:1] + 0.587 * img[1:2] + 0.114 * img[2:3]
    if channels == 3 and img.shape[0] == 1:
        return img.repeat(3, 1, 1)
    return img


_PIL_OPEN_LOCK = threading.Lock()


def _open(path: Path):
    """``Image.open`` (lazy: header only) without Pillow's own pixel limit; ours is checked next."""
    from PIL import Image

    with _PIL_OPEN_LOCK:
        prev = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = prev


def _check_size(path: Path, w: int, h: int, limit: int | None) -> None:
    if limit is not None and w * h > limit:
        raise ImageReadError(
            f"cannot read {path}: the image is {w}x{h} ({w * h / 1e6:.1f} MP), over the limit of "
            f"{limit / 1e6:g} MP ({limit} pixels); set {MAX_PIXELS_ENV}=N to allow larger images (0: no limit)"
        )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _rawmode(tile) -> str:
    args = tile[3] if not hasattr(tile, "args") else tile.args
    rm = args[0] if isinstance(args, tuple) else args
    return rm if isinstance(rm, str) else ""


def _file_bits(im, rawmode: str) -> int:
    if im.mode in ("I", "F") or im.mode.startswith("I;16") or ";16" in rawmode:
        return 16
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bps = tags.get(258)
        bps = bps if isinstance(bps, tuple) else (bps,)
        if any(isinstance(b, int) and b > 8 for b in bps):
            return 16
    return 8


def _decode(im, path: Path):
    """Pixels as an integer or float ``[H, W]`` / ``[H, W, C]`` array with the value of white, and flags."""
    tiles = list(im.tile)
    rawmode = _rawmode(tiles[0]) if tiles else ""
    bits = _file_bits(im, rawmode)
    mode = im.mode
    grey = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16") or rawmode.startswith("LA;")
    im.load()
    if mode.startswith("I;16"):
        return np.asarray(im), 65535.0, False, grey, bits
    if mode == "I":
        a = np.asarray(im)
        return a, (65535.0 if a.size and a.max() > 255 else 255.0), False, grey, bits
    if mode == "F":
        return np.clip(_finite(np.asarray(im)), 0, 1), 1.0, False, grey, bits
    if mode in ("RGB", "RGBA") and tiles and all(_rawmode(t).startswith(mode + ";16") for t in tiles):
        hi = np.asarray(im)
        lo = _low_bytes(path, im)
        if lo is not None:
            return (hi.astype(np.uint16) << 8) | lo, 65535.0, mode == "RGBA", grey, bits
        return hi, 255.0, mode == "RGBA", grey, bits
    if mode in ("L", "RGB"):
        return np.asarray(im), 255.0, False, grey, bits
    if mode == "LA":
        return np.asarray(im), 255.0, True, grey, bits
    if mode in ("1",) or (mode == "P" and "transparency" not in im.info and _grey_palette(im)):
        return np.asarray(im.convert("L")), 255.0, False, True, bits
    if mode in ("RGBA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"))
        return (a[..., [0, 3]] if grey else a), 255.0, True, grey, bits
    return np.asarray(im.convert("RGB")), 255.0, False, grey, bits


def _grey_palette(im) -> bool:
    """A palette image (GIF, 8-bit PNG) whose colours are all greys."""
    pal = np.asarray(im.getpalette() or [0, 0, 1]).reshape(-1, 3)
    return bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def _low_bytes(path: Path, im) -> np.ndarray | None:
    """The low bytes of a 16-bit colour image: decoded again with the byte order of its raw mode swapped.

    Pillow keeps only the high byte of 16-bit colour samples (its ``RGB`` and
    ``RGBA`` modes are 8-bit); the ``;16L`` unpacker of big-endian data (and
    ``;16B`` of little-endian data) picks the other byte, after the format's
    decoder (PNG filters, TIFF compression, ...) has run.  None if that fails.
    """
    swap = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
    try:
        with _open(path) as im2:
            if im2.mode != im.mode or im2.size != im.size:
                return None
            tiles = []
            for t in im2.tile:
                rm = _rawmode(t)
                rm2 = rm[:-1] + swap[rm[-1]]
                args = t[3]
                args = (rm2,) + tuple(args[1:]) if isinstance(args, tuple) else rm2
                tiles.append(t._replace(args=args) if hasattr(t, "_replace") else (t[0], t[1], t[2], args))
            im2.tile = tiles
            im2.load()
            lo = np.asarray(im2)
    except (KeyError, ValueError, OSError, AttributeError, TypeError, IndexError, SyntaxError):
        return None
    return lo if lo.shape == np.shape(im) else None


def _tiff_colour16(im):
    """A 16-bit colour TIFF read by ``tifffile`` (``_read_tiff_fallback``'s result), or None to use Pillow."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    if _file_bits(im, _rawmode(im.tile[0])) != 16:
        return None
    try:
        import tifffile  # noqa: F401  (installed with scikit-image)
    except ImportError:
        return None
    try:
        return _read_tiff_fallback(Path(im.filename), None)
    except ValueError:
        return None


def _read_tiff_fallback(path: Path, limit: int | None):
    """TIFFs Pillow cannot open (e.g. 16-bit RGB stored by planes), through ``tifffile`` when installed."""
    from PIL import UnidentifiedImageError

    try:
        import tifffile
    except ImportError:
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            w, h = int(page.imagewidth), int(page.imagelength)
            _check_size(path, w, h, limit)
            axes, a = page.axes, page.asarray()
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else None
            orientation = orientation if orientation is not None and 2 <= orientation <= 8 else None
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # tifffile's own errors (unsupported compression, broken file, ...)
        raise ValueError(_one_line(e)) from e
    if axes.endswith("S") and a.ndim == 3:
        pass
    elif axes.startswith("S") and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        raise ValueError(f"unsupported TIFF layout {axes!r} {a.shape}")
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported TIFF with {a.shape[-1]} samples per pixel")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype.kind == "f":
        a, scale, bits = np.clip(_finite(a), 0, 1), 1.0, 16
    elif a.dtype.kind in "ui":
        scale, bits = float(np.iinfo(a.dtype).max), (8 if a.dtype.itemsize == 1 else 16)
    elif a.dtype == bool:
        a, scale, bits = a.astype(np.uint8), 1.0, 8
    else:
        raise ValueError(f"unsupported TIFF sample type {a.dtype}")
    alpha = a.ndim == 3 and a.shape[-1] in (2, 4)
    return a, scale, alpha, bits, orientation


def _finite(a: np.ndarray) -> np.ndarray:
    """A float image's samples, refused (ValueError, one line) if any is NaN or infinite: nothing can be
    restored from them, and a solver would only carry them into its result."""
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{bad} of its {a.size} pixel values are NaN or infinite (a float image must hold numbers, "
                         "white = 1)")
    return a


def _orientation(im) -> int | None:
    try:
        o = im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: ignore it as viewers do
        return None
    return int(o) if isinstance(o, int) and 2 <= o <= 8 else None


def _orient(a: np.ndarray, orientation: int | None) -> np.ndarray:
    """``ImageOps.exif_transpose`` on an ``[H, W, ...]`` array (views, no copy)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _to_tensor(a: np.ndarray, scale: float, alpha: bool, orientation: int | None) -> torch.Tensor:
    a = _orient(a, orientation)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    a = np.require(a, requirements=["C", "W"])  # one copy of the integer data, in [C, H, W] order
    img = torch.from_numpy(a).to(torch.float32)
    if scale != 1.0:
        img.div_(scale)
    if alpha:
        al = img[-1:]
        img = img[:-1] * al + (1 - al)  # composite onto white
    return img


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


def side_by_side(images: list[torch.Tensor], gap: int = 4, min_height: int = 256) -> torch.Tensor:
    """Images (``[C, H, W]``, resized to the first one's height) side by side on white.

    Below ``min_height`` every image is enlarged by the smallest integer
    factor that reaches it, nearest neighbour (each pixel a square block), so
    that small images stay readable; the gap is not enlarged.
    """
    h = images[0].shape[-2]
    c = max(i.shape[0] for i in images)
    k = math.ceil(min_height / h) if min_height and h < min_height else 1
    tiles = []
    for im in images:
        im = im.expand(c, -1, -1) if im.shape[0] != c else im
        w = max(1, round(im.shape[-1] * h / im.shape[-2]))
        im = resize(im, (h, w))
        if k > 1:
            im = im.repeat_interleave(k, -2).repeat_interleave(k, -1)
        tiles += [im, torch.ones(c, h * k, gap, dtype=im.dtype)]
    return torch.cat(tiles[:-1], -1)
