"""JPEG as a forward model (ops/jpeg.py) against Pillow's real codec (libjpeg), and `restore jpeg` end to end."""

import io
from pathlib import Path
import json

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.ops import JPEG, jpeg_file_info, quant_tables

runner = CliRunner()


def pillow_jpeg(a: np.ndarray, quality: int, subsampling: int = 2) -> tuple[np.ndarray, Image.Image]:
    """Pillow's encode + decode of a uint8 array (its libjpeg), as floats in [0, 1], and the opened file."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    buf.seek(0)
    im = Image.open(buf)
    return np.asarray(im).astype(np.float64) / 255.0, im


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    return np.ascontiguousarray(img[50:170, 60:196])  # 120x136: not a multiple of 16, so padding is exercised


@pytest.mark.parametrize("quality", [2, 5, 10, 20, 50, 75, 90, 100])
def test_tables_equal_pillows(quality):
    """libjpeg's quality scaling of the Annex K tables, as Pillow writes them (natural order, baseline-capped)."""
    _, im = pillow_jpeg(photo("astronaut")[:16, :16], quality)
    ours = quant_tables(quality)
    assert ours[0].flatten().int().tolist() == list(im.quantization[0])
    assert ours[1].flatten().int().tolist() == list(im.quantization[1])


# PSNR (dB) of our hard-rounding model against Pillow's encode+decode, measured on these 120x136 crops:
# astronaut 4:2:0 q5 39.7, q10 39.7, q20 45.8, q50 46.0, q90 47.0; 4:4:4 q10 41.3; chelsea 4:2:0 q10 42.5,
# 4:4:4 q5 47.1; grey q10 63.2 (astronaut) / 54.8 (chelsea).  The JPEG itself is 26-39 dB from the original, so
# the model's error is 8-20 dB below the codec's; what remains is libjpeg's integer arithmetic (8-bit YCbCr,
# integer DCT, 8-bit output) flipping a few coefficients at rounding thresholds.
@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
@pytest.mark.parametrize("quality,subsampling,pil_ss", [(5, "4:2:0", 2), (10, "4:2:0", 2), (20, "4:2:0", 2),
                                                        (90, "4:2:0", 2), (10, "4:4:4", 0), (10, "4:2:2", 1)])
def test_forward_matches_pillow(name, quality, subsampling, pil_ss):
    a = photo(name)
    ref, im = pillow_jpeg(a, quality, pil_ss)
    x = torch.tensor(a / 255.0).permute(2, 0, 1)[None]
    y = JPEG(x.shape[1:], quality, subsampling=subsampling).double().A(x)[0].permute(1, 2, 0).numpy()
    assert y.shape == a.shape
    codec = psnr(ref, a / 255.0)
    assert psnr(y, ref) > 39.0 and psnr(y, ref) > codec + 5, (psnr(y, ref), codec)


@pytest.mark.parametrize("hw", [(40, 32), (34, 50)])
@pytest.mark.parametrize("quality", [10, 50, 90])
def test_saturated_colours_and_the_bottom_rows_match_pillow(hw, quality):
    """Saturated colours (libjpeg range-limits each decoded plane before upsampling) and bottom rows that
    differ from the ones above (libjpeg pads subsampled chroma after downsampling, jcprepct.c): measured
    47-55 dB against Pillow; 30-34 dB before either was modelled."""
    h, w = hw
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2], a[:, w // 2:], a[-1], a[-2] = [255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]
    ref, _ = pillow_jpeg(a, quality)
    x = torch.tensor(a / 255.0).permute(2, 0, 1)[None]
    y = JPEG(x.shape[1:], quality).double().A(x)[0].permute(1, 2, 0).numpy()
    assert psnr(y, ref) > 44.0 and psnr(y[-8:], ref[-8:]) > 40.0


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_grey_matches_pillow(name):
    g = photo(name)[..., 1].copy()
    for q in (10, 50):
        ref, im = pillow_jpeg(g, q)
        assert im.mode == "L" and len(im.quantization) == 1
        y = JPEG((1, *g.shape), q).double().A(torch.tensor(g / 255.0)[None, None])[0, 0].numpy()
        assert psnr(y, ref) > 50.0


def test_fancy_upsampling_is_closer_to_libjpeg_than_box():
    a = photo("chelsea")
    ref, _ = pillow_jpeg(a, 20)
    x = torch.tensor(a / 255.0).permute(2, 0, 1)[None]
    out = {u: JPEG(x.shape[1:], 20, upsampling=u).double().A(x)[0].permute(1, 2, 0).numpy() for u in ("fancy", "box")}
    assert psnr(out["fancy"], ref) > psnr(out["box"], ref) + 0.5


def test_gradcheck_of_the_cubic_surrogate():
    """The smooth path (Shin & Song's cubic rounding) has the derivative autograd computes (float64)."""
    for c, ss in ((3, "4:2:0"), (1, "4:2:0"), (3, "4:2:2")):
        op = JPEG((c, 16, 24), 20, rounding="cubic").double() if ss == "4:2:0" else \
            JPEG((c, 16, 24), 20, subsampling=ss, rounding="cubic").double()
        x = (0.25 + 0.5 * torch.rand(1, c, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(c)))
        assert torch.autograd.gradcheck(op.A, (x.requires_grad_(True),), eps=1e-6, atol=1e-5, fast_mode=True)


def test_ste_forward_is_true_rounding_and_gradient_is_the_unquantised_codec():
    x = 0.2 + 0.6 * torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ste, cubic = JPEG((3, 16, 16), 10).double(), JPEG((3, 16, 16), 10, rounding="cubic").double()
    # cubic's value is within 1/8 quantisation step of the true value; STE's is the true value (idempotent below)
    assert 0 < float((ste.A(x) - cubic.A(x)).abs().max()) < 0.2
    # STE: the Jacobian of the codec with quantisation removed; without subsampling (4:4:4) that map is the
    # identity (up to the JFIF matrices' 6-digit coefficients)
    op = JPEG((3, 16, 16), 10, subsampling="4:4:4").double()
    v = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(op.A(xg), xg, v)
    assert torch.allclose(g, v, atol=1e-5)


@pytest.mark.parametrize("c,subsampling,upsampling", [(1, "4:2:0", "fancy"), (3, "4:4:4", "fancy"),
                                                      (3, "4:2:0", "box"), (3, "4:2:2", "box")])
def test_pigdm_pseudo_inverse_property(c, subsampling, upsampling):
    """PiGDM Sec. 3.2: h^+ = decoding (identity on a decoded image) and h(h^+(h(x))) = h(x): JPEG re-encoding with
    the same tables is idempotent (exactly, on whole MCUs, where the chroma up/down-sampling pair is a projection)."""
    x = 0.3 + 0.4 * torch.rand(2, c, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = JPEG((c, 32, 48), 10, subsampling=subsampling, upsampling=upsampling).double()
    y = op.A(x)
    assert torch.equal(op.h_dagger(y), y)
    assert float((op.A(op.h_dagger(y)) - y).abs().max()) < 1e-9
    assert op.residual_scale == 2.0 and not op.linear and op.has_h_dagger


def test_per_image_tables_and_select():
    t = torch.stack([quant_tables(10), quant_tables(50)])
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    op = JPEG((3, 16, 16), tables=t).double()
    y = op.A(x)
    for k, q in enumerate((10, 50)):
        assert torch.allclose(y[k], JPEG((3, 16, 16), q).double().A(x[k:k + 1])[0])
        assert op.select([k]).params()["tables"][0] == quant_tables(q)[0].flatten().int().tolist()
    assert op.params()["quality"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="quality"):
        JPEG((3, 8, 8), 1)
    with pytest.raises(ValueError, match="subsampling"):
        JPEG((3, 8, 8), 10, subsampling="4:1:1")
    with pytest.raises(ValueError, match="chroma table"):
        JPEG((3, 8, 8), tables=quant_tables(10)[:1])


def test_jpeg_file_info_reads_pillows_tables(tmp_path):
    a = photo("chelsea")[:32, :32]
    for ss, name in ((2, "4:2:0"), (1, "4:2:2"), (0, "4:4:4")):
        p = tmp_path / f"c{ss}.jpg"
        Image.fromarray(a).save(p, quality=37, subsampling=ss)
        info = jpeg_file_info(p)
        assert info["subsampling"] == name and info["components"] == 3
        assert info["tables"] == [quant_tables(37)[0].flatten().int().tolist(), quant_tables(37)[1].flatten().int().tolist()]
        with Image.open(p) as im:
            assert JpegImagePlugin.get_sampling(im) == ss
    Image.fromarray(a[..., 0]).save(tmp_path / "g.jpg", quality=80)
    info = jpeg_file_info(tmp_path / "g.jpg")
    assert info == {"tables": [quant_tables(80)[0].flatten().int().tolist()], "subsampling": None, "components": 1}
    Image.fromarray(a).save(tmp_path / "p.png")
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_file_info(tmp_path / "p.png")


# -- the command line ------------------------------------------------------------------------------

def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("jpeg_in")
    cam = data.camera()
    Image.fromarray(cam[100:132, 200:232]).save(d / "cam.png")  # 32x32: the bundled models' size
    Image.fromarray(cam[200:232, 100:132]).save(d / "cam2.jpg", quality=15)  # a real JPEG for measured mode
    return d


@pytest.mark.parametrize("method,model,dsg", [("dps", "fmnist-ddpm-32", True), ("pigdm", "fmnist-ddpm-32", False),
                                              ("pigdm", "fmnist-ddpm-32", True), ("latent-dps", "fmnist-ldm-32", False)])
def test_cli_jpeg(grey, tmp_path, method, model, dsg):
    out = tmp_path / "o"
    r = run("jpeg", grey / "cam.png", "--quality", "10", "--model", model, "--method", method, "--steps", "2",
            "--noise-sigma", "0", *(["--diffstategrad"] if dsg else []), "-o", out, "-q")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["task"] == "jpeg" and m["config"]["operator"]["task_options"] == {"quality": 10, "rounding": "ste"}
    rec = m["images"][0]
    assert rec["status"] == "ok" and rec["operator"]["quality"] == 10 and rec["operator"]["name"] == "jpeg"
    assert (out / "cam.png").exists() and (out / "cam.measurement.png").exists()


def test_cli_jpeg_measured_reads_the_files_tables(grey, tmp_path):
    out = tmp_path / "m"
    r = run("jpeg", grey / "cam2.jpg", "--measured", "--quality", "80", "--model", "fmnist-ddpm-32",
            "--method", "pigdm", "--steps", "2", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert any("--quality 80 is ignored" in w for w in m["config"]["warnings"])
    op = m["images"][0]["operator"]
    assert op["quality"] is None and op["tables"] == [quant_tables(15)[0].flatten().int().tolist()]
    # the measurement is the decoded file itself
    with Image.open(grey / "cam2.jpg") as im:
        decoded = np.asarray(im)
    assert np.array_equal(np.asarray(Image.open(out / "cam2.measurement.png")), decoded)


def test_cli_jpeg_measured_refuses_a_rotated_file_and_records_no_quality(grey, tmp_path):
    """A JPEG with an EXIF rotation: its blocks and tables are the stored image's, not the upright one we
    read, so that image fails with a hint (the others run); --quality is not recorded in measured mode."""
    d = tmp_path / "in"
    d.mkdir()
    with Image.open(grey / "cam2.jpg") as im:
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(d / "rot.jpg", quality=15, exif=exif.tobytes())
    (d / "ok.jpg").write_bytes((grey / "cam2.jpg").read_bytes())
    out = tmp_path / "m"
    r = run("jpeg", d, "--measured", "--model", "fmnist-ddpm-32", "--method", "pseudo-inverse", "-o", out, "-q")
    assert r.exit_code == 1, r.output
    m = json.loads((out / "metrics.json").read_text())
    status = {Path(x["input"]).name: x for x in m["images"]}
    assert status["ok.jpg"]["status"] == "ok" and status["rot.jpg"]["status"] == "failed"
    assert "EXIF orientation 6" in status["rot.jpg"]["error"]
    assert "quality" not in m["config"]["operator"]["task_options"]


def test_cli_jpeg_usage_errors(grey, tmp_path):
    for args, msg in [(["--quality", "1"], "--quality must be >= 2"), (["--quality", "101"], "--quality must be <= 100"),
                      (["--method", "psld"], "does not support 'jpeg'"), (["--method", "p2l"], "does not support"),
                      (["--method", "posterior-mean"], "does not support"), (["--measured"], "is not a JPEG file"),
                      (["--rounding", "floor"], "--rounding must be one of")]:
        r = run("jpeg", grey / "cam.png", *args, "-o", tmp_path / "x")
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
