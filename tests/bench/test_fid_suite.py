"""FID and KID in suites (issue 33): computed per cell where the suite asks (or its paper's table reports FID),
said in one line when the Inception weights are not installed, beside the published FID in a paper suite."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from restore_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _suite(tmp_path: Path, fid: str) -> Path:
    suite = tmp_path / "suite.toml"
    suite.write_text(f"""
name = "fid"
seeds = [0, 1]
noise_sigma = 0.05
batch_size = 2
{fid}

[images]
paths = ["{ROOT / 'examples' / 'fmnist'}"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}]
methods = ["pseudo-inverse", "posterior-mean"]
models = ["gaussian-fmnist"]
""")
    return suite


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_without_the_weights_the_suite_runs_and_says_so_in_one_line(tmp_path, no_weights):
    r = runner.invoke(app, ["bench", str(_suite(tmp_path, "fid = true")), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if "FID and KID were not computed" in ln]
    assert len(notes) == 1 and "install" in notes[0], r.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["fid"]["available"] is False
    for cell in data["cells"].values():
        assert cell["status"] == "ok" and cell["summary"]["psnr"]["mean"] > 10
        assert cell["summary"]["fid"]["mean"] is None and cell["summary"]["fid_note"].startswith("FID not computed")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| FID | KID |" in md and "FID and KID were not computed" in md


def test_a_suite_without_fid_is_as_before(tmp_path, no_weights):
    r = runner.invoke(app, ["bench", str(_suite(tmp_path, "")), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code == 0 and "FID" not in r.output, r.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "fid" not in data and all("fid" not in c["summary"] for c in data["cells"].values())
    assert "FID" not in (tmp_path / "out" / "results.md").read_text()


class _TinyFeatures(torch.nn.Module):
    """A stand-in feature network (8-d, deterministic): the suite's wiring, not Inception, is under test here."""

    num_features = 8

    def forward(self, x):
        x = x.float().expand(-1, 3, -1, -1)
        return torch.cat([F.adaptive_avg_pool2d(x, 1).flatten(1), F.adaptive_max_pool2d(x, 1).flatten(1),
                          x.flatten(1).std(1, keepdim=True), x.flatten(1).median(1, keepdim=True).values], 1)


def test_fid_per_cell_is_the_distance_between_its_restorations_and_the_references(tmp_path, monkeypatch):
    """Per seed: every restoration of the cell against every reference image; the cell's value the mean over
    seeds; the references' features computed once for the suite."""
    import restore_cli.metrics.fid as fidmod
    from restore_cli.metrics.fid import FID, frechet_distance, kernel_inception_distance

    net = _TinyFeatures()
    monkeypatch.setattr(fidmod, "fid_status", lambda: (True, "test network"))
    monkeypatch.setattr(fidmod, "load_inception", lambda device=None: net)
    seen = {True: [], False: []}
    real_update, real_features = FID.update, FID.features
    inside = []  # features() called by update() (restorations) rather than for a reference

    def update(self, images, real):
        seen[bool(real)].append(images.detach().cpu().clone())
        inside.append(1)
        try:
            return real_update(self, images, real)
        finally:
            inside.pop()

    def features(self, images):
        if not inside:
            seen[True].append(images.detach().cpu().clone())
        return real_features(self, images)

    monkeypatch.setattr(FID, "update", update)
    monkeypatch.setattr(FID, "features", features)
    r = runner.invoke(app, ["bench", str(_suite(tmp_path, "fid = true")), "-o", str(tmp_path / "out"), "--device", "cpu",
                            "--only", "posterior-mean"])
    assert r.exit_code == 0 and "not computed" not in r.output, r.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["fid"] == {"available": True, "source": "test network"}
    (cell,) = [c for c in data["cells"].values() if c["status"] == "ok"]
    n = len(list((ROOT / "examples" / "fmnist").glob("*.png")))
    refs = torch.cat(seen[True])
    assert len(refs) == n  # each reference's features once, shared by both seeds
    fakes = torch.cat(seen[False])
    assert len(fakes) == 2 * n  # every restoration of both seeds
    with torch.no_grad():
        fr, ff = net(refs).double(), net(fakes).double()
    per_seed = [frechet_distance(fr, ff[:n]), frechet_distance(fr, ff[n:])]
    kids = [kernel_inception_distance(fr, ff[:n])[0], kernel_inception_distance(fr, ff[n:])[0]]
    s = cell["summary"]
    assert s["fid"]["mean"] == pytest.approx(sum(per_seed) / 2, rel=1e-6)
    assert s["fid"]["n"] == 2 and s["kid"]["mean"] == pytest.approx(sum(kids) / 2, rel=1e-6, abs=1e-12)
    assert "biased upward" in s["fid_note"]  # 8 images, not thousands
    assert "| FID | KID |" in (tmp_path / "out" / "results.md").read_text()


def test_the_p2l_suite_computes_fid_and_compares_it_with_the_paper(tmp_path):
    from restore_cli.bench.papers import comparison
    from restore_cli.bench.suite import load_suite

    suite_file = ROOT / "benchmarks" / "papers" / "p2l-table8-ffhq.toml"  # P2L's Table 8: FID, LPIPS, PSNR
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((ROOT / "examples" / "fmnist").glob("*.png"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    suite = load_suite(suite_file, images=images)
    assert suite.fid  # its table reports FID: computed by default
    results = {c.key: {"status": "ok", "summary": {"fid": {"mean": 40.0, "std": 1.0}}} for c in suite.cells}
    rows = [r for r in comparison(suite.cells, results, suite.paper) if r["metric"] == "fid"]
    assert rows and all(r["ours"] == 40.0 and r["verdict"] in ("better", "worse", "equal") for r in rows)
    lower = [r for r in rows if r["paper"][0] > 40.0]
    assert all(r["verdict"] == "better" for r in lower)  # a lower FID is better
