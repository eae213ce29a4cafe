"""Prepare the papers' test images for the paper suites (benchmarks/papers/) from a copy of FFHQ you have.

DiffStateGrad (and its workshop version) use "a fixed set of 100 images from the FFHQ validation set"
without listing them; its reference code starts at image 60000 (FFHQ's images 60000-69999 are the
split usually held out).  This writes images START..START+COUNT-1 of an FFHQ folder (``00000.png`` ...
or NVlabs' ``images1024x1024/NN000/NNNNN.png`` layout), resized to SIZE x SIZE with Pillow's
antialiased bicubic filter, as PNGs into OUT (never over an existing file):

    python benchmarks/tools/paper_images.py /data/ffhq/images1024x1024 ffhq-val-100 --start 60000 --count 100 --size 256
    restore bench benchmarks/papers/dsg-table2-ffhq.toml --images ffhq-val-100 --device cuda

P2L's Table 8 uses the *first* 1000 FFHQ images at 512: ``--start 0 --count 1000 --size 512``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def find(root: Path, index: int) -> Path | None:
    for cand in (root / f"{index:05d}.png", root / f"{index // 1000:02d}000" / f"{index:05d}.png",
                 root / f"{index:05d}.jpg"):
        if cand.is_file():
            return cand
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ffhq", type=Path, help="folder of FFHQ images (flat, or NVlabs' NN000/ subfolders)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--start", type=int, default=60000)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args(argv)
    if not a.ffhq.is_dir():
        ap.error(f"{a.ffhq}: not a folder")
    a.out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for i in range(a.start, a.start + a.count):
        src, dst = find(a.ffhq, i), a.out / f"{i:05d}.png"
        if src is None:
            missing += 1
            continue
        if dst.exists():
            continue
        with Image.open(src) as im:
            im.convert("RGB").resize((a.size, a.size), Image.BICUBIC, reducing_gap=None).save(dst)
    if missing:
        print(f"{missing} of {a.count} images not found under {a.ffhq}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
