"""`restore bench`: suites, cells, determinism, resume, the Markdown table and the regression gate."""

import json
from datetime import datetime

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from restore_cli.bench.suite import Cell, SuiteError, load_suite
from restore_cli.bench.runner import summarize_cell
from restore_cli.bench.results import compare, parse_tolerances
from restore_cli.cli.app import app
from restore_cli.runs.report import source_revision
from tests.conftest import tiny_suite_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three 16x16 grey images, a tiny random pixel model (a local diffusers folder) and a suite."""
    d = tmp_path_factory.mktemp("bench")
    imgs, model = tiny_suite_inputs(d)
    suite = d / "suite.toml"
    suite.write_text(f"""
name = "unit"
seeds = [0, 1]
noise_sigma = 0.05
failure_psnr = 12.0
batch_size = 2

[images]
paths = ["images"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}, {{ task = "deblur", kernel = "gaussian", kernel_size = 5 }}]
methods = ["dps", "pigdm"]
models = ["{model}"]
diffstategrad = [false, true]
steps = 4

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}, "phase-retrieval"]
methods = ["pseudo-inverse", "posterior-mean"]
models = ["gaussian-grey"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}]
methods = ["dps", "pigdm"]
models = ["{model}"]
steps = 4
guidance = [10.0]
""")
    return d, suite


def bench(*args):
    return runner.invoke(app, ["bench", *map(str, args)])


def test_suite_expands_grids(setup):
    d, suite = setup
    s = load_suite(suite)
    assert len(s.images) == 3 and s.seeds == [0, 1]
    assert s.images[0][1].shape == (1, 16, 16)
    # 2 tasks x 2 methods x 2 DSG + 2 tasks x 2 baselines + 2 guidance cells
    assert len(s.cells) == 8 + 4 + 2
    assert len({c.key for c in s.cells}) == len(s.cells)


def test_bench_runs_resumes_and_is_deterministic(setup):
    d, suite = setup
    out = d / "out"
    r = bench(suite, "-o", out, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    cells = {c["label"]: c for c in data["cells"].values()}
    ok = [c for c in cells.values() if c["status"] == "ok"]
    skipped = {c["label"]: c["reason"] for c in cells.values() if c["status"] == "skipped"}
    # incompatible pairs are listed with their reason, not run: phase retrieval has no pseudo-inverse
    # and no Gaussian posterior; PiGDM has no step size to scale
    assert any("phase-retrieval" in k and "pseudo-inverse" in k for k in skipped)
    assert any("phase-retrieval" in k and "posterior-mean" in k for k in skipped)
    assert any("pigdm" in k and "guidance" in k for k in skipped)
    assert len(ok) == 8 + 2 + 1
    for c in ok:
        assert len(c["images"]) == 3 * 2  # images x seeds
        s = c["summary"]
        assert s["psnr"]["n"] == 6 and 0 <= s["failure_rate"] <= 1 and s["seconds"]["mean"] > 0
        # when it finished, and from which commit of this checkout (a rerun is told from an old result)
        assert datetime.fromisoformat(c["finished"]) >= datetime.fromisoformat(data["started"])
        src = data["environment"]["restore_source"]
        assert c["source"] == src == source_revision()
    # the zero-filled baseline is exactly the masked image: its PSNR is the hole's error
    pinv = next(c for k, c in cells.items() if "pseudo-inverse" in k and "inpaint" in k)
    assert pinv["summary"]["nfe"] == 0
    md = (out / "results.md").read_text()
    assert md.count("\n| inpaint") + md.count("\n| deblur") + md.count("\n| phase-retrieval") == len(cells)

    # resume: a second run finds every cell done and keeps the results byte for byte
    before = (out / "results.json").read_text()
    r = bench(suite, "-o", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    after = json.loads((out / "results.json").read_text())
    assert json.dumps(after["cells"], sort_keys=True) == json.dumps(json.loads(before)["cells"], sort_keys=True)
    assert after["models"] == json.loads(before)["models"] != {}  # the kept cells' models stay recorded

    # deterministic: a fresh run elsewhere reproduces every metric exactly, and passes the gate
    out2 = d / "out2"
    r = bench(suite, "-o", out2, "--device", "cpu", "-q", "--baseline", out / "results.json", "--tolerance", "0")
    assert r.exit_code == 0, r.output
    again = json.loads((out2 / "results.json").read_text())
    for key, c in data["cells"].items():
        if c["status"] == "ok":
            assert [i["psnr"] for i in c["images"]] == [i["psnr"] for i in again["cells"][key]["images"]]


def test_regression_gate_fails_on_a_worse_run(setup):
    d, suite = setup
    out = d / "out"  # finished by the test above: these runs resume it, so only the comparison is new
    if not (out / "results.json").exists():
        assert bench(suite, "-o", out, "--device", "cpu", "-q").exit_code == 0
    base = json.loads((out / "results.json").read_text())
    key = next(k for k, c in base["cells"].items() if c["status"] == "ok" and c["config"]["method"] == "dps")
    base["cells"][key]["summary"]["psnr"]["mean"] += 3.0  # the baseline was 3 dB better
    (d / "better.json").write_text(json.dumps(base))
    r = bench(suite, "-o", out, "--device", "cpu", "-q", "--baseline", d / "better.json")
    assert r.exit_code == 1
    assert "regressions" in r.output and "psnr" in r.output
    # within a generous tolerance the same difference passes
    r = bench(suite, "-o", out, "--device", "cpu", "-q", "--baseline", d / "better.json", "--tolerance", "psnr=5")
    assert r.exit_code == 0, r.output


def test_results_of_other_weights_are_not_reused(setup):
    """A finished cell is kept on resume only if the model's weights (fingerprint) are the same."""
    d, suite = setup
    out = d / "out"
    if not (out / "results.json").exists():
        assert bench(suite, "-o", out, "--device", "cpu", "-q").exit_code == 0
    data = json.loads((out / "results.json").read_text())
    key = next(k for k, c in data["cells"].items() if c["status"] == "ok" and c["config"]["method"] == "pigdm")
    data["cells"][key]["model_fingerprint"] = "local:another-model"
    data["cells"][key]["summary"]["psnr"]["mean"] = 99.0
    (out / "results.json").write_text(json.dumps(data))
    assert bench(suite, "-o", out, "--device", "cpu", "-q").exit_code == 0
    again = json.loads((out / "results.json").read_text())["cells"][key]
    assert again["summary"]["psnr"]["mean"] != 99.0 and again["model_fingerprint"].startswith("local:")


def test_cells_of_an_earlier_method_revision_are_rerun_and_marked(setup, monkeypatch):
    """A cell made before its method's last fix (lower ``method_revision``; none recorded = 1) is kept
    in the table, marked, until a rerun replaces it; cells at the current revision are kept."""
    from restore_cli.solvers import PiGDM

    d, suite = setup
    out = d / "out"
    if not (out / "results.json").exists():
        assert bench(suite, "-o", out, "--device", "cpu", "-q").exit_code == 0
    data = json.loads((out / "results.json").read_text())
    assert {c["method_revision"] for c in data["cells"].values()} == {1}
    pig = [k for k, c in data["cells"].items() if c["status"] == "ok" and c["config"]["method"] == "pigdm"]
    dps = next(k for k, c in data["cells"].items() if c["status"] == "ok" and c["config"]["method"] == "dps")
    for k in pig:
        data["cells"][k]["summary"]["psnr"]["mean"] = 99.0
    del data["cells"][pig[0]]["method_revision"]  # from before revisions were recorded: 1
    data["cells"][dps]["summary"]["psnr"]["mean"] = 98.0
    (out / "results.json").write_text(json.dumps(data))
    from restore_cli.bench.results import markdown_table

    assert "†" not in markdown_table(data)
    monkeypatch.setattr(PiGDM, "revision", 2)  # a fix to PiGDM since those cells ran
    md = markdown_table(data)
    assert md.count(" † |") == len(pig) and f"† {len(pig)} cell(s) made by an earlier revision" in md
    assert bench(suite, "-o", out, "--device", "cpu", "-q").exit_code == 0
    again = json.loads((out / "results.json").read_text())["cells"]
    for k in pig:
        assert again[k]["summary"]["psnr"]["mean"] != 99.0 and again[k]["method_revision"] == 2
    assert again[dps]["summary"]["psnr"]["mean"] == 98.0  # DPS's cell is current: kept
    assert "†" not in (out / "results.md").read_text()


def test_compare_and_tolerances():
    def res(psnr, fail, status="ok"):
        return {"cells": {"k": {"label": "cell", "status": status,
                                "summary": {"psnr": {"mean": psnr}, "ssim": {"mean": 0.8}, "lpips": {"mean": 0.2},
                                            "failure_rate": fail}}}}

    tol = parse_tolerances([])
    assert compare(res(20.0, 0.0), res(20.4, 0.0), tol) == []
    assert [w["metric"] for w in compare(res(19.0, 0.0), res(20.0, 0.0), tol)] == ["psnr"]
    assert [w["metric"] for w in compare(res(20.0, 0.5), res(20.0, 0.25), tol)] == ["failure_rate"]
    assert compare(res(20.0, 0.0, "failed"), res(20.0, 0.0), tol)[0]["now"] == "failed"
    assert compare({"cells": {}}, res(20.0, 0.0), tol)[0]["now"] == "missing"
    assert parse_tolerances(["1.5", "lpips=0.1"])["psnr"] == 1.5
    for bad in (["x=1"], ["psnr=a"], ["psnr=-1"], ["abc"], ["-1"]):
        with pytest.raises(SuiteError):
            parse_tolerances(bad)


def test_failure_rate_is_share_under_threshold():
    recs = [{"psnr": p, "ssim": 0.5, "lpips": None, "residual": 0.1, "seconds": 1.0, "nfe": 3, "n_backward": 0,
             "peak_memory_mb": None} for p in (10.0, 14.9, 15.0, 30.0)]
    s = summarize_cell(recs, 15.0)
    assert s["failure_rate"] == 0.5 and s["psnr"]["mean"] == pytest.approx(17.475) and s["lpips"]["mean"] is None


def test_cell_key_changes_with_every_setting():
    base = Cell("inpaint", {"mask": "box"}, "dps", "m", False, {})
    variants = [Cell("inpaint", {"mask": "random"}, "dps", "m", False, {}), Cell("inpaint", {"mask": "box"}, "dps", "m", True, {}),
                Cell("inpaint", {"mask": "box"}, "dps", "m", False, {"zeta": 1.0}),
                Cell("inpaint", {"mask": "box"}, "dps", "m", False, {}, guidance=2.0),
                Cell("inpaint", {"mask": "box"}, "dps", "m", False, {}, noise_sigma=0.01),
                Cell("inpaint", {"mask": "box"}, "dps", "m", True, {}, dsg_opts={"var_cutoff": 0.999})]
    assert len({base.key, *(v.key for v in variants)}) == 7
    # keys are what makes committed results resumable: a cell without DSG options keeps the key
    # it had before those options existed
    assert base.key == "1ab267de0f83"


def test_suite_sweeps_diffstategrad_options_on_the_cells_with_dsg(setup, tmp_path):
    d, _ = setup
    (tmp_path / "s.toml").write_text(f"""
[images]
paths = ["{d / 'images'}"]
[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}]
methods = ["dps"]
models = ["{d / 'tiny'}"]
diffstategrad = [false, true]
steps = 4
var_cutoff = [0.99, 0.5]
period = 2
""")
    cells = load_suite(tmp_path / "s.toml").cells
    assert len(cells) == 3 and "tau" not in cells[0].label  # one cell without DSG, two with
    assert cells[1].label.endswith("(tau=0.99, F=2)") and cells[2].label.endswith("(tau=0.5, F=2)")
    plain, high, low = cells
    assert plain.dsg(5) is None and high.dsg(5).var_cutoff == 0.99 and low.dsg(5).var_cutoff == 0.5
    assert low.dsg(5).period == 2 and low.dsg(5).rank_mode == "channels"
    # the options reach the solver: a smaller tau keeps fewer directions and changes the result
    r = bench(tmp_path / "s.toml", "-o", tmp_path / "o", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())["cells"]
    psnr = {c.key: [i["psnr"] for i in res[c.key]["images"]] for c in cells}
    assert psnr[high.key] != psnr[low.key] != psnr[plain.key]
    assert res[low.key]["config"]["dsg_opts"] == {"var_cutoff": 0.5, "period": 2}


@pytest.mark.parametrize("text, msg", [
    ("name='x'\n[images]\npaths=['nope']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['gaussian']", "no such file"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['nope']\nmodels=['gaussian']", "unknown method"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['blur']\nmethods=['dps']\nmodels=['gaussian']", "unknown task"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['nope']", "unknown model"),
    ("[images]\npaths=['.']", "no [[grid]]"),
    ("seeds=[]\n[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['gaussian']", "no seeds"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['gaussian']\nset={nope=1}", "no method of the grid"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['gaussian']\nset={zeta='x'}", "not a valid float"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=['inpaint']\nmethods=['dps']\nmodels=['gaussian']\nvar_cutoff=2", "var_cutoff"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=[{task='inpaint', mask='freeform', coverage=[0.3, 0.1]}]\nmethods=['dps']\n"
     "models=['gaussian']", "coverage must be"),
    ("[images]\npaths=['.']\n[[grid]]\ntasks=[{task='inpaint', mask='box', coverage=[0.1, 0.2]}]\nmethods=['dps']\n"
     "models=['gaussian']", "free-form mask"),
    ("oops = 1\n", "unknown key"),
    ("[[grid", "not valid TOML"),
])
def test_bad_suites_are_usage_errors(tmp_path, text, msg):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "s.toml").write_text(text)
    r = bench(tmp_path / "s.toml", "-o", tmp_path / "o")
    assert r.exit_code == 2 and msg in r.output, r.output


def test_bench_missing_suite_and_baseline(tmp_path, setup):
    d, suite = setup
    assert bench(tmp_path / "none.toml").exit_code == 2
    r = bench(suite, "--baseline", tmp_path / "none.json")
    assert r.exit_code == 2 and "baseline" in r.output


def test_fashion_mnist_images_load_when_installed():
    from restore_cli.bench.suite import FASHION_MNIST, load_fashion_mnist

    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 32, 32) and y.shape == (10000,)
    assert float(x[:, :, :2].abs().max()) == 0.0  # padded with the black background
    assert 0 < float(x.mean()) < 0.5 and torch.all((y >= 0) & (y < 10))


def test_bench_runs_psld_on_a_text_model_with_the_empty_prompt(tmp_path):
    """restore bench chooses the prompt as restore <task> does: PSLD on a model with a text encoder gets ""."""
    from restore_cli.bench.runner import _Models
    from restore_cli.models.config import local_model
    from restore_cli.models.catalog import resolve_prompt
    from restore_cli.models.testing import save_tiny_latent_model

    d = save_tiny_latent_model(tmp_path / "kl-text", "kl", conditional=True)
    spec = local_model(d)
    assert resolve_prompt(spec, "psld") == "" and resolve_prompt(spec, "latent-dps", "a face") == "a face"
    models = _Models(torch.device("cpu"))
    models.reg.models[str(d)] = spec
    assert models.prior(str(d), "psld").prompt == "" and models.prior(str(d), "psld") is models.prior(str(d), "psld")


def test_a_suites_freeform_coverage_reaches_the_mask():
    """``coverage = [lo, hi]`` (P2L's 10-20 %) draws masks whose missing share lies in it."""
    from restore_cli.models.registry import build_operator
    from restore_cli.rng import make_generators

    for cov in ([0.1, 0.2], [0.3, 0.4]):
        op = build_operator("inpaint", {"mask": "freeform", "coverage": cov}, (3, 64, 64), make_generators(0, 6), 0.01)
        missing = 1 - op.mask.float().mean(dim=(1, 2, 3))
        assert bool(((missing >= cov[0] - 1e-6) & (missing <= cov[1] + 1e-6)).all()), missing


def test_bench_set_overrides_the_cells_whose_method_has_the_key(setup):
    """``restore bench --set KEY=VALUE``: on every cell whose method has KEY (typed as `restore --set`), the
    others untouched; a key no method of the suite has, or a bad value, is a usage error (exit 2)."""
    d, suite = setup
    s = load_suite(suite, overrides=["zeta=0.7"])
    dps = [c for c in s.cells if c.method == "dps"]
    assert dps and all(c.hparams["zeta"] == 0.7 for c in dps)
    assert all("zeta" not in c.hparams for c in s.cells if c.method != "dps")
    assert {c.key for c in s.cells if c.method != "dps"} <= {c.key for c in load_suite(suite).cells}
    for bad, msg in (("nope=1", "no method of the suite has nope"), ("zeta=x", "zeta"), ("zeta", "KEY=VALUE")):
        r = bench(suite, "--set", bad, "-o", d / "never")
        assert r.exit_code == 2 and msg in r.output, r.output


def test_best_per_metric_takes_each_metrics_best_run_on_its_own():
    """The DAPS code's best-of-k report, on hand-made runs: image 0 is best in run 0 by PSNR, image 1
    in run 1; a run whose metric is not finite is passed over."""
    from restore_cli.bench.runner import best_per_metric

    ref = torch.zeros(2, 1, 4, 4)
    run0 = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.5)])
    run1 = torch.stack([torch.full((1, 4, 4), 0.3), torch.full((1, 4, 4), 0.2)])
    run2 = torch.stack([torch.full((1, 4, 4), float("nan")), torch.full((1, 4, 4), 0.9)])
    m, errors = best_per_metric([run0, run1, run2], ref)
    assert not errors and m["psnr"] == pytest.approx([20.0, -20 * np.log10(0.2)])
    assert set(m) == {"psnr", "ssim"}  # no LPIPS module given


def test_suite_restart_rules_score_restarts_as_named(setup, tmp_path):
    """restart_rule: the per-metric best is the oracle's PSNR (same runs, max PSNR) and at least its
    SSIM; the residual rule's PSNR is no better; the rule is recorded and is part of the context."""
    d, _ = setup

    def suite(rule):
        f = tmp_path / f"{rule}.toml"
        f.write_text(f"""
restart_rule = "{rule}"
[images]
paths = ["{d / 'images'}"]
[[grid]]
tasks = ["phase-retrieval"]
methods = ["dps"]
models = ["{d / 'tiny'}"]
steps = 3
restarts = 3
""")
        r = bench(f, "-o", tmp_path / rule, "--device", "cpu", "-q")
        assert r.exit_code == 0, r.output
        data = json.loads((tmp_path / rule / "results.json").read_text())
        (cell,) = data["cells"].values()
        assert cell["restart_rule"] == rule
        return data["suite"]["context"], cell["images"]

    ctx_b, best = suite("best-per-metric")
    ctx_o, oracle = suite("oracle")
    ctx_r, resid = suite("residual")
    assert len({ctx_b, ctx_o, ctx_r}) == 3
    for b, o, r in zip(best, oracle, resid):
        assert b["psnr"] == pytest.approx(o["psnr"]) and b["ssim"] >= o["ssim"] - 1e-9 and r["psnr"] <= b["psnr"] + 1e-9
    (tmp_path / "bad.toml").write_text('restart_rule = "best"\n[images]\npaths = ["x"]\n')
    with pytest.raises(SuiteError, match="restart_rule must be one of"):
        load_suite(tmp_path / "bad.toml")
