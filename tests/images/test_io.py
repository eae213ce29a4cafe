"""Image reading and writing: EXIF orientation, 16-bit colour, size limits, atomic writes, compare figures."""

from __future__ import annotations

import io
import json
import math
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from restore_cli.images.read import ImageInfo, ImageReadError, read_image, read_image_info, side_by_side
from restore_cli.images.write import encode_png16, json_safe, write_json_atomic, write_png


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16_paeth(a: np.ndarray) -> bytes:
    """A 16-bit PNG written independently of restore_cli: filters None, Up and Paeth in turn."""
    h, w, c = a.shape
    rows = a.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int32)
    bpp = 2 * c
    out = []
    for y in range(h):
        ftype = y % 3 * 2  # 0 None, 2 Up, 4 Paeth
        raw = rows[y]
        up = rows[y - 1] if y else np.zeros_like(raw)
        if ftype == 0:
            f = raw
        elif ftype == 2:
            f = raw - up
        else:
            left = np.concatenate([np.zeros(bpp, np.int32), raw[:-bpp]])
            ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
            p = left + up - ul
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
            f = raw - pred
        out.append(bytes([ftype]) + (f % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(out))) + _chunk(b"IEND", b"")


def _rand16(shape, seed=0):
    a = np.random.default_rng(seed).integers(0, 65536, shape).astype(np.uint16)
    a.flat[0] = 1  # not a multiple of 257
    return a


def _u16(t: torch.Tensor) -> np.ndarray:
    return np.round(t.numpy() * 65535).astype(np.int64)


# ---------------------------------------------------------------------------------------------- orientation


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    # a 40 wide x 24 high JPEG whose left half is black, right half white, tagged "rotate 90 CW to view"
    a = np.zeros((24, 40, 3), np.uint8)
    a[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "phone.jpg"
    Image.fromarray(a).save(p, exif=exif.tobytes(), quality=95)
    img, info = read_image_info(p)
    assert tuple(img.shape) == (3, 40, 24) and info.size == (40, 24) and info.orientation == 6
    # rotated clockwise: the former left (black) half is now the top
    assert img[:, :18].mean() < 0.05 and img[:, 22:].mean() > 0.95
    with Image.open(p) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / 255
    assert np.allclose(img.numpy().transpose(1, 2, 0), ref, atol=1e-6)
    assert read_image(p).shape == img.shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    a = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(a).save(p, exif=exif.tobytes())
    img, info = read_image_info(p)
    with Image.open(p) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(np.round(img.numpy() * 255).astype(np.uint8).transpose(1, 2, 0), ref)
    assert info.orientation == (None if orientation == 1 else orientation)
    assert info.size == ref.shape[:2]


# ---------------------------------------------------------------------------------------------- 16 bits


@pytest.mark.parametrize("c", [3, 4])
def test_16bit_colour_png_reads_at_full_precision(tmp_path, c):
    a = _rand16((9, 11, c))
    p = tmp_path / "a.png"
    p.write_bytes(_png16_paeth(a))
    img, info = read_image_info(p)
    assert info.bits == 16 and info.channels == 3 and info.converted is None
    if c == 3:
        assert np.array_equal(_u16(img), a.transpose(2, 0, 1))
    else:  # composited onto white at full precision
        rgb, al = a[..., :3] / 65535.0, a[..., 3:] / 65535.0
        ref = (rgb * al + 1 - al).transpose(2, 0, 1)
        assert np.abs(img.numpy() - ref).max() < 1e-6


def test_pillow_alone_keeps_only_the_high_bytes_of_16bit_colour(tmp_path):
    # what Pillow itself makes of a 16-bit colour PNG: the high bytes; ours adds the low bytes
    a = _rand16((6, 5, 3), seed=3)
    p = tmp_path / "a.png"
    p.write_bytes(_png16_paeth(a))
    with Image.open(p) as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), (a >> 8).astype(np.uint8))
    assert np.array_equal(_u16(read_image(p)), a.transpose(2, 0, 1))


@pytest.mark.parametrize("kw", [{}, {"byteorder": ">"}, {"compression": "zlib"}, {"compression": "zlib", "predictor": True},
                                {"tile": (16, 16)}, {"planarconfig": "separate"}])
def test_16bit_rgb_tiff_reads_at_full_precision(tmp_path, kw):
    tifffile = pytest.importorskip("tifffile")
    a = _rand16((20, 24, 3), seed=1)
    p = tmp_path / "a.tif"
    data = a.transpose(2, 0, 1) if kw.get("planarconfig") == "separate" else a  # stored plane by plane
    tifffile.imwrite(p, data, photometric="rgb", **kw)
    img, info = read_image_info(p)
    assert info.bits == 16 and info.channels == 3
    assert np.array_equal(_u16(img), a.transpose(2, 0, 1))


def test_16bit_tiff_written_by_pillow_grey(tmp_path):
    a = _rand16((6, 7), seed=2)
    p = tmp_path / "g.tif"
    Image.fromarray(a).save(p)
    img, info = read_image_info(p)
    assert info.bits == 16 and info.channels == 1
    assert np.array_equal(_u16(img)[0], a)


def test_16bit_grey_png_kept_and_round_trips(tmp_path):
    a = _rand16((8, 9), seed=4)
    p = tmp_path / "g.png"
    Image.fromarray(a).save(p)
    img, info = read_image_info(p)
    assert info == ImageInfo(bits=16, channels=1, converted=None, orientation=None, size=(8, 9))
    assert np.array_equal(_u16(img)[0], a)
    q = tmp_path / "out.png"
    write_png(q, img, bits=16)
    with Image.open(q) as im:
        assert im.mode.startswith("I;16")
        assert np.array_equal(np.asarray(im), a)
    assert torch.equal(read_image(q), img)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_write_png_16bit_round_trips_exactly(tmp_path, c):
    a = _rand16((13, 10, c), seed=5 + c)
    img = torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 65535)
    p = tmp_path / "w.png"
    write_png(p, img, bits=16)
    with Image.open(p) as im:  # a valid PNG whose high bytes Pillow reads
        im.load()
        assert im.size == (10, 13)
    raw = p.read_bytes()
    assert raw[24] == 16  # IHDR bit depth
    if c in (1, 3):
        assert np.array_equal(_u16(read_image(p)), a.transpose(2, 0, 1))
        assert torch.equal(read_image(p), img)
    assert encode_png16(a) == raw


def test_write_png_8bit_unchanged(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    img = torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 255)
    p = tmp_path / "w.png"
    write_png(p, img)
    with Image.open(p) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), a)
    img2, info = read_image_info(p)
    assert info.bits == 8 and torch.equal(img2, img)
    with pytest.raises(ValueError):
        write_png(p, img, bits=12)


def test_8bit_info_and_conversions(tmp_path):
    p = tmp_path / "c.png"
    Image.fromarray(np.full((4, 5, 3), 200, np.uint8)).save(p)
    img, info = read_image_info(p, channels=1)
    assert img.shape == (1, 4, 5) and info == ImageInfo(8, 3, "colour to grey", None, (4, 5))
    g = tmp_path / "g.png"
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(g)
    img, info = read_image_info(g, channels=3)
    assert img.shape == (3, 4, 5) and info.converted == "grey to colour" and info.channels == 1
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8)]), "LA").save(la)
    img, info = read_image_info(la)
    assert img.shape == (1, 4, 5) and torch.all(img == 1) and info.channels == 1  # transparent: white


# ---------------------------------------------------------------------------------------------- size limits


def _bomb_png(path, w=40000, h=40000):
    """A 1-bit w x h black PNG of a few hundred KB: 1.6 G pixels once decoded."""
    row = bytes(1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(h)] + [comp.flush()]
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    monkeypatch.delenv("RESTORE_MAX_PIXELS", raising=False)
    p = tmp_path / "bomb.png"
    _bomb_png(p)
    assert p.stat().st_size < 3_000_000
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert time.perf_counter() - t0 < 2
    msg = str(e.value)
    assert "\n" not in msg and "40000x40000" in msg and "1600.0 MP" in msg and "64 MP" in msg
    assert "set RESTORE_MAX_PIXELS=N to allow larger images" in msg
    with pytest.raises(ImageReadError, match="over the limit of 1000 MP"):
        read_image_info(p, max_pixels=1_000_000_000)
    monkeypatch.setenv("RESTORE_MAX_PIXELS", "1e9")
    with pytest.raises(ImageReadError, match="over the limit of 1000 MP"):
        read_image(p)
    import PIL.Image

    assert PIL.Image.MAX_IMAGE_PIXELS is not None  # Pillow's own limit restored after the call


def test_pixel_limit_from_env_and_argument(tmp_path, monkeypatch):
    p = tmp_path / "s.png"
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(p)
    monkeypatch.setenv("RESTORE_MAX_PIXELS", "19999")
    with pytest.raises(ImageReadError, match=r"200x100 \(0\.0 MP\).*RESTORE_MAX_PIXELS"):
        read_image(p)
    assert read_image(p, max_pixels=20000).shape == (1, 100, 200)
    monkeypatch.setenv("RESTORE_MAX_PIXELS", "0")  # no limit
    assert read_image(p).shape == (1, 100, 200)
    monkeypatch.setenv("RESTORE_MAX_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="RESTORE_MAX_PIXELS"):
        read_image(p)


def test_pillow_own_bomb_limit_does_not_preempt_ours(tmp_path, monkeypatch):
    # above twice Pillow's limit, Pillow would raise DecompressionBombError at open; a user-raised limit wins
    p = tmp_path / "big.png"
    _bomb_png(p, 3000, 2000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    img = read_image(p, max_pixels=10_000_000)
    assert img.shape == (1, 2000, 3000) and Image.MAX_IMAGE_PIXELS == 1000


def test_unreadable_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="cannot read") as e:
        read_image(bad)
    assert "\n" not in str(e.value)
    trunc = tmp_path / "trunc.png"
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(good, format="PNG")
    trunc.write_bytes(good.getvalue()[:200])
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(trunc)
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------- atomic writes


def test_concurrent_writers_leave_a_valid_png_and_no_temporary_files(tmp_path):
    p = tmp_path / "out" / "same.png"
    imgs = [torch.full((3, 64, 64), v) for v in (0.25, 0.75)]
    errors = []

    def writer(img):
        try:
            for _ in range(25):
                write_png(p, img)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(im,)) for im in imgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    out = read_image(p)
    assert any(torch.allclose(out, im, atol=1 / 255) for im in imgs)
    assert sorted(x.name for x in p.parent.iterdir()) == ["same.png"]
    import restore_cli.images.write as rio

    assert p.stat().st_mode & 0o777 == 0o666 & ~rio._umask()  # as a plainly created file, not mkstemp's 0600


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    with pytest.raises(ValueError):
        write_png(p, torch.zeros(5, 4, 4))  # 5 channels: refused before any file
    import restore_cli.images.write as rio

    def boom(a):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rio, "encode_png16", boom)
    with pytest.raises(RuntimeError):
        write_png(p, torch.zeros(3, 4, 4), bits=16)
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_nan_becomes_null(tmp_path):
    p = tmp_path / "m.json"
    obj = {"psnr": float("nan"), "per_image": [{"lpips": float("inf")}, (1.5, -float("inf"))],
           "n": np.int64(3), "f": np.float32(0.5), "g": np.float64("nan"), "s": "nan"}
    write_json_atomic(p, obj)
    assert json.loads(p.read_text()) == {"psnr": None, "per_image": [{"lpips": None}, [1.5, None]],
                                         "n": 3, "f": 0.5, "g": None, "s": "nan"}
    assert json_safe([math.nan, {"a": [math.inf]}]) == [None, {"a": [None]}]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]


def test_write_json_atomic_failure_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"bad": object()})
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]
    assert json.loads(p.read_text()) == {"ok": 1}  # the previous file is intact


# ---------------------------------------------------------------------------------------------- compare figure


def test_side_by_side_enlarges_small_images_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 32, generator=g), torch.rand(1, 32, 32, generator=g)
    fig = side_by_side([a, b], gap=4)
    assert fig.shape == (3, 256, 256 + 4 + 256)
    left, right = fig[:, :, :256], fig[:, :, 260:]
    assert torch.equal(left, a.repeat_interleave(8, 1).repeat_interleave(8, 2))
    assert torch.equal(right, b.expand(3, -1, -1).repeat_interleave(8, 1).repeat_interleave(8, 2))
    assert torch.all(fig[:, :, 256:260] == 1)
    assert side_by_side([torch.rand(3, 100, 50)]).shape == (3, 300, 150)  # factor 3 reaches 256


def test_side_by_side_keeps_large_images():
    a, b = torch.rand(3, 300, 200), torch.rand(3, 150, 100)
    fig = side_by_side([a, b], gap=2)
    assert fig.shape == (3, 300, 200 + 2 + 200)
    assert torch.equal(fig[:, :, :200], a)
    assert side_by_side([torch.rand(1, 32, 32)], min_height=0).shape == (1, 32, 32)


@pytest.mark.parametrize("c", [3, 4])
def test_16bit_colour_tiff_through_pillow_alone(tmp_path, monkeypatch, c):
    # without tifffile, contiguous 16-bit colour TIFFs still read at full precision through Pillow
    tifffile = pytest.importorskip("tifffile")
    import restore_cli.images.read as rio

    monkeypatch.setattr(rio, "_tiff_colour16", lambda im: None)
    a = _rand16((10, 12, c), seed=7)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, a, photometric="rgb", compression="zlib", **({"extrasamples": ["unassalpha"]} if c == 4 else {}))
    img, info = read_image_info(p)
    assert info.bits == 16 and info.channels == 3
    if c == 3:
        assert np.array_equal(_u16(img), a.transpose(2, 0, 1))
    else:
        rgb, al = a[..., :3] / 65535.0, a[..., 3:] / 65535.0
        assert np.abs(img.numpy() - (rgb * al + 1 - al).transpose(2, 0, 1)).max() < 1e-6


def test_16bit_grey_big_endian_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = _rand16((6, 7), seed=8)
    p = tmp_path / "g.tif"
    tifffile.imwrite(p, a, byteorder=">")
    img, info = read_image_info(p)
    assert info.bits == 16 and info.channels == 1 and np.array_equal(_u16(img)[0], a)
