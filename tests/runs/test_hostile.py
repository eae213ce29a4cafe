"""Hostile input, shared folders and changed reruns (issue 17): each case built, then the exit code, the
one-line message and that every good image is written and intact."""

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app

runner = CliRunner()
FAST = ["--model", "gaussian", "--method", "pseudo-inverse"]  # analytic: no network, milliseconds per image


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line(text: str) -> bool:
    return len([ln for ln in text.strip().splitlines() if ln.strip()]) == 1


def photo(path: Path, seed: int, hw=(20, 24)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


def bomb_png(path: Path, side: int = 40000) -> Path:
    """A 1-bit grey PNG of side x side pixels in a few hundred KB (zlib of zero rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# -- data lost or mixed up ---------------------------------------------------------------------------

def test_a_bomb_in_a_folder_fails_alone_and_the_good_images_are_written(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    photo(d / "a.png", 0)
    bomb_png(d / "b_bomb.png")
    photo(d / "c.png", 1)
    out = tmp_path / "out"
    r = run("inpaint", d, *FAST, "-o", out)
    assert r.exit_code == 1 and "Traceback" not in r.output
    st = {Path(x["input"]).name: x for x in metrics(out)["images"]}
    assert st["a.png"]["status"] == st["c.png"]["status"] == "ok"
    assert (out / "a.png").exists() and (out / "c.png").exists()
    bomb = st["b_bomb.png"]
    assert bomb["status"] == "failed" and "RESTORE_MAX_PIXELS" in bomb["error"] and "\n" not in bomb["error"]


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    photo(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".restore.lock", "a+") as f:  # a run in progress holds the folder
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run("inpaint", tmp_path / "a.png", *FAST, "-o", out)
    assert r.exit_code == 2 and "another restore run" in r.output and one_line(r.output)
    assert not (out / "a.png").exists() and not (out / "metrics.json").exists()
    assert run("inpaint", tmp_path / "a.png", *FAST, "-o", out).exit_code == 0  # released: it runs


def test_two_concurrent_processes_never_mix_one_folder(tmp_path):
    """Two real processes into one folder: one runs, the other is refused (or runs after); the folder
    ends with one consistent metrics.json and no temporary files."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        photo(d / f"p{i}.png", i, hw=(64, 64))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "restore_cli.cli.app", "inpaint", str(d), *FAST, "-o", str(out), "-q"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for c, e in results:
        if c == 2:
            assert "another restore run" in e
    m = metrics(out)
    assert sorted(Path(x["input"]).name for x in m["images"]) == ["p0.png", "p1.png", "p2.png"]
    assert all(x["status"] in ("ok", "skipped") for x in m["images"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name]


def test_colliding_output_names_get_distinct_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    photo(d / "a.png", 0)
    Image.open(photo(tmp_path / "x.png", 1)).save(d / "a.jpg")
    photo(d / "a-1.png", 2)
    photo(d / "b.png", 3)
    photo(d / "b.measurement.png", 4)
    out = tmp_path / "out"
    r = run("inpaint", d, *FAST, "-o", out, "--compare")
    assert r.exit_code == 0, r.output
    recs = metrics(out)["images"]
    outputs = [x["output"] for x in recs]
    assert len(recs) == 5 and len(set(outputs)) == 5 and all(Path(o).exists() for o in outputs)
    written = {p.name for p in out.iterdir() if p.suffix == ".png"}
    assert len(written) == 15  # restored, measurement and compare for each of the five
    # each restored file comes from its own input: the known pixels of the box inpainting equal the input's
    for x in recs:
        src = np.asarray(Image.open(x["input"]).convert("RGB"), dtype=int)
        res = np.asarray(Image.open(x["output"]).convert("RGB"), dtype=int)
        assert (np.abs(src - res).max(axis=-1) <= 8).mean() > 0.5


def test_inputs_that_would_map_to_one_name_are_refused(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        photo(tmp_path / sub / "a.png", 0)
    r = run("inpaint", tmp_path / "x" / "a.png", tmp_path / "y" / "a.png", *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "rename one" in r.output and one_line(r.output)


def test_names_that_clash_twice_are_resolved_or_refused_never_a_traceback(tmp_path):
    """``x/a.png``, ``y/a.jpg`` and ``a.png.png``: a.png/a.jpg clash, then a.png with a.png.png's stem."""
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
    photo(tmp_path / "x" / "a.png", 0)
    Image.open(photo(tmp_path / "t.png", 1)).save(tmp_path / "y" / "a.jpg")
    photo(tmp_path / "a.png.png", 2)
    r = run("inpaint", tmp_path / "x" / "a.png", tmp_path / "y" / "a.jpg", tmp_path / "a.png.png", *FAST,
            "-o", tmp_path / "out")
    assert r.exit_code in (0, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    if r.exit_code == 0:
        outs = [x["output"] for x in metrics(tmp_path / "out")["images"]]
        assert len(set(outs)) == 3


def test_a_rerun_never_takes_another_inputs_result_as_done(tmp_path):
    """x/a.png restored into a folder, then y/a.png (another image of the same name) into it: refused, the
    earlier result untouched (it was a.png's of x, not y's)."""
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
    photo(tmp_path / "x" / "a.png", 0)
    photo(tmp_path / "y" / "a.png", 1)
    out = tmp_path / "out"
    assert run("inpaint", tmp_path / "x" / "a.png", *FAST, "-o", out).exit_code == 0
    before = digest(out)
    r = run("inpaint", tmp_path / "y" / "a.png", *FAST, "-o", out)
    assert r.exit_code == 2 and "is not the result of" in r.output and "x/a.png" in r.output, r.output
    assert digest(out) == before
    assert run("inpaint", tmp_path / "x" / "a.png", *FAST, "-o", out).exit_code == 0  # its own: skipped
    assert metrics(out)["images"][0]["status"] == "skipped"


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_folder_equal_to_the_input_folder_is_refused(tmp_path, overwrite):
    d = tmp_path / "in"
    d.mkdir()
    photo(d / "a.png", 0)
    photo(d / "b.png", 1)
    before = digest(d)
    r = run("inpaint", d, *FAST, "-o", d, *(["--overwrite"] if overwrite else []))
    assert r.exit_code == 2 and "input folder" in r.output and one_line(r.output)
    assert digest(d) == before  # nothing written, nothing replaced
    # an input file that an output would replace, with -o elsewhere than its folder given as a folder
    out = tmp_path / "out"
    out.mkdir()
    photo(out / "a.png", 5)
    before = digest(out)
    r = run("inpaint", out / "a.png", *FAST, "-o", out, "--overwrite")
    assert r.exit_code == 2 and "overwrite the input" in r.output and digest(out) == before


def test_a_changed_rerun_is_refused_and_names_the_difference(tmp_path):
    photo(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    assert run("inpaint", tmp_path / "a.png", *FAST, "-o", out, "--seed", "0").exit_code == 0
    first = digest(out)
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", out, "--seed", "1", "--mask", "random")
    assert r.exit_code == 2 and one_line(r.output)
    assert "--seed was 0, now 1" in r.output and "--overwrite" in r.output and "--mask was box, now random" in r.output
    assert digest(out) == first  # metrics.json and the images untouched
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", out, "--seed", "0")  # the same settings: resumed
    assert r.exit_code == 0 and metrics(out)["images"][0]["status"] == "skipped"
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", out, "--seed", "1", "--overwrite")
    assert r.exit_code == 0 and metrics(out)["config"]["seed"] == 1 and metrics(out)["images"][0]["status"] == "ok"


def test_a_rerun_with_other_images_keeps_the_earlier_records(tmp_path):
    photo(tmp_path / "a.png", 0)
    photo(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    assert run("inpaint", tmp_path / "a.png", *FAST, "-o", out).exit_code == 0
    assert run("inpaint", tmp_path / "b.png", *FAST, "-o", out).exit_code == 0
    assert sorted(Path(x["input"]).name for x in metrics(out)["images"]) == ["a.png", "b.png"]


def test_outputs_without_a_record_are_not_taken_as_done(tmp_path):
    photo(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    out.mkdir()
    photo(out / "a.png", 9)  # a file of the user's, not a result
    before = digest(out)
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", out)
    assert r.exit_code == 2 and "no metrics.json" in r.output and digest(out) == before


def test_images_not_reached_are_pending_not_failed(tmp_path, monkeypatch):
    from restore_cli.runs import execute as run_mod
    from restore_cli.runs.plan import resolve
    from restore_cli.runs.checks import RunConfig

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        photo(d / f"p{i}.png", i)
    calls = []
    real = run_mod._process

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "_process", interrupted)
    plan = resolve(RunConfig(task="inpaint", inputs=[d], method="pseudo-inverse", model="gaussian",
                                     output=tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt):
        run_mod.execute(plan)
    m = metrics(tmp_path / "out")
    assert [x["status"] for x in m["images"]] == ["ok", "pending", "pending"]
    assert m["summary"]["images"] == {"ok": 1, "failed": 0, "skipped": 0, "pending": 2} and m["interrupted"]
    monkeypatch.setattr(run_mod, "_process", real)
    r = run("inpaint", d, "--model", "gaussian", "--method", "pseudo-inverse", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert [x["status"] for x in metrics(tmp_path / "out")["images"]] == ["skipped", "ok", "ok"]


# -- values that make no sense -------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["inpaint", "--method", "dps", "--set", "zeta=nan"], "finite"),
    (["inpaint", "--method", "dps", "--set", "zeta=inf"], "finite"),
    (["inpaint", "--noise-sigma", "nan"], "finite"),
    (["inpaint", "--noise-sigma", "inf"], "finite"),
    (["inpaint", "--noise-sigma", "1e9"], "--noise-sigma must be <="),
    (["superres", "--scale", "0"], "--scale"),
    (["superres", "--scale", "-2"], "--scale"),
    (["deblur", "--kernel-size", "0"], "--kernel-size"),
    (["hdr", "--hdr-scale", "-1"], "--hdr-scale"),
    (["inpaint", "--diffstategrad", "--period", "0"], "--period"),
    (["phase-retrieval", "--oversample", "0"], "--oversample"),
    (["inpaint", "--batch-size", "0"], "--batch-size"),
    (["inpaint", "--rank-mode", "sideways"], "--rank-mode"),
    (["inpaint", "--method", "nope"], "unknown method"),
])
def test_values_that_make_no_sense_are_usage_errors(args, needle, tmp_path):
    photo(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    r = run(*args, tmp_path / "a.png", "--model", "gaussian", "-o", out)
    assert r.exit_code == 2, r.output
    assert needle in r.output and one_line(r.output) and "Traceback" not in r.output
    assert not out.exists()  # found before anything was written


def test_usage_errors_come_before_torch_is_imported(tmp_path):
    """A usage error is found without importing torch (seconds saved on every typo)."""
    photo(tmp_path / "a.png", 0)
    code = ("import sys; from typer.testing import CliRunner; from restore_cli.cli.app import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code, 'torch' in sys.modules)")
    for args in (["inpaint", "--method", "nope"], ["superres", "--scale", "0"], ["inpaint", "--noise-sigma", "nan"],
                 ["inpaint", "-o", str(tmp_path / "a.png")]):
        p = subprocess.run([sys.executable, "-c", code, *args, str(tmp_path / "a.png")], capture_output=True, text=True)
        assert p.stdout.split() == ["2", "False"], (args, p.stdout, p.stderr)


def test_output_that_is_a_file_or_not_writable(tmp_path):
    photo(tmp_path / "a.png", 0)
    (tmp_path / "file.txt").write_text("mine")
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", tmp_path / "file.txt")
    assert r.exit_code == 2 and "not a folder" in r.output and one_line(r.output)
    assert (tmp_path / "file.txt").read_text() == "mine"
    r = run("inpaint", tmp_path / "a.png", *FAST, "-o", tmp_path / "file.txt" / "sub")
    assert r.exit_code == 2 and "is a file" in r.output
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            r = run("inpaint", tmp_path / "a.png", *FAST, "-o", ro / "out")
            assert r.exit_code == 2 and "permission denied" in r.output
        finally:
            ro.chmod(0o700)


def test_too_few_steps_warn_and_are_recorded(tmp_path):
    photo(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    r = run("inpaint", tmp_path / "a.png", "--model", "gaussian", "--method", "dps", "--steps", "3", "-o", out)
    assert r.exit_code == 0, r.output
    assert "tuned for 1000 steps; at 3" in r.output
    assert any("tuned for 1000" in w for w in metrics(out)["config"]["warnings"])
    r = run("inpaint", tmp_path / "a.png", "--model", "gaussian", "--method", "pseudo-inverse", "-o", tmp_path / "o2")
    assert "warning" not in r.output and metrics(tmp_path / "o2")["config"]["warnings"] == []


# -- images as users have them ---------------------------------------------------------------------

def test_exif_rotated_photo_is_restored_upright(tmp_path):
    a = np.zeros((20, 32, 3), np.uint8)
    a[:, :8] = 255  # a white band on the left of the stored (landscape) pixels
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert run("inpaint", tmp_path / "phone.jpg", *FAST, "-o", out).exit_code == 0
    res = np.asarray(Image.open(out / "phone.png").convert("L"), dtype=float)
    assert res.shape == (32, 20)  # portrait, as the photo is shown
    assert res[:8].mean() > 200 and res[-8:].mean() < 60  # the band is now on top


def test_16_bit_rgb_in_gives_16_bit_out(tmp_path):
    from restore_cli.images.read import read_image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    from restore_cli.images.write import write_png
    import torch

    write_png(tmp_path / "deep.png", torch.from_numpy(a.astype(np.float64) / 65535).permute(2, 0, 1), bits=16)
    x = read_image(tmp_path / "deep.png")
    assert x.shape == (3, 20, 24) and np.abs(x.permute(1, 2, 0).numpy() * 65535 - a).max() < 0.5
    out = tmp_path / "out"
    assert run("superres", tmp_path / "deep.png", "--model", "gaussian", "--method", "posterior-mean",
               "--scale", "2", "-o", out).exit_code == 0
    assert (out / "deep.png").read_bytes()[24] == 16  # the PNG header's bit depth
    y = (read_image(out / "deep.png").numpy() * 65535).round()
    assert y.shape == (3, 20, 24) and (y % 257 != 0).mean() > 0.9  # not 8-bit values scaled up


def test_colour_dropped_for_a_grey_model_is_said_once(tmp_path):
    for i in range(2):
        photo(tmp_path / f"c{i}.png", i)
    out = tmp_path / "out"
    r = run("inpaint", tmp_path, "--model", "gaussian-grey", "--method", "pseudo-inverse", "-o", out)
    assert r.exit_code == 0, r.output
    assert r.output.count("colour to grey") == 1
    m = metrics(out)
    assert all(x["converted"] == "colour to grey" for x in m["images"])
    assert any("colour to grey" in w for w in m["config"]["warnings"])


def test_posterior_mean_reports_its_convergence(tmp_path):
    """issue 17, 19: the posterior mean converges, or says per image that it did not."""
    photo(tmp_path / "a.png", 0, hw=(48, 48))
    out = tmp_path / "out"
    r = run("deblur", tmp_path / "a.png", "--model", "gaussian", "--method", "posterior-mean", "-o", out)
    assert r.exit_code == 0, r.output
    cg = metrics(out)["images"][0]["cg"]
    assert cg["converged"] and cg["relative_residual"] <= cg["tol"] and "warning" not in r.output
    r = run("deblur", tmp_path / "a.png", "--model", "gaussian", "--method", "posterior-mean", "--set", "max_iters=2",
            "-o", tmp_path / "o2")
    assert r.exit_code == 0 and "not exact" in r.output and "RuntimeWarning" not in r.output
    assert metrics(tmp_path / "o2")["images"][0]["cg"]["converged"] is False


def test_measured_nonlinear_blur_is_refused(tmp_path):
    (tmp_path / "k.pth").write_bytes(b"x")
    r = run("deblur", photo(tmp_path / "a.png", 0), "--kernel", "nonlinear", "--kernel-model", tmp_path / "k.pth",
            "--measured", "--method", "dps", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "clean reference images" in r.output and one_line(r.output), r.output
