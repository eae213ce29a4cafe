"""`restore bench`'s report: report.md and figures/ with a CSV per figure that holds what results.json holds,
`restore bench report RESULTS.json` redrawing them, and what it says of results it cannot fully draw."""

import csv
import json
import math
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from restore_cli.bench.report import cost_figure, figure_data
from restore_cli.bench.results import DEFAULT_TOLERANCES, compare
from restore_cli.cli.app import app, main
from tests.conftest import tiny_suite_inputs

runner = CliRunner()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(s: str):
    return None if s == "" else float(s)


def restore_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console script (``cli.app.main``, which hands `bench report` to its own command)."""
    monkeypatch.setattr(sys, "argv", ["restore", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    o = capsys.readouterr()
    return e.value.code, o.out, o.err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny suite run: 3 grey 16x16 images, DPS on a tiny random model with and without DSG at guidance
    x1 and x10, the Gaussian baselines; its output folder."""
    d = tmp_path_factory.mktemp("figs")
    imgs, model = tiny_suite_inputs(d)
    suite = d / "suite.toml"
    suite.write_text(f"""
name = "figs"
seeds = [0, 1]
noise_sigma = 0.05
failure_psnr = 12.0
batch_size = 2

[images]
paths = ["images"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}]
methods = ["dps"]
models = ["{model}"]
diffstategrad = [false, true]
guidance = [1.0, 10.0]
steps = 3

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}, {{ task = "deblur", kernel = "gaussian", kernel_size = 5 }}]
methods = ["pseudo-inverse", "posterior-mean"]
models = ["gaussian-grey"]
""")
    out = d / "out"
    r = runner.invoke(app, ["bench", str(suite), "-o", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output
    return out


def test_bench_saves_a_few_images_per_cell_and_writes_the_report(run):
    data = json.loads((run / "results.json").read_text())
    for c in data["cells"].values():
        assert c["status"] == "ok"
        s = c["samples"]
        assert [r["image"] for r in s] == ["im0", "im1", "im2"] and {r["seed"] for r in s} == {0}
        for r in s:
            for what in ("measurement", "restored", "truth"):
                assert (run / r[what]).is_file()
            assert ("missing" in r) == (c["config"]["task"] == "inpaint")  # the box's missing region
    figs = run / "figures"
    names = {p.stem for p in figs.glob("*.png")}
    assert names == {p.stem for p in figs.glob("*.csv")}  # every figure has its numbers beside it
    assert {"grid-inpaint-mask-box", "grid-deblur-kernel-gaussian-kernel-size-5", "steps-inpaint-mask-box",
            "distribution-inpaint-mask-box", "cost"} <= names
    assert "steps-deblur-kernel-gaussian-kernel-size-5" not in names  # no sweep there
    md = (run / "report.md").read_text()
    assert "![inpaint[mask=box]: step-size robustness](figures/steps-inpaint-mask-box.png)" in md
    assert "## Results" in md and "Left out" not in md
    for p in figs.glob("*.png"):
        assert p.stat().st_size < 150_000
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 200


def test_step_csv_is_the_cells_summaries(run):
    data = json.loads((run / "results.json").read_text())
    rows = read_csv(run / "figures" / "steps-inpaint-mask-box.csv")
    assert len(rows) == 4  # dps and dps +DSG at x1 and x10
    for r in rows:
        c = next(c for c in data["cells"].values() if c["config"]["method"] == r["method"]
                 and c["config"]["diffstategrad"] == (r["diffstategrad"] == "yes")
                 and c["config"]["guidance"] == float(r["guidance"]) and c["config"]["task"] == "inpaint")
        s = c["summary"]
        assert num(r["psnr_mean"]) == s["psnr"]["mean"] and num(r["psnr_std"]) == s["psnr"]["std"]
        assert num(r["lpips_mean"]) == s["lpips"]["mean"] and num(r["lpips_std"]) == s["lpips"]["std"]
        assert int(r["n"]) == s["psnr"]["n"] == 6  # 3 images x 2 seeds
    assert {r["series"] for r in rows} == {"dps", "dps +DSG"}


def test_distribution_csv_is_every_images_psnr_and_the_failure_rate(run):
    data = json.loads((run / "results.json").read_text())
    rows = read_csv(run / "figures" / "distribution-inpaint-mask-box.csv")
    defaults = [c for c in data["cells"].values() if c["config"]["task"] == "inpaint" and c["config"]["guidance"] == 1.0]
    assert len(rows) == sum(len(c["images"]) for c in defaults) == 4 * 6  # x10 cells are not at the defaults
    for c in defaults:
        mine = [r for r in rows if r["method"] == c["config"]["method"]
                and (r["diffstategrad"] == "yes") == c["config"]["diffstategrad"]]
        assert [(r["image"], int(r["seed"]), num(r["psnr"])) for r in mine] == \
            [(i["image"], i["seed"], i["psnr"]) for i in c["images"]]
        assert {num(r["failure_rate"]) for r in mine} == {c["summary"]["failure_rate"]}


def test_cost_csv_aggregates_the_cells_as_it_says(run):
    data = json.loads((run / "results.json").read_text())
    rows = read_csv(run / "figures" / "cost.csv")
    for r in rows:
        cs = [c["summary"] for c in data["cells"].values() if c["config"]["method"] == r["method"]
              and c["config"]["diffstategrad"] == (r["diffstategrad"] == "yes") and c["config"]["guidance"] == 1.0]
        assert int(r["cells"]) == len(cs)
        assert math.isclose(num(r["seconds_per_image"]), sum(s["seconds"]["mean"] for s in cs) / len(cs), rel_tol=1e-12)
        assert int(r["nfe"]) == max(s["nfe"] for s in cs)
        assert num(r["peak_memory_mb"]) == max(s["peak_memory_mb"] for s in cs)
    assert [r["series"] for r in rows] == ["dps", "dps +DSG", "pseudo-inverse", "posterior-mean"]


def test_grid_csv_has_every_panel_with_the_restorations_psnr(run):
    data = json.loads((run / "results.json").read_text())
    rows = read_csv(run / "figures" / "grid-inpaint-mask-box.csv")
    cols = list(dict.fromkeys(r["column"] for r in rows))
    assert cols == ["measurement", "dps", "dps +DSG", "pseudo-inverse", "posterior-mean", "ground truth"]
    assert list(dict.fromkeys(r["row"] for r in rows)) == ["im0", "im1", "im2"]
    for r in rows:
        assert (run / r["file"]).is_file() and (run / r["missing"]).is_file()  # the box, outlined on every panel
        if r["method"]:
            c = next(c for c in data["cells"].values() if c["config"]["method"] == r["method"]
                     and c["config"]["diffstategrad"] == (r["diffstategrad"] == "yes")
                     and c["config"]["guidance"] == 1.0 and c["config"]["task"] == "inpaint")
            rec = next(i for i in c["images"] if i["image"] == r["row"] and i["seed"] == 0)
            assert num(r["psnr"]) == rec["psnr"]
    with Image.open(run / "samples" / next(iter(data["cells"])) / "im0.truth.png") as im:
        assert im.mode == "L"  # grey images stay grey


def test_report_redraws_from_results_without_rewriting_them(run, tmp_path, monkeypatch, capsys):
    before = (run / "results.json").read_bytes()
    code, _out, err = restore_main(monkeypatch, capsys, "bench", "report", run / "results.json", "-o", tmp_path)
    assert code == 0, err
    assert (run / "results.json").read_bytes() == before
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "report.md").is_file()
    for p in (run / "figures").glob("*.csv"):
        assert (tmp_path / "figures" / p.name).read_text() == p.read_text()


def test_regression_view_marks_what_compare_finds(run, tmp_path, monkeypatch, capsys):
    data = json.loads((run / "results.json").read_text())
    base = json.loads(json.dumps(data))
    key = next(k for k, c in base["cells"].items() if c["config"]["method"] == "posterior-mean")
    base["cells"][key]["summary"]["psnr"]["mean"] += 2.0  # the baseline was better: now a regression
    old = tmp_path / "old.json"
    old.write_text(json.dumps(base))
    code, _out, err = restore_main(monkeypatch, capsys, "bench", "report", run / "results.json", "-o", tmp_path / "r",
                                  "--baseline", old, "--tolerance", "psnr=0.5")
    assert code == 0, err
    rows = read_csv(tmp_path / "r" / "figures" / "regression.csv")
    worse = {(w["cell"], w["metric"]) for w in compare(data, base, {**DEFAULT_TOLERANCES, "psnr": 0.5})}
    assert worse == {(base["cells"][key]["label"], "psnr")}
    assert {(r["cell"], r["metric"]) for r in rows if r["regressed"] == "yes"} == worse
    for r in rows:
        assert num(r["change"]) == num(r["now"]) - num(r["baseline"])
    assert (tmp_path / "r" / "figures" / "regression.png").is_file()
    assert "Against the baseline" in (tmp_path / "r" / "report.md").read_text()


def test_an_older_results_file_draws_what_it_can_and_says_what_it_left_out(run, tmp_path, monkeypatch, capsys):
    data = json.loads((run / "results.json").read_text())
    del data["schema_version"]
    cells = {}
    for k, c in data["cells"].items():
        c.pop("samples")  # from before runs saved images
        if c["config"]["guidance"] == 1.0:  # no step sweep
            cells[k] = c
    failed = next(iter(cells.values()))
    cells["x"] = {**failed, "status": "failed", "error": "boom", "label": "a failed cell"}
    data["cells"] = cells
    src = tmp_path / "old" / "results.json"
    src.parent.mkdir()
    src.write_text(json.dumps(data))
    code, out, err = restore_main(monkeypatch, capsys, "bench", "report", src)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("left out")]
    assert len(lines) == 1
    assert "grids" in lines[0] and "step-size" in lines[0] and "schema" in lines[0] and "not finished" in lines[0]
    figs = {p.stem for p in (src.parent / "figures").glob("*.png")}
    assert "cost" in figs and not any(f.startswith(("grid-", "steps-")) for f in figs)


@pytest.mark.parametrize("text,msg", [("", "empty"), ("{not json", "not JSON"), ("[1, 2]", "no 'cells'"),
                                      ('{"cells": {}}', "no cells")])
def test_an_empty_or_unreadable_results_file_is_exit_2_with_one_line(tmp_path, monkeypatch, capsys, text, msg):
    f = tmp_path / "results.json"
    f.write_text(text)
    code, _out, err = restore_main(monkeypatch, capsys, "bench", "report", f)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == text and not (tmp_path / "figures").exists()
    code, _, err = restore_main(monkeypatch, capsys, "bench", "report", tmp_path / "nope.json")
    assert code == 2 and "no such results file" in err


def test_shards_are_merged_into_a_new_file_never_over_an_input(run, tmp_path, monkeypatch, capsys):
    data = json.loads((run / "results.json").read_text())
    keys = list(data["cells"])
    a, b = dict(data, cells={k: data["cells"][k] for k in keys[:3]}), dict(data, cells={k: data["cells"][k] for k in keys[3:]})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    code, _out, err = restore_main(monkeypatch, capsys, "bench", "report", tmp_path / "a.json", tmp_path / "b.json",
                                  "-o", tmp_path / "docs", "--name", "page")
    assert code == 0, err
    merged = json.loads((tmp_path / "docs" / "page.json").read_text())
    assert list(merged["cells"]) == keys
    assert (tmp_path / "docs" / "page.md").is_file() and (tmp_path / "docs" / "figures" / "page" / "cost.csv").is_file()
    # merging into one of the inputs is refused
    (tmp_path / "results.json").write_text(json.dumps(a))
    code, _, err = restore_main(monkeypatch, capsys, "bench", "report", tmp_path / "results.json", tmp_path / "b.json")
    assert code == 2 and "is one of the results files" in err
    assert json.loads((tmp_path / "results.json").read_text()) == a


def test_paper_figure_is_the_comparison_with_its_verdicts(run):
    data = json.loads((run / "results.json").read_text())
    data["paper"] = {"paper": "P", "table": "T", "comparison": [
        {"cell": "c1", "metric": "psnr", "ours": 20.0, "ours_std": 1.0, "paper": [21.0, 2.0], "verdict": "within"},
        {"cell": "c1", "metric": "lpips", "ours": 0.3, "ours_std": 0.1, "paper": [0.2], "verdict": "worse"},
        {"cell": "c2", "metric": "psnr", "ours": None, "ours_std": None, "paper": [25.0, 1.0], "verdict": "not run"}]}
    figs, _ = figure_data(data, run)
    p = next(f for f in figs if f.kind == "paper")
    assert [(r["cell"], r["metric"], r["ours"], r["paper"], r["paper_std"], r["verdict"]) for r in p.rows] == [
        ("c1", "psnr", 20.0, 21.0, 2.0, "within"), ("c1", "lpips", 0.3, 0.2, None, "worse"),
        ("c2", "psnr", None, 25.0, 1.0, "not run")]
    from restore_cli.bench.plots import draw

    draw(p, run.parent / "paper.png")
    assert (run.parent / "paper.png").stat().st_size > 1000


def test_cost_leaves_out_sweep_points(run):
    data = json.loads((run / "results.json").read_text())
    f = cost_figure(data)
    dps = next(r for r in f.rows if r["series"] == "dps")
    assert dps["cells"] == 1  # the x10 cell is a sweep point


def test_help_does_not_import_matplotlib():
    code = ("import sys; from restore_cli.cli.app import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(app, ['bench', '--help']); assert 'bench report' in r.output, r.output; "
            "print('matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_bench_report_help_and_bench_suite_still_one_command(monkeypatch, capsys):
    code, out, _ = restore_main(monkeypatch, capsys, "bench", "report", "--help")
    assert code == 0 and "restore bench report" in out and "--grids-from" in out
    code, _, _err = restore_main(monkeypatch, capsys, "bench", "no-such-suite.toml")
    assert code == 2
