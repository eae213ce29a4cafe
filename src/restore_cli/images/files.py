"""Which files are images, and the size limit on reading them: checked before torch is imported
(``restore`` reports a bad input or limit at once) and used again by the reader."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError

# the files restore reads, given by name or found in a folder alike (a GIF: its first frame)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
FITS = ("resize", "pad", "none")

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "RESTORE_MAX_PIXELS"


def list_images(paths: list[Path]) -> list[Path]:
    """Files given directly, and every image file (by suffix) inside given folders (not their subfolders), sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def max_pixels_limit(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels``, else env ``RESTORE_MAX_PIXELS``, else 64 MP; None if <= 0."""
    if max_pixels is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if env:
            try:
                max_pixels = int(float(env))
            except (ValueError, OverflowError):
                raise UsageError(f"{MAX_PIXELS_ENV} must be a number of pixels (e.g. 100000000; 0: no limit), "
                                 f"got {env!r}") from None
        else:
            max_pixels = DEFAULT_MAX_PIXELS
    return None if max_pixels <= 0 else int(max_pixels)
