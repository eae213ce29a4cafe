"""Issue 33: verdicts as a reader judges them, through a paper suite and its published table: a difference under
the paper's printed precision is "equal" where it prints no std, NaN is "n/a", the summary counts every verdict,
and merged SSIM rows cite their own table's line."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restore_cli.bench.papers import comparison, markdown, verdict
from restore_cli.bench.suite import load_suite

PAPERS = Path(__file__).resolve().parents[2] / "benchmarks" / "papers"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(d / "a.png")
    return d


def ok(**metrics) -> dict:
    return {"status": "ok", "summary": {m: {"mean": v, "std": 0.01} for m, v in metrics.items()}}


def test_under_the_printed_precision_is_equal():
    assert verdict("lpips", 0.0951, [0.095]) == "equal"  # the example
    assert verdict("lpips", 0.0949, [0.095]) == "equal" and verdict("lpips", 0.0941, [0.095]) == "better"
    assert verdict("lpips", 0.0959, [0.095]) == "worse"  # printed 0.096: a reader sees a difference
    assert verdict("psnr", 28.549, [28.55]) == "equal" and verdict("psnr", 28.53, [28.55]) == "worse"
    assert verdict("lpips", 0.0951, [0.095, 0.01]) == "within"  # with a std: as before
    assert verdict("lpips", float("nan"), [0.095]) == "n/a" and verdict("psnr", float("nan"), [28.0, 1.0]) == "n/a"


def test_p2l_suite_judges_by_the_printed_digits_and_nan_is_na(images):
    s = load_suite(PAPERS / "p2l-table8-ffhq.toml", images=images)
    cells = {(c.method, c.task, c.task_opts.get("kernel")): c for c in s.cells}
    sr = cells[("p2l", "superres", None)]  # printed: LPIPS 0.290, PSNR 28.55 (a TOML reader sees 0.29)
    gauss = cells[("p2l", "deblur", "gaussian")]
    results = {sr.key: ok(lpips=0.2905, psnr=28.549), gauss.key: ok(lpips=float("nan"), psnr=20.0)}
    rows = {(r["key"], r["metric"]): r for r in comparison(s.cells, results, s.paper)}
    assert rows[(sr.key, "lpips")]["verdict"] == "equal"  # 0.0005 under the printed 0.001
    assert rows[(sr.key, "psnr")]["verdict"] == "equal"
    assert rows[(gauss.key, "lpips")]["verdict"] == "n/a"  # NaN: no number, not "worse"
    assert rows[(gauss.key, "psnr")]["verdict"] == "worse"
    results[sr.key] = ok(lpips=0.2915, psnr=28.55)  # 0.0015 over 0.290: a reader sees 0.292, worse
    rows = {(r["key"], r["metric"]): r for r in comparison(s.cells, results, s.paper)}
    assert rows[(sr.key, "lpips")]["verdict"] == "worse"


def test_the_summary_counts_every_verdict(images):
    s = load_suite(PAPERS / "p2l-table8-ffhq.toml", images=images)
    cells = {(c.method, c.task, c.task_opts.get("kernel")): c for c in s.cells}
    sr, gauss = cells[("p2l", "superres", None)], cells[("p2l", "deblur", "gaussian")]
    rows = comparison(s.cells, {sr.key: ok(lpips=0.2905, psnr=30.0), gauss.key: ok(lpips=float("nan"), psnr=20.0)},
                      s.paper)
    summary = markdown(rows, s.paper).rstrip().splitlines()[-1]
    counts = {part.split(" ", 1)[1]: int(part.split(" ", 1)[0]) for part in summary.split(", ")}
    # n/a: the NaN LPIPS, and both cells' FID (none given here)
    assert counts["equal"] == 1 and counts["n/a"] == 3 and counts["better"] == 1 and counts["worse"] == 1
    assert [r["verdict"] for r in rows if r["metric"] == "fid" and r["key"] in (sr.key, gauss.key)] == ["n/a", "n/a"]
    assert sum(counts.values()) == len(rows), summary


def test_merged_ssim_rows_cite_their_own_tables_line(images):
    s = load_suite(PAPERS / "dsg-table3-ffhq.toml", images=images)
    cell = next(c for c in s.cells if c.method == "daps" and not c.diffstategrad and c.task_opts.get("kernel") == "gaussian")
    rows = {r["metric"]: r for r in comparison([cell], {cell.key: ok(lpips=0.2, psnr=28.0, ssim=0.8)}, s.paper)}
    assert rows["lpips"]["source"] == rows["psnr"]["source"] == "Table 3, line 104"
    assert rows["ssim"]["source"].startswith("Table 8") and rows["ssim"]["source"].endswith("line 207")
