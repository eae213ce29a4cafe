"""Issue 29: every mistake in the options is a usage error found at once (exit 2, one line, before any model
loads, nothing written), messages are in the user's words, and issue 28's noiseless JPEG default.

Each case goes through the CLI; the few that need no run at all call the function the CLI calls."""

import hashlib
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from restore_cli.runs.checks import RunConfig, check, cuda_possible
from restore_cli.cli.app import app

runner = CliRunner()
FAST = ["--model", "gaussian", "--method", "pseudo-inverse"]  # analytic: no network, milliseconds per image
FMNIST = ["--model", "fmnist-ddpm-32", "--method", "pigdm", "--steps", "2"]  # bundled, 32x32 grey


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line(text: str) -> bool:
    return len([ln for ln in text.strip().splitlines() if ln.strip()]) == 1


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def grey(path: Path, hw=(28, 28), value=None) -> Path:
    a = np.full(hw, value, np.uint8) if value is not None else np.random.default_rng(0).integers(0, 256, hw, np.uint8)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    """An input, an output folder holding an earlier file of the user's, and broken option files."""
    d = tmp_path
    grey(d / "a.png")  # 28x28: the fmnist model works at 32x32
    grey(d / "big.png", (64, 64))
    grey(d / "one.png", (1, 1))
    grey(d / "mask16.png", (16, 16), 255)
    (d / "text.png").write_text("not an image")
    np.save(d / "zeros.npy", np.zeros((5, 5)))
    np.save(d / "nan.npy", np.full((5, 5), np.nan))
    np.save(d / "cube.npy", np.ones((3, 5, 5)))
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.mkfifo(d / "pipe.png")
    (d / "notes.txt").write_text("mine")
    out = d / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    return d


CASES = [  # (arguments, in the message), each with -o out
    (["inpaint", "{d}/a.png", *FMNIST, "--mask", "{d}/text.png"], "--mask {d}/text.png: not a mask image"),
    (["inpaint", "{d}/a.png", *FMNIST, "--mask", "{d}/mask16.png"], "is 16x16 pixels, but {d}/a.png is 28x28 and is "
                                                                    "restored at 32x32"),
    (["inpaint", "{d}/a.png", *FMNIST, "--mask", "{d}/pipe.png"], "--mask {d}/pipe.png is a named pipe"),
    (["deblur", "{d}/a.png", *FMNIST, "--kernel", "{d}/text.png"], "--kernel {d}/text.png: not a kernel"),
    (["deblur", "{d}/a.png", *FMNIST, "--kernel", "{d}/zeros.npy"], "positive sum"),
    (["deblur", "{d}/a.png", *FMNIST, "--kernel", "{d}/nan.npy"], "25 of its 25 values are NaN or infinite"),
    (["deblur", "{d}/a.png", *FMNIST, "--kernel", "{d}/cube.npy"], "is 3-D (3x5x5)"),
    (["deblur", "{d}/a.png", *FMNIST, "--kernel", "{d}/objects.npy"], "it holds Python objects, not numbers"),
    (["inpaint", "{d}/big.png", *FMNIST, "--fit", "pad"], "--fit pad: {d}/big.png is 64x64 pixels, larger than "
                                                          "fmnist-ddpm-32's 32x32"),
    (["inpaint", "{d}/a.png", *FMNIST, "-o", "/proc/restore-test"], "/proc is on the kernel's proc file system"),
    (["inpaint", "{d}/a.png", *FMNIST, "-o", "/sys/restore-test/x"], "the kernel's sysfs file system"),
    (["inpaint", "{d}/one.png", "--model", "gaussian-grey"], "{d}/one.png is 1x1 pixels: too small for a box mask "
                                                             "(half its height and width); the smallest is 2x2"),
    (["superres", "{d}/one.png", "--model", "gaussian-grey"], "too small to downscale by --scale 4; the smallest is 4x4"),
    (["inpaint", "{d}/pipe.png", *FAST], "{d}/pipe.png is a named pipe, not a file"),
    (["inpaint", "{d}/notes.txt", *FAST], "{d}/notes.txt: not an image file name"),
    (["inpaint", "{d}/a.png", *FMNIST, "--prompt", "a shoe"], "model 'fmnist-ddpm-32' is not text-conditioned"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(c[0][4:] if c[0][2] == "--model" else c[0][:2])
                                                     for c in CASES])
def test_option_mistakes_are_usage_errors_at_once(files, args, needle):
    d = files
    args = [a.format(d=d) for a in args]
    if "-o" not in args:
        args += ["-o", d / "out"]
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()}
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert one_line(r.output) and r.output.startswith("usage error:"), r.output
    assert needle.format(d=d) in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and "Error:" not in r.output
    assert digest(d / "out") == {"keep.txt": hashlib.sha256(b"the user's").hexdigest()}  # nothing written
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()} == before


def test_max_pixels_variable_is_checked_before_the_run(files):
    r = run("inpaint", files / "a.png", *FMNIST, "-o", files / "new", env={"RESTORE_MAX_PIXELS": "abc"})
    assert r.exit_code == 2 and one_line(r.output) and "RESTORE_MAX_PIXELS must be a number of pixels" in r.output
    assert not (files / "new").exists()


@pytest.mark.skipif(cuda_possible(), reason="this machine may have CUDA")
def test_cuda_and_fp16_without_a_gpu_driver(files):
    for args, needle in ((["--device", "cuda"], "CUDA is not available"), (["--dtype", "fp16"], "fp16 needs a cuda"),
                         (["--device", "mps"], "MPS is not available")):
        r = run("inpaint", files / "a.png", *FAST, "-o", files / "new", *args)
        assert r.exit_code == 2 and one_line(r.output) and needle in r.output, r.output


def test_a_mask_of_the_image_or_the_working_size_is_taken(files):
    """The rule: a mask is the size the run works at, or (with --fit resize) the input's own size."""
    d = files
    grey(d / "mask28.png", (28, 28), 255)
    grey(d / "mask32.png", (32, 32), 255)
    cfg = dict(task="inpaint", inputs=[d / "a.png"], method="pigdm", model="fmnist-ddpm-32", output=d / "new")
    check(RunConfig(task_opts={"mask": str(d / "mask28.png")}, **cfg))
    check(RunConfig(task_opts={"mask": str(d / "mask32.png")}, **cfg))
    check(RunConfig(task_opts={"mask": str(d / "mask32.png")}, fit="pad", **cfg))
    r = run("inpaint", d / "a.png", *FMNIST, "--fit", "pad", "--mask", d / "mask28.png", "-o", d / "new")
    assert r.exit_code == 2 and "give a 32x32 mask" in " ".join(r.output.split()), r.output
    r = run("inpaint", d / "a.png", "--model", "gaussian-grey", "--mask", d / "mask32.png", "-o", d / "new")
    assert r.exit_code == 2 and "{} is 28x28: give a 28x28 mask".format(d / "a.png") in " ".join(r.output.split())


PURE_OPTIONS = [  # usage errors found without torch
    ["--prompt", "hi"], ["--mask", "{d}/mask16.png"], ["--fit", "pad", "{d}/big.png"], ["--steps", "0"],
    ["--kernel-size", "0"], ["-o", "/proc/x"],
] + ([["--device", "cuda"], ["--dtype", "fp16"]] if not cuda_possible() else [])
PROBE = """
import sys, time
from typer.testing import CliRunner
from restore_cli.cli.app import app
cases, forbidden = {cases!r}, {forbidden!r}
t = time.time()
for args in cases:
    task = "deblur" if "--kernel-size" in args else "inpaint"
    r = CliRunner().invoke(app, [task, *args])
    assert r.exit_code == 2, (args, r.output)
loaded = [m for m in forbidden if m in sys.modules]
assert not loaded, loaded
print(round((time.time() - t) / len(cases), 2))
"""


def probe(cases, forbidden):
    r = subprocess.run([sys.executable, "-c", PROBE.format(cases=cases, forbidden=forbidden)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip())


def test_pure_option_mistakes_do_not_import_torch(files):
    d = files
    base = ["{d}/a.png", *FMNIST, "-o", "{d}/new"]
    cases = [[a.format(d=d) for a in (base if "{d}/big.png" not in c else base[1:]) + c] for c in PURE_OPTIONS]
    probe(cases, ["torch", "diffusers", "transformers"])
    assert not (d / "new").exists()


def test_other_usage_errors_do_not_import_diffusers(files):
    """--set names (the solver classes: torch), a locked folder and a changed rerun: about a second, not the
    5-15 s of importing diffusers and transformers first."""
    import fcntl

    d = files
    done, locked = d / "done", d / "locked"
    assert run("inpaint", d / "a.png", *FAST, "-o", done).exit_code == 0
    locked.mkdir()
    first = digest(done)
    with open(locked / ".restore.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in progress holds it
        probe([[str(d / "a.png"), *FAST, "-o", str(d / "new"), "--set", "nope=1"],
               [str(d / "a.png"), *FMNIST, "-o", str(d / "new"), "--set", "eta=-1"],
               [str(d / "a.png"), *FAST, "-o", str(locked)],
               [str(d / "a.png"), *FAST, "-o", str(done), "--mask", "random"]], ["diffusers", "transformers"])
    assert digest(done) == first


def test_a_changed_rerun_says_what_changed_in_option_words(files):
    d = files
    assert run("inpaint", d / "a.png", *FAST, "-o", d / "o", "--seed", "0").exit_code == 0
    first = digest(d / "o")
    r = run("inpaint", d / "a.png", *FAST, "-o", d / "o", "--seed", "1", "--mask", "random")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and one_line(r.output)
    assert "--mask was box, now random" in text and "--seed was 0, now 1" in text, text
    assert "->" not in text and "{" not in text and "'" not in text
    assert digest(d / "o") == first


def test_nan_pixels_are_refused_when_read_naming_the_file(files):
    tifffile = pytest.importorskip("tifffile")
    d = files / "in"
    d.mkdir()
    for name, bad in (("nan.tif", np.nan), ("inf.tif", np.inf)):
        a = np.random.default_rng(1).random((20, 24)).astype(np.float32)
        a[3, 4] = bad
        tifffile.imwrite(d / name, a)
    grey(d / "good.png", (20, 24))
    out = files / "o"
    r = run("inpaint", d, *FAST, "-o", out)
    assert r.exit_code == 1, r.output
    recs = {Path(x["input"]).name: x for x in json.loads((out / "metrics.json").read_text())["images"]}
    for name in ("nan.tif", "inf.tif"):
        assert recs[name]["status"] == "failed" and "NaN or infinite" in recs[name]["error"]
        assert str(d / name) in recs[name]["error"] and "step size" not in recs[name]["error"]
        assert not (out / f"{Path(name).stem}.png").exists()
    assert recs["good.png"]["status"] == "ok" and (out / "good.png").exists()
    assert "RuntimeWarning" not in r.output and "Error:" not in r.output


def test_gif_is_read_by_name_and_in_a_folder(files):
    d = files / "gifs"
    d.mkdir()
    grey(d / "g.gif", (20, 24))
    grey(d / "p.png", (20, 24))
    r = run("inpaint", d, *FAST, "-o", files / "o1")
    assert r.exit_code == 0, r.output
    assert (files / "o1" / "g.png").exists() and (files / "o1" / "p.png").exists()
    r = run("inpaint", d / "g.gif", "--model", "gaussian-grey", "--method", "pseudo-inverse", "-o", files / "o2")
    assert r.exit_code == 0 and (files / "o2" / "g.png").exists()
    rec = json.loads((files / "o2" / "metrics.json").read_text())["images"][0]
    assert "converted" not in rec  # a grey GIF is a grey image (its palette's greys), as a grey model takes it


def test_failed_images_say_words_and_metrics_keep_the_exception():
    from restore_cli.runs.batch import error_fields

    try:
        raise ValueError("box 0x0 does not fit a 1x1 image")
    except ValueError as e:
        f = error_fields(e)
    assert f["error"] == "box 0x0 does not fit a 1x1 image"
    assert f["error_type"].startswith("ValueError at test_usage_errors.py:")
    assert error_fields(KeyError("unet"))["error"] == "missing entry 'unet'"


def test_bench_tolerances_in_words():
    from restore_cli.bench.results import parse_tolerances
    from restore_cli.cli.bench import say_tolerances

    assert say_tolerances(parse_tolerances(["psnr=0.5", "lpips=0.02"])).startswith("psnr 0.5 dB, ")
    assert "{" not in say_tolerances(parse_tolerances([]))


def test_a_url_download_is_named_after_its_file():
    from restore_cli.models.hub import _url_file_name

    spec = types.SimpleNamespace(url="https://example.org/zoo/ffhq.zip?x=1", filename="model.ckpt")
    assert _url_file_name(spec) == "ffhq.zip"
    spec = types.SimpleNamespace(url="https://example.org/files/ckpt%201.pt", filename="model.ckpt")
    assert _url_file_name(spec) == "model.ckpt"
    assert _url_file_name(types.SimpleNamespace(url="https://example.org/a/b.pt", filename=None)) == "b.pt"


def test_loading_libraries_are_silent_while_a_model_loads():
    from restore_cli.models.hub import quiet_loading

    lg = logging.getLogger("diffusers.models.modeling_utils")
    before = logging.getLogger("diffusers").level
    with quiet_loading():
        assert not lg.isEnabledFor(logging.ERROR)  # "An error occurred while trying to fetch ..." is logged at ERROR
    assert logging.getLogger("diffusers").level == before


# -- issue 28: JPEG measurements are noiseless by default ---------------------------------------------------

def test_jpeg_defaults_to_no_noise_and_an_explicit_sigma_wins(files):
    d = files
    grey(d / "j.png", (16, 16))
    r = run("jpeg", d / "j.png", *FAST, "-o", d / "j0")
    assert r.exit_code == 0, r.output
    opr = json.loads((d / "j0" / "metrics.json").read_text())["config"]["operator"]
    assert opr["noise_sigma"] == 0 and opr["sigma_y_01"] == 0
    r = run("jpeg", d / "j.png", *FAST, "-o", d / "j1", "--noise-sigma", "0.02")
    assert r.exit_code == 0 and json.loads((d / "j1" / "metrics.json").read_text())["config"]["operator"]["noise_sigma"] == 0.02
    base = dict(inputs=[d / "j.png"], method="pseudo-inverse", model="gaussian", output=d / "x")
    for task, opts, sigma in (("inpaint", {"then": "jpeg:10"}, 0.0), ("inpaint", {}, 0.01), ("deblur", {}, 0.01)):
        cfg = RunConfig(task=task, task_opts=opts, **base)
        check(cfg)
        assert cfg.noise_sigma == sigma, (task, opts)


def test_noise_sigma_help_says_the_jpeg_default():
    import typer

    cmd = typer.main.get_command(app).commands["jpeg"]
    text = next(p.help for p in cmd.params if p.name == "noise_sigma")
    assert "0.01" in text and "0 for jpeg and --then jpeg:Q" in text


def test_bench_jpeg_cells_follow_the_same_noise_rule(tmp_path):
    from restore_cli.bench.suite import load_suite

    imgs = tmp_path / "images"
    imgs.mkdir()
    grey(imgs / "a.png", (16, 16))

    def cells(top: str, grid: str = ""):
        (tmp_path / "s.toml").write_text(f"""
{top}
[images]
paths = ["images"]

[[grid]]
tasks = ["jpeg", "inpaint"]
methods = ["pseudo-inverse"]
models = ["gaussian-grey"]
{grid}
""")
        return {c.task: c.noise_sigma for c in load_suite(tmp_path / "s.toml").cells}

    assert cells("") == {"jpeg": 0.0, "inpaint": 0.01}
    assert cells("noise_sigma = 0.05") == {"jpeg": 0.05, "inpaint": 0.05}  # said: it wins
    assert cells("", "noise_sigma = 0.02") == {"jpeg": 0.02, "inpaint": 0.02}


@pytest.mark.parametrize("argv, says", [
    (["inpaint", "--methd", "dps", "x.png"], "usage error: No such option: --methd (Possible options: --method"),
    (["inpaint"], "usage error: Missing argument 'IMAGES'; see 'restore inpaint --help'"),
    (["inpaint", "--steps", "abc", "x.png"], "usage error: Invalid value for '--steps'"),
    (["frobnicate"], "usage error: No such command 'frobnicate'; see 'restore --help'"),
])
def test_the_command_lines_own_mistakes_are_one_line_too(argv, says):
    """Click's errors (unknown option, missing argument, bad value) from the console script: one line, exit 2,
    no framed block and no traceback."""
    script = Path(sys.executable).parent / "restore"  # the console script, so the command path reads "restore"
    r = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), r.stderr
    assert "╭" not in r.stderr and "Traceback" not in r.stderr
