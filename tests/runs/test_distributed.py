"""Many processes (issue 18): `accelerate launch` on the CPU (gloo) shards a folder across two processes,
with results identical image by image to one process, one merged metrics.json, and a rerun after a
killed process (with another number of processes) that finishes the rest."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SLOW = ["--model", "gaussian", "--method", "dps", "--steps", "40"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, *args) -> list[str]:
    """`accelerate launch` with n processes on the CPU (its multi-process launcher; gloo), or one plain process."""
    if n == 1:
        return [sys.executable, "-m", "restore_cli", *map(str, args)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "restore_cli", *map(str, args), "--device", "cpu"]


ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


@pytest.fixture(scope="module")
def single(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    p = subprocess.run(launch(1, "inpaint", folder, *SLOW, "-o", out, "-q"), capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    return out


def same_images(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.png"))
    assert names == sorted(p.name for p in b.glob("*.png")) and len(names) == 12
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_two_processes_give_the_single_process_results(folder, single, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(launch(2, "inpaint", folder, *SLOW, "-o", out), capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    same_images(single, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["processes"] == 2 and m["finished"]
    assert m["summary"]["images"] == {"ok": 6, "failed": 0, "skipped": 0, "pending": 0}
    assert sorted(Path(r["input"]).name for r in m["images"]) == [f"p{i}.png" for i in range(6)]
    assert p.stdout.count("wrote ") == 0 or p.stdout.count("metrics:") == 1  # one summary, from rank 0
    assert not [q for q in out.iterdir() if q.name.startswith(".")]  # no lock or temporary files left
    assert "6/6 images done (all processes)" in p.stderr  # rank 0 reports the run's total, not its share


def test_a_killed_launch_is_finished_by_a_rerun_with_another_process_count(folder, single, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(launch(2, "inpaint", folder, *SLOW, "-o", out, "-q"), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("p*.measurement.png")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    proc.wait()
    m = json.loads((out / "metrics.json").read_text())  # what was written is a valid record
    statuses = [r["status"] for r in m["images"]]
    assert set(statuses) <= {"ok", "pending"} and "pending" in statuses  # killed mid-run
    p = subprocess.run(launch(1, "inpaint", folder, *SLOW, "-o", out, "-q"), capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    same_images(single, out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["summary"]["images"]["ok"] + m["summary"]["images"]["skipped"] == 6


def test_a_bench_suite_sharded_over_two_processes(tmp_path):
    """The regression suite's cells split over two processes: the same cells and numbers as one process."""
    suite = Path(__file__).resolve().parents[2] / "benchmarks" / "regression.toml"
    only = ["--only", "pseudo-inverse", "--only", "posterior-mean"]
    one, two = tmp_path / "one", tmp_path / "two"
    for n, out in ((1, one), (2, two)):
        cmd = launch(n, "bench", suite, "-o", out, "-q", *only)
        if n == 1:
            cmd += ["--device", "cpu"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
        assert p.returncode == 0, p.stderr[-3000:]
    a = json.loads((one / "results.json").read_text())["cells"]
    b = json.loads((two / "results.json").read_text())["cells"]
    assert list(a) == list(b) and len(a) >= 2
    for k in a:
        assert a[k]["status"] == b[k]["status"]
        if a[k]["status"] == "ok":
            assert a[k]["summary"]["psnr"] == b[k]["summary"]["psnr"]
    assert not [q for q in two.iterdir() if q.name.startswith(".")]
    # and the baseline gate of a sharded run
    p = subprocess.run(launch(2, "bench", suite, "-o", two, "-q", *only, "--baseline", one / "results.json"),
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]


def test_bf16_on_the_cpu_warns(tmp_path):
    from restore_cli.runs.checks import RunConfig
    from restore_cli.runs.plan import resolve

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    plan = resolve(RunConfig(task="inpaint", inputs=[tmp_path / "a.png"], method="pseudo-inverse", model="gaussian",
                             device="cpu", dtype="bf16", output=tmp_path / "out"))
    assert any("bf16 on the CPU" in w for w in plan.warnings)
    plan = resolve(RunConfig(task="inpaint", inputs=[tmp_path / "a.png"], method="pseudo-inverse", model="gaussian",
                             device="cpu", output=tmp_path / "out"))
    assert not any("bf16" in w for w in plan.warnings)


def test_progress_events_count_the_runs_images(tmp_path):
    """The progress the display shows: done/total over the images still to do (skipped ones not counted),
    rising to the total, failures included."""
    from restore_cli.runs import execute as run_mod
    from restore_cli.runs.plan import resolve
    from restore_cli.runs.checks import RunConfig

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    (d / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"

    def events_of(cfg):
        seen = []
        run_mod.execute(resolve(cfg), lambda kind, info: seen.append(info) if kind == "progress" else None)
        return [(e["done"], e["total"]) for e in seen]

    cfg = dict(task="inpaint", method="pseudo-inverse", model="gaussian", output=out)
    run_mod.execute(resolve(RunConfig(inputs=[d / "p0.png"], **cfg)))  # one image already done
    ev = events_of(RunConfig(inputs=[d], **cfg))
    assert ev[0] == (0, 3) and ev[-1] == (3, 3)  # p1, p2 and bad.png; p0 is skipped
    assert [a for a, _ in ev] == sorted(a for a, _ in ev)
