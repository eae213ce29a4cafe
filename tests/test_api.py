"""``restore_cli.restore(...)``: the command from Python, with the same defaults, pixels and records."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import restore_cli
from restore_cli.cli.app import app
from restore_cli.errors import UsageError
from restore_cli.images.read import read_image

ROOT = Path(__file__).resolve().parents[1]
FMNIST = sorted((ROOT / "examples" / "fmnist").glob("*.png"))[:2]
# what differs between two runs of the same thing: times, paths, the command line, the environment
VOLATILE = {"seconds", "peak_memory_mb", "output", "measurement", "input", "started", "finished", "command"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE and k != "environment"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.mark.parametrize("args,kwargs", [
    (["inpaint", "--model", "fmnist-ddpm-32", "--method", "pigdm", "--steps", "8", "--diffstategrad"],
     dict(task="inpaint", model="fmnist-ddpm-32", method="pigdm", steps=8, diffstategrad=True)),
    (["deblur", "--model", "fmnist-ldm-32", "--method", "psld", "--steps", "4", "--kernel-size", "9", "--seed", "3"],
     dict(task="deblur", model="fmnist-ldm-32", method="psld", steps=4, kernel_size=9, seed=3)),
    (["superres", "--model", "gaussian-fmnist", "--scale", "2"],  # the command's default method (posterior mean)
     dict(task="superres", model="gaussian-fmnist", scale=2)),
], ids=["pigdm-dsg", "latent-psld", "default-method"])
def test_same_pixels_and_records_as_the_command(tmp_path, args, kwargs):
    r = CliRunner().invoke(app, [*args, *map(str, FMNIST), "-o", str(tmp_path / "cli"), "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    task = kwargs.pop("task")
    got = restore_cli.restore(FMNIST, task, device="cpu", output=tmp_path / "api", **kwargs)
    assert len(got.images) == len(FMNIST)
    for path, img, rec in zip(FMNIST, got.images, got.records):
        assert rec["status"] == "ok"
        want = read_image(tmp_path / "cli" / f"{path.stem}.png")
        assert torch.equal(img, want), path.name  # the same pixels as the command wrote
        assert torch.equal(img, read_image(tmp_path / "api" / f"{path.stem}.png"))
    assert _strip(got.metrics["config"]) == _strip(cli["config"])
    assert _strip(got.records) == _strip(cli["images"])
    assert got.metrics["config"]["seed"] == kwargs.get("seed", 0)


def test_tensors_in_a_temporary_folder():
    x = read_image(FMNIST[0])[None].repeat(2, 1, 1, 1)
    got = restore_cli.restore(x, "inpaint", model="gaussian-fmnist", device="cpu")
    assert got.output is None and len(got.images) == 2
    for img, rec in zip(got.images, got.records):
        assert rec["status"] == "ok" and img.shape == x.shape[1:] and rec["psnr"] > 15
    assert got.metrics["config"]["method"]["name"] == "posterior-mean"  # the command's default here


def test_what_the_command_refuses_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--steps"):
        restore_cli.restore(FMNIST, "inpaint", model="fmnist-ddpm-32", method="dps", steps=0, output=tmp_path / "o")
    with pytest.raises(UsageError):
        restore_cli.restore(FMNIST, "inpaint", method="no-such-method", output=tmp_path / "o")
    with pytest.raises(UsageError, match="tensor"):
        restore_cli.restore(torch.zeros(2, 3), "inpaint")
    assert not (tmp_path / "o").exists()


def test_path_options_take_paths(tmp_path):
    """A mask file given as a pathlib.Path, as Python callers write it."""
    from PIL import Image

    mask = tmp_path / "mask.png"
    a = torch.zeros(32, 32)
    a[8:20, 8:20] = 1
    Image.fromarray((a.numpy() * 255).astype("uint8")).save(mask)
    got = restore_cli.restore(FMNIST[:1], "inpaint", model="gaussian-fmnist", mask=mask, device="cpu")
    assert got.records[0]["status"] == "ok" and got.metrics["config"]["operator"]["task_options"]["mask"] == str(mask)
