"""Output files, written atomically: a unique temporary file beside the target, then ``os.replace``
(so a reader never sees a half-written file, and two writers never share a temporary name).

8- or 16-bit PNGs (16-bit ones encoded here: Pillow has no 16-bit colour mode), float32 ``.npy``
arrays, and JSON with non-finite numbers written as null.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch


def write_png(path: Path, img: torch.Tensor, bits: int = 8) -> None:
    """Write a ``[C, H, W]`` image in ``[0, 1]`` as an 8- or 16-bit PNG, atomically.

    C is 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    x = img.detach().float().clamp(0, 1).cpu().numpy()
    if x.ndim != 3 or x.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"expected a [C, H, W] image with 1 to 4 channels, got shape {tuple(x.shape)}")
    maxval = 255 if bits == 8 else 65535
    a = (x * maxval + 0.5).astype(np.uint8 if bits == 8 else np.uint16)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    if bits == 8:
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(a))
        _write_atomic(path, lambda f: pil.save(f, format="PNG"))
    else:
        data = encode_png16(a)
        _write_atomic(path, lambda f: f.write(data))


def write_npy(path: Path, a) -> None:
    """Write an array (a tensor or numpy array) as a ``.npy`` file of float32, atomically."""
    x = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)
    _write_atomic(path, lambda f: np.save(f, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False))


def encode_png16(a: np.ndarray) -> bytes:
    """A 16-bit PNG of a ``uint16`` ``[H, W]`` or ``[H, W, C]`` array (C: 1 to 4), rows Sub-filtered."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(a, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    filtered = np.empty((h, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = 1  # Sub: each byte minus the same byte of the pixel to its left
    filtered[:, 1:1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    idat = zlib.compress(filtered.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def _write_atomic(path: Path, write, text: bool = False) -> None:
    """``write(f)`` into a temporary file unique to this writer next to ``path``, then ``os.replace``.

    The temporary file is removed on any failure; the result gets the
    permissions of a normally created file (umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, inf), at any depth of dicts and lists, replaced by None.

    Tuples become lists and numpy scalars Python numbers, as ``json`` would write them.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as indented JSON, non-finite floats written as null, atomically."""
    data = json_safe(obj)

    def write(f):
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")

    _write_atomic(path, write, text=True)
