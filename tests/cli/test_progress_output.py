"""What a person meets (issue 29): progress lines in a log, a true line per image, short grouped help,
labelled compare figures, the Gaussian prior's default on photos, a quiet install."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
FMNIST = sorted((ROOT / "examples" / "fmnist").glob("*.png"))
runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# -- progress in a log ------------------------------------------------------------------------------

def test_a_run_into_a_log_file_prints_progress_lines(tmp_path):
    """stdout and stderr to a file (no terminal): plain lines with image k/n, step s/S, the time elapsed
    and an estimate of what is left, at RESTORE_PROGRESS_INTERVAL seconds, and one line per image."""
    log = tmp_path / "log"
    env = {**os.environ, "RESTORE_PROGRESS_INTERVAL": "0.01", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "restore_cli", "inpaint", "--model", "fmnist-ddpm-32", "--method",
                            "pigdm", "--steps", "20", *FMNIST[:2], "-o", tmp_path / "out"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_text()
    assert p.returncode == 0, text
    assert "loading model fmnist-ddpm-32" in text
    assert re.search(r"^image 1/2 \(0000-ankle-boot\): step \d+/20, elapsed \d+:\d\d:\d\d, about \d+:\d\d:\d\d left$",
                     text, re.M), text
    assert re.search(r"^image 2/2 \(0001-pullover\): step \d+/20", text, re.M), text
    assert re.search(r"^wrote .*0000-ankle-boot\.png PSNR [\d.]+ dB \[1/2 done, elapsed", text, re.M), text
    assert re.search(r"^wrote .*0001-pullover\.png PSNR [\d.]+ dB \[2/2 done, elapsed", text, re.M), text


def test_quiet_silences_the_progress_lines(tmp_path):
    r = run("inpaint", "--model", "fmnist-ddpm-32", "--method", "pigdm", "--steps", "5", FMNIST[0], "-o",
            tmp_path / "out", "--quiet", env={"RESTORE_PROGRESS_INTERVAL": "0"})
    assert r.exit_code == 0, r.output
    assert r.output == "", r.output


def test_a_suite_in_a_log_prints_cell_k_of_n(tmp_path):
    (tmp_path / "images").mkdir()
    Image.open(FMNIST[0]).save(tmp_path / "images" / "a.png")
    (tmp_path / "s.toml").write_text(f"""
[images]
paths = ["{tmp_path / 'images'}"]
[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}, {{ task = "deblur", kernel = "gaussian", kernel_size = 5 }}]
methods = ["pigdm"]
models = ["fmnist-ddpm-32"]
steps = 5
""")
    r = run("bench", tmp_path / "s.toml", "-o", tmp_path / "o", "--device", "cpu",
            env={"RESTORE_PROGRESS_INTERVAL": "0.000001"})
    assert r.exit_code == 0, r.output
    assert re.search(r"^cell 1/2 \(.*inpaint.*\): step \d/5, elapsed", r.stderr, re.M), r.stderr
    assert re.search(r"^done: .*deblur.* \[cell 2/2, elapsed \d+:\d\d:\d\d\]$", r.stderr, re.M), r.stderr


# -- a true line per image ------------------------------------------------------------------------------

def test_a_diverged_image_is_said_failed_not_written(tmp_path):
    out = tmp_path / "out"
    r = run("inpaint", "--model", "fmnist-ddpm-32", "--method", "daps", "--set", "annealing_steps=4", "--set",
            "langevin_steps=3", "--set", "lr=1e6", FMNIST[0], "-o", out)
    assert r.exit_code == 1, r.output
    assert "wrote" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1, r.stderr  # said once: when it happened, not again in the summary
    assert "diverged" in lines[0] and f"{out / FMNIST[0].stem}.png not written" in lines[0]
    assert not (out / f"{FMNIST[0].stem}.png").exists()


def test_an_unreadable_image_is_said_failed_once(tmp_path):
    (tmp_path / "in").mkdir()
    Image.open(FMNIST[0]).save(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = run("inpaint", "--model", "gaussian-fmnist", tmp_path / "in", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert re.search(r"^wrote .*good\.png", r.stderr, re.M)
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "bad.png" in failed[0] and "not written" in failed[0], r.stderr


# -- help ------------------------------------------------------------------------------------------------

def test_inpaint_help_is_short_grouped_and_plain():
    r = run("inpaint", "--help", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) < 70, len(lines)
    assert all(len(ln) <= 80 for ln in lines)
    for panel in ("Method", "DiffStateGrad", "Device", "Output"):
        assert re.search(rf"╭─ {panel} ─", r.output), panel
    assert "<" not in r.output.replace("<stem>", "")  # no <list[Path]>, <str>, <float>
    assert "PATH..." in r.output and "KEY=VALUE" in r.output and " FLOAT " in r.output


# -- compare figures -------------------------------------------------------------------------------------

MAGENTA = np.array([255, 0, 255])


def test_compare_figure_labels_its_panels_and_outlines_the_missing_box():
    from restore_cli.runs.figures import compare_figure
    from restore_cli.ops import Inpainting

    mask = torch.ones(1, 1, 32, 32)
    mask[..., 8:20, 10:24] = 0  # the missing box: rows 8-19, columns 10-23
    op = Inpainting(mask, 1, kind="box")
    img = torch.zeros(1, 32, 32)  # black, as a Fashion-MNIST background
    fig = compare_figure(img, img, img, op, {"fit": "none", "size": [32, 32]})
    a = (fig.permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)
    strip = a.shape[0] - 256  # panels enlarged x8 to 256 rows, under a label strip
    assert strip > 10
    labels = a[:strip]
    for x0 in (0, 260, 520):  # text in the strip above each panel, on white
        span = labels[:, x0:x0 + 256]
        assert (span < 128).all(-1).sum() > 20 and (span == 255).all(-1).mean() > 0.5
    magenta = (a[strip:] == MAGENTA).all(-1)
    rows, cols = np.nonzero(magenta[:, :256])
    assert rows.min() == 8 * 8 and rows.max() == 20 * 8 - 1 and cols.min() == 10 * 8 and cols.max() == 24 * 8 - 1
    assert not magenta[8 * 8 + 10:20 * 8 - 10, 10 * 8 + 10:24 * 8 - 10].any()  # an outline, not a filled box
    assert magenta[:, 260:516].sum() == magenta[:, :256].sum() == magenta[:, 520:776].sum()


def test_compare_png_from_the_cli_is_labelled_and_marks_the_box(tmp_path):
    out = tmp_path / "out"
    r = run("inpaint", "--model", "gaussian-fmnist", FMNIST[0], "--compare", "-o", out)
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(out / f"{FMNIST[0].stem}.compare.png"))
    assert a.ndim == 3 and a.shape[-1] == 3 and a.shape[0] > 256  # RGB, panels + label strip
    assert (a == MAGENTA).all(-1).sum() > 100
    assert (a[: a.shape[0] - 256] < 128).all(-1).any()  # the labels' text


# -- the Gaussian prior's default on photos ---------------------------------------------------------------

@pytest.mark.parametrize("extra,method", [([], "posterior-mean"), (["--samples", "2"], "posterior-sample"),
                                          (["--steps", "3"], "dps")])
def test_the_gaussian_models_default_method_is_its_exact_posterior(extra, method, tmp_path):
    r = run("inpaint", "--model", "gaussian", ROOT / "examples" / "coffee.png", *extra, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert metrics(tmp_path / "out")["config"]["method"]["name"] == method


# -- install ---------------------------------------------------------------------------------------------

def test_lpips_install_entry_runs_without_runpy_warning():
    p = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "restore_cli.metrics.lpips", "status"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0 and "found in sys.modules" not in p.stderr, p.stderr


def test_pyproject_license_is_an_spdx_string():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "MIT"
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(re.match(r"setuptools>=(\d+)", r)[1]) >= 77
               for r in data["build-system"]["requires"])


def test_quickstart_installs_only_what_restore_needs(tmp_path):
    """scripts/quickstart.sh runs bootstrap.sh --minimal: no pip upgrade, no test extras, no reference
    packages, no LPIPS backbones (a fake .venv records what would run)."""
    (tmp_path / "scripts").mkdir()
    for name in ("bootstrap.sh", "quickstart.sh"):
        (tmp_path / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    assert "bootstrap.sh --minimal" in (ROOT / "scripts" / "quickstart.sh").read_text()
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    calls = tmp_path / "calls"
    (venv / "python").write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *find_spec*) exit 1;; esac\n')
    (venv / "python").chmod(0o755)
    p = subprocess.run(["bash", "scripts/bootstrap.sh", "--minimal"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ran = calls.read_text()
    assert "-m pip install -q -e ." in ran and "[test]" not in ran
    assert "upgrade pip" not in ran and "guided-diffusion" not in ran and "lpips" not in ran
