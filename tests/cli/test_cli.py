"""The `restore` command through Typer's CliRunner and as a subprocess, with no network."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app
from tests.conftest import tiny_unet

runner = CliRunner()
SCHEMA = json.loads(resources.files("restore_cli").joinpath("data/metrics.schema.json").read_text())
FAST = {"dps": ["--steps", "12"], "pigdm": ["--steps", "8"],
        "daps": ["--set", "annealing_steps=4", "--set", "langevin_steps=3"]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()[60:84, 180:200]).save(d / "astro.png")  # 24x20 RGB
    Image.fromarray(data.coffee()[100:120, 200:224]).save(d / "coffee.jpg")  # 20x24 JPEG
    return d


@pytest.fixture(scope="module")
def messy(tmp_path_factory, photos):
    """A folder with a 16-bit grey PNG, an RGBA PNG, a WebP and a corrupt file."""
    d = tmp_path_factory.mktemp("messy")
    grey16 = (np.linspace(0, 65535, 20 * 24).reshape(20, 24)).astype(np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    assert Image.open(d / "grey16.png").mode.startswith("I")
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.open(photos / "astro.png").save(d / "astro.webp")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def metrics(out: Path) -> dict:
    data = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(data, SCHEMA)
    return data


def test_version_and_listings():
    r = run("--version")
    assert r.exit_code == 0 and "restore 0.1.0" in r.output
    r = run("methods")
    assert r.exit_code == 0 and all(m in r.output for m in ("dps", "pigdm", "daps"))
    r = run("models", "list")
    assert r.exit_code == 0
    line = next(ln for ln in r.output.splitlines() if "ddpm-celebahq-256" in ln)
    assert "no" in line  # not downloaded on this machine
    assert "yes" in next(ln for ln in r.output.splitlines() if ln.split("\t")[0] == "gaussian")
    r = run("models", "info", "ldm-celebahq-256")
    assert r.exit_code == 0 and '"latent_scaling_factor": 1.0' in r.output


CASES = [
    ("inpaint", "dps", ["--mask", "box"]),
    ("inpaint", "daps", ["--mask", "freeform"]),
    ("deblur", "pigdm", ["--kernel", "gaussian", "--kernel-size", "9"]),
    ("deblur", "dps", ["--kernel", "motion", "--kernel-size", "9"]),
    ("superres", "daps", ["--scale", "2"]),
    ("superres", "pigdm", ["--scale", "4", "--filter", "avgpool"]),
    ("phase-retrieval", "dps", ["--restarts", "2"]),
    ("hdr", "pigdm", []),
]


@pytest.mark.parametrize("task,method,opts", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_task_reference_mode(task, method, opts, photos, tmp_path):
    out = tmp_path / "out"
    r = run(task, photos, "--model", "gaussian", "--method", method, *FAST[method], *opts, "-o", out,
            "--diffstategrad", "--compare", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    m = metrics(out)
    assert m["config"]["method"]["diffstategrad"]["var_cutoff"] == 0.99
    assert m["config"]["mode"] == "reference" and m["config"]["seed"] == 0
    assert m["environment"]["torch"] == torch.__version__
    for stem, size in (("astro", (20, 24)), ("coffee", (24, 20))):
        assert Image.open(out / f"{stem}.png").size == size  # at the input's size
        assert (out / f"{stem}.measurement.png").exists() and (out / f"{stem}.compare.png").exists()
    for rec in m["images"]:
        assert rec["status"] == "ok" and rec["psnr"] > 5 and 0 <= rec["ssim"] <= 1 and rec["nfe"] > 0
    assert m["summary"]["psnr"]["n"] == 2
    if task == "phase-retrieval":
        assert m["config"]["restarts"] == {"count": 2, "rule": "min_measurement_residual"}
        assert all(rec["restarts"]["count"] == 2 for rec in m["images"])


def test_measured_mode(photos, tmp_path):
    # inpainting: a damaged photo and its mask (white = missing)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:12, 6:14] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "inp"
    r = run("inpaint", photos / "coffee.jpg", "--measured", "--mask", tmp_path / "mask.png", "--model", "gaussian",
            *FAST["dps"], "-o", out)
    assert r.exit_code == 0, r.output
    rec = metrics(out)["images"][0]
    assert rec["psnr"] is None and rec["residual"] is not None and rec["nfe"] == 12
    # deblurring with a kernel file
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    r = run("deblur", photos / "coffee.jpg", "--measured", "--kernel", tmp_path / "k.npy", "--model", "gaussian",
            "--method", "pigdm", *FAST["pigdm"], "-o", tmp_path / "deb")
    assert r.exit_code == 0, r.output
    # super-resolution: the input is the low-resolution image; the output is `scale` times larger
    r = run("superres", photos / "coffee.jpg", "--measured", "--scale", "2", "--model", "gaussian", *FAST["dps"],
            "-o", tmp_path / "sr")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "sr" / "coffee.png").size == (48, 40)
    r = run("hdr", photos / "coffee.jpg", "--measured", "--model", "gaussian", *FAST["dps"], "-o", tmp_path / "hdr")
    assert r.exit_code == 0, r.output


def test_folder_with_bad_and_odd_files_and_resume(messy, tmp_path):
    out = tmp_path / "out"
    r = run("inpaint", messy, "--model", "gaussian", *FAST["dps"], "-o", out, "--batch-size", "3")
    assert r.exit_code == 1  # one image failed ...
    m = metrics(out)
    status = {Path(rec["input"]).name: rec["status"] for rec in m["images"]}
    assert status == {"corrupt.png": "failed", "grey16.png": "ok", "rgba.png": "ok", "astro.webp": "ok"}
    assert "cannot read" in next(rec["error"] for rec in m["images"] if rec["status"] == "failed")
    for stem in ("grey16", "rgba", "astro"):  # ... and the others are all written
        assert (out / f"{stem}.png").exists()
    assert "Traceback" not in r.output
    # 16-bit input is read at full precision, not truncated to 8 bits
    from restore_cli.images.read import read_image

    g = read_image(messy / "grey16.png")
    assert g.shape == (1, 20, 24) and abs(float(g.max()) - 1.0) < 1e-6 and len(torch.unique(g)) > 256
    # rerun: finished images are skipped, their metrics kept
    before = (out / "grey16.png").stat().st_mtime_ns
    r = run("inpaint", messy, "--model", "gaussian", *FAST["dps"], "-o", out)
    m2 = metrics(out)
    st = {Path(rec["input"]).name: rec["status"] for rec in m2["images"]}
    assert st["grey16.png"] == "skipped" and (out / "grey16.png").stat().st_mtime_ns == before
    assert next(rec for rec in m2["images"] if rec["input"].endswith("grey16.png"))["psnr"] is not None
    assert r.exit_code == 1  # the corrupt file is tried again and fails again
    r = run("inpaint", messy, "--model", "gaussian", *FAST["dps"], "-o", out, "--overwrite")
    assert {rec["status"] for rec in metrics(out)["images"]} == {"ok", "failed"}


def test_result_does_not_depend_on_batch_size(photos, tmp_path):
    for bs in ("1", "2"):
        assert run("deblur", photos, "--model", "gaussian", *FAST["dps"], "--kernel", "motion", "--kernel-size", "7",
                   "-o", tmp_path / bs, "--batch-size", bs).exit_code == 0
    for stem in ("astro", "coffee"):
        a = np.asarray(Image.open(tmp_path / "1" / f"{stem}.png"), dtype=int)
        b = np.asarray(Image.open(tmp_path / "2" / f"{stem}.png"), dtype=int)
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("args,needle", [
    (["inpaint", "--method", "nope"], "unknown method"),
    (["inpaint", "--model", "no-such-model"], "unknown model"),
    (["phase-retrieval", "--method", "pigdm"], "does not support"),
    (["inpaint", "--set", "zeta_typo=1"], "no hyperparameter"),
    (["inpaint", "--set", "zeta=abc"], "not a valid float"),
    (["inpaint", "--method", "pigdm", "--set", "guidance=loud"], "must be one of"),
    (["inpaint", "--set", "zeta=-1"], "must be >= 0"),
    (["inpaint", "--dtype", "fp16", "--device", "cpu"], "fp16 needs"),
    (["inpaint", "--device", "cuda:7"], "cuda"),
    (["inpaint", "--fit", "stretch"], "--fit"),
    (["inpaint", "--mask", "nonexistent.png"], "--mask"),
    (["inpaint", "--measured", "--mask", "box"], "measured inpainting needs"),
    (["phase-retrieval", "--measured"], "no measured mode"),
    (["deblur", "--border", "mirror"], "--border"),
    (["inpaint", "--diffstategrad", "--var-cutoff", "1.5"], "--var-cutoff"),
    (["inpaint", "--steps", "0"], "--steps"),
])
def test_usage_errors_exit_2(args, needle, photos):
    r = run(*args, photos / "astro.png", "--model", "gaussian") if "--model" not in args else run(*args, photos / "astro.png")
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_missing_input_and_bad_option_exit_2(tmp_path):
    assert run("inpaint", tmp_path / "missing.png", "--model", "gaussian").exit_code == 2
    assert run("inpaint", "--no-such-option", "x.png").exit_code == 2
    assert run("inpaint", tmp_path, "--model", "gaussian").exit_code == 2  # an empty folder


def test_unavailable_model_exits_1_with_a_hint(photos, tmp_path):
    r = run("inpaint", photos / "astro.png", "--model", "ddpm-celebahq-256", "-o", tmp_path)
    assert r.exit_code == 1
    assert "restore models download ddpm-celebahq-256" in r.output and "Traceback" not in r.output
    r = run("models", "download", "ddpm-celebahq-256")
    assert r.exit_code == 1 and "HF_HUB_OFFLINE" in r.output


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from diffusers import DDPMScheduler

    d = tmp_path_factory.mktemp("tiny") / "tiny-ddpm"
    tiny_unet(size=16).save_pretrained(d / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(d / "scheduler")
    return d


def test_local_diffusers_model(tiny_model, photos, tmp_path):
    out = tmp_path / "out"
    r = run("superres", photos, "--model", tiny_model, "--method", "dps", *FAST["dps"], "--scale", "2", "-o", out)
    assert r.exit_code == 0, r.output
    m = metrics(out)
    assert m["config"]["model"]["source"] == "local" and m["images"][0]["working_size"] == [16, 16]
    assert Image.open(out / "astro.png").size == (20, 24)  # resized back to the input's size
    r = run("inpaint", photos, "--model", tiny_model, *FAST["dps"], "--fit", "pad", "-o", tmp_path / "pad")
    assert r.exit_code == 2 and "20x24 pixels, larger than" in r.output  # does not fit 16x16 by padding: found at once
    assert not (tmp_path / "pad").exists()


def test_filled_hub_cache_offline_as_a_subprocess(tiny_model, photos, tmp_path):
    """A model entry of source 'hub' served from a pre-filled cache with HF_HUB_OFFLINE=1."""
    from restore_cli.models.testing import fill_hub_cache

    cache, rev = tmp_path / "hub", "1" * 40
    fill_hub_cache(cache, "restore-tests/tiny-ddpm", tiny_model, rev)
    (tmp_path / "models.toml").write_text(
        '[models.tiny]\nkind = "pixel"\nsource = "hub"\nrepo_id = "restore-tests/tiny-ddpm"\n'
        f'revision = "{rev}"\ncomponents = {{ unet = "unet", scheduler = "scheduler" }}\nresolution = 16\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "restore_cli.cli.app", "hdr", str(photos / "astro.png"), "--model", "tiny",
           "--models-file", str(tmp_path / "models.toml"), *FAST["dps"], "-o", str(tmp_path / "out"), "--quiet"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = metrics(tmp_path / "out")
    assert m["config"]["model"]["revision"] == rev and m["images"][0]["status"] == "ok"
    assert m["config"]["model"]["resolved_revision"] == rev
    listing = subprocess.run([sys.executable, "-m", "restore_cli.cli.app", "models", "list", "--models-file",
                              str(tmp_path / "models.toml")], env=env, capture_output=True, text=True, timeout=300)
    assert "tiny" in listing.stdout and "Hub cache" in listing.stdout
    # a usage error from a subprocess: exit code 2, one line, no traceback
    p = subprocess.run([sys.executable, "-m", "restore_cli.cli.app", "hdr", str(photos / "astro.png"), "--method", "x"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_registry_pins_hub_revisions():
    import re

    from restore_cli.models.config import load_registry

    reg = load_registry()
    for name in ("ddpm-celebahq-256", "sd-v1-5", "sd-v1-4"):
        assert re.fullmatch(r"[0-9a-f]{40}", reg.models[name].revision), name
    assert reg.models["ldm-celebahq-256"].latent_scaling_factor == 1.0  # diffusers issue 6725
    assert reg.defaults["offline"] == "fmnist-ddpm-32" and reg.defaults["analytic"] == "gaussian" and reg.models["sd-v1-5"].default_prompt


def test_a_diverged_image_fails_with_its_reason(tiny_model, photos, tmp_path):
    """DAPS at a Langevin step far past its stability limit gives non-finite images: each is
    recorded as failed with the reason (metrics null, valid JSON), no black PNG is written, and
    the exit code is 1."""
    out = tmp_path / "out"
    r = run("inpaint", photos, "--model", tiny_model, "--method", "daps", *FAST["daps"], "--set", "lr=1e6",
            "--fit", "resize", "-o", out)
    assert r.exit_code == 1, r.output
    m = metrics(out)  # parses with the standard json module and validates against the schema
    assert len(m["images"]) == 2
    for rec in m["images"]:
        assert rec["status"] == "failed" and "diverged" in rec["error"] and rec["psnr"] is None
        assert not Path(rec["output"]).exists() and Path(rec["measurement"]).exists()


def test_a_folder_made_by_an_earlier_method_revision_is_not_resumed(photos, tmp_path, monkeypatch):
    """metrics.json records the method's revision; a rerun after a fix to the method (a higher
    revision) is refused rather than mixing old and new results, and a record from before the
    field existed counts as revision 1."""
    from restore_cli.solvers import PosteriorMean

    out = tmp_path / "out"
    args = ("inpaint", photos / "astro.png", "--model", "gaussian", "--method", "posterior-mean", "-o", out)
    assert run(*args).exit_code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["method"]["revision"] == 1
    del m["config"]["method"]["revision"]  # a folder from before revisions were recorded
    (out / "metrics.json").write_text(json.dumps(m))
    assert run(*args).exit_code == 0  # resumes: the image is done
    monkeypatch.setattr(PosteriorMean, "revision", 2)
    r = run(*args)
    assert r.exit_code == 2 and "the method's revision (a fix to it) was 1, now 2" in " ".join(r.output.split())


def test_metrics_record_the_noise_in_the_papers_units_and_on_0_1_images(photos, tmp_path):
    """--noise-sigma 0.02 in the papers' units is noise of std 0.01 on [0, 1] images, and metrics.json says both."""
    out = tmp_path / "out"
    r = run("inpaint", photos / "astro.png", "--model", "gaussian", "--method", "posterior-mean",
            "--noise-sigma", "0.02", "-o", out)
    assert r.exit_code == 0, r.output
    m = metrics(out)
    opr = m["config"]["operator"]
    assert opr["noise_sigma"] == 0.02 and "[-1, 1]" in opr["noise_unit"] and opr["sigma_y_01"] == pytest.approx(0.01)
    assert m["images"][0]["operator"]["sigma_y"] == pytest.approx(0.01)
