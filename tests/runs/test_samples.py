"""``--samples N``: posterior samples, their mean and their per-pixel std, checked against the exact
Gaussian posterior (``GaussianPrior.posterior_dense``) and end to end through the CLI."""

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from restore_cli.runs.checks import RunConfig, check, output_stems
from restore_cli.cli.app import app
from restore_cli.images.read import read_image
from restore_cli.bench.oracle import oracle_task
from restore_cli.priors import GaussianPrior
from restore_cli.models.registry import build_operator
from restore_cli.rng import make_generators, sample_generators
from restore_cli.runs.resume import config_differences
from restore_cli.runs.figures import colour_bar, std_figure, viridis
from restore_cli.runs.samples import Moments

runner = CliRunner()
SCHEMA = json.loads(resources.files("restore_cli").joinpath("data/metrics.schema.json").read_text())


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)


# -- generators --------------------------------------------------------------------------


def test_sample_generators_depend_on_seed_image_and_k_only():
    a = [torch.randn(4, generator=g) for g in sample_generators(3, 7, 5)]
    b = [torch.randn(4, generator=g) for g in sample_generators(3, 7, 2)]  # fewer samples: the same first ones
    assert len(a) == 4 and len(b) == 1 and torch.equal(a[0], b[0])
    assert sample_generators(3, 7, 1) == []  # one sample: the image's own generator only
    others = [torch.randn(4, generator=g) for g in sample_generators(3, 8, 5) + sample_generators(4, 7, 5)
              + make_generators(3, 16)]
    draws = a + others
    assert len({tuple(d.tolist()) for d in draws}) == len(draws)  # no stream repeats another


# -- aggregation against the exact posterior ---------------------------------------------


def test_mean_and_std_of_exact_posterior_samples_converge():
    """Samples drawn from the exact per-pixel posterior marginals (box inpainting, 3x12x12, the oracle's
    task) fed to :class:`Moments`: the mean's error relative to ||prior mean - posterior mean|| and the
    std map's relative error fall as 1/sqrt(N).  Measured (average over 8 seeds):

        N     rel mean error   std map error   RMS std / exact
        4         0.154            0.388           0.993
        32        0.055            0.125           0.996
        256       0.019            0.044           1.000

    Theory: rel ~ 0.306 / sqrt(N) (||exact std|| / ||prior mean - posterior mean|| = 0.306), std map
    error ~ 1 / sqrt(2 (N - 1)) = 0.408, 0.127, 0.044.
    """
    prior, op, truth, y = oracle_task("box")
    m, s = (v[0].float() for v in prior.posterior_dense(op, y.double()))
    pm = (prior.mu.reshape(-1, 1, 1).expand_as(m) + 1) / 2
    rows = {}
    for n in (4, 32, 256):
        rel, err, spread = [], [], []
        for seed in range(8):
            g = torch.Generator().manual_seed(1000 * n + seed)
            mom = Moments()
            for _ in range(n):
                mom.add(m + s * torch.randn(m.shape, generator=g))
            assert mom.n == n
            rel.append(float((mom.mean - m).norm() / (pm - m).norm()))
            err.append(float((mom.std - s).norm() / s.norm()))
            spread.append(float(mom.std.pow(2).mean().sqrt() / s.pow(2).mean().sqrt()))
        rows[n] = (np.mean(rel), np.mean(err), np.mean(spread))
    (r4, e4, s4), (r32, e32, s32), (r256, e256, s256) = rows[4], rows[32], rows[256]
    assert r4 > r32 > r256 and e4 > e32 > e256, rows
    for n, (r, e, _) in rows.items():  # within 30 % of the Monte-Carlo theory
        assert abs(r / (0.306 / n ** 0.5) - 1) < 0.3 and abs(e * (2 * (n - 1)) ** 0.5 - 1) < 0.3, rows
    assert r256 < 0.03 and e256 < 0.06 and abs(s256 - 1) < 0.02, rows
    assert abs(s32 - 1) < 0.05, rows
    # the std is the unbiased one: its square averages to the variance at any N >= 2
    mom = Moments()
    for v in (1.0, 2.0):
        mom.add(torch.tensor([v]))
    assert float(mom.std) == pytest.approx(2 ** -0.5)
    one = Moments()
    one.add(torch.tensor([3.0]))
    assert float(one.std) == 0 and float(one.mean) == 3


def test_moments_equal_numpy_mean_and_std():
    xs = torch.rand(7, 2, 5, 4, dtype=torch.float64)
    mom = Moments()
    for x in xs:
        mom.add(x)
    np.testing.assert_allclose(mom.mean.numpy(), xs.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(mom.std.numpy(), xs.std(0, unbiased=True).numpy(), atol=1e-6)


# -- the colour map ----------------------------------------------------------------------


def test_viridis_anchors_and_lightness_rises():
    c = viridis(torch.tensor([0.0, 0.5, 1.0]))
    published = torch.tensor([[0.267004, 0.004874, 0.329415],   # matplotlib's viridis(0), (128/255), (1)
                              [0.127568, 0.566949, 0.550556],
                              [0.993248, 0.906157, 0.143936]]).T
    assert (c - published).abs().max() < 0.015
    t = torch.linspace(0, 1, 256)
    r, g, b = viridis(t)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    assert bool((lum[1:] > lum[:-1]).all())  # a sequential map: brighter means more uncertain


def test_std_figure_has_a_scale_bar():
    std = torch.zeros(1, 8, 8)
    std[0, 2, 3] = 0.25
    fig = std_figure(std)
    assert fig.shape[0] == 3 and fig.shape[1] == 256 and fig.shape[2] > 256  # the map enlarged, then the bar
    bar = colour_bar(256, 0.25)
    top, bottom = bar[:, 0, :14].mean(1), bar[:, -1, :14].mean(1)
    assert torch.allclose(top, viridis(torch.tensor(1.0)), atol=0.01)
    assert torch.allclose(bottom, viridis(torch.tensor(0.0)), atol=0.01)
    assert float(bar[:, :, 20:].min()) < 0.5  # there is dark text (the labels) on the white beside the bar
    assert std_figure(torch.zeros(1, 4, 4)).isfinite().all()  # an all-zero std: a flat map, no division by 0


# -- checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--samples", "0"], "--samples must be >= 1"),
    (["--samples", "1001"], "--samples must be <= 1000"),
    (["--samples", "2", "--method", "posterior-mean", "--model", "gaussian"], "deterministic"),
])
def test_bad_samples_exit_2(args, needle, tmp_path):
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "a.png")
    r = run("inpaint", tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_sample_and_std_names_never_collide(tmp_path):
    names = [Path("a.png"), Path("a.std.png"), Path("b.png"), Path("b.sample-1.png"), Path("c.sample-7.png"),
             Path("c.png")]
    assert output_stems(names) == ["a", "a.std", "b", "b.sample-1", "c.sample-7", "c"]  # one sample: no clash
    assert output_stems(names, 3) == ["a.png", "a.std.png", "b.png", "b.sample-1.png", "c.sample-7", "c"]
    # an input in the output folder named like another input's sample: both keep their extension
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(out / "x.sample-1.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "x.png")
    cfg = RunConfig(task="inpaint", inputs=[tmp_path / "x.png", out / "x.sample-1.png"], output=out, samples=2,
                    model="gaussian-grey")
    assert check(cfg).stems == ["x.png", "x.sample-1.png"]
    cfg.inputs = [out / "x.sample-1.png"]  # alone: its mean would be written over it
    with pytest.raises(Exception, match="would overwrite the input"):
        check(cfg)


def test_samples_is_a_result_deciding_setting():
    old = {"samples": 2}
    assert config_differences(old, {"samples": 3}) == ["--samples was 2, now 3"]
    assert config_differences({}, {"samples": 1}) == []  # a folder from before --samples: one sample


def test_overwrite_with_fewer_samples_leaves_no_file_of_the_earlier_run(tmp_path):
    """--overwrite removes what the earlier run's record named and this run does not write again
    (sample-K beyond the new N; the std map when one sample is taken); the user's own files stay."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)).save(src / "t.png")
    out = tmp_path / "out"
    base = ["inpaint", src / "t.png", "--model", "gaussian", "--method", "posterior-sample", "-o", out]
    assert run(*base, "--samples", 4).exit_code == 0
    assert {f"t.sample-{k}.png" for k in range(4)} | {"t.std.npy", "t.std.png"} <= {p.name for p in out.iterdir()}
    (out / "t.sample-9.png").write_bytes(b"the user's")  # no record names it
    r = run(*base, "--samples", 2, "--overwrite")
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert {"t.sample-0.png", "t.sample-1.png", "t.std.npy", "t.std.png", "t.sample-9.png"} <= names
    assert not {"t.sample-2.png", "t.sample-3.png"} & names
    r = run(*base, "--overwrite")  # one sample: no samples, no std map
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert names == {"t.png", "t.measurement.png", "t.sample-9.png", "metrics.json"}
    assert (out / "t.sample-9.png").read_bytes() == b"the user's"
    jsonschema.validate(json.loads((out / "metrics.json").read_text()), SCHEMA)


def test_overwrite_never_removes_what_this_run_writes_or_reads(tmp_path, monkeypatch):
    """The superseded run's ``t.sample-2.png`` is this run's output for another input (``t.sample-2.png``
    given as an input); the same -o spelled another way still finds the earlier run's files; a file that
    cannot be removed is a warning, not a failed image."""
    src, other = tmp_path / "in", tmp_path / "in2"
    src.mkdir(), other.mkdir()
    rng = np.random.default_rng(0)
    for p in (src / "t.png", other / "t.sample-2.png"):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(p)
    out = tmp_path / "out"
    gauss = ["--model", "gaussian", "--method", "posterior-sample"]
    assert run("inpaint", src / "t.png", *gauss, "--samples", 4, "-o", out).exit_code == 0
    r = run("inpaint", src / "t.png", other / "t.sample-2.png", *gauss, "--overwrite", "--batch-size", 2, "-o", out)
    assert r.exit_code == 0, r.output
    recs = json.loads((out / "metrics.json").read_text())["images"]
    assert [x["status"] for x in recs] == ["ok", "ok"]
    assert all(Path(x["output"]).exists() for x in recs)  # t.sample-2.png is the second input's result
    names = {p.name for p in out.iterdir()}
    assert not {"t.sample-0.png", "t.sample-1.png", "t.sample-3.png", "t.std.npy", "t.std.png"} & names

    # the earlier run's files found by name whatever -o's spelling; one that cannot be removed: a warning
    assert run("inpaint", src / "t.png", *gauss, "--samples", 3, "--overwrite", "-o", out).exit_code == 0
    real_unlink = Path.unlink

    def stuck(self, *a, **k):
        if self.name == "t.sample-2.png":
            raise PermissionError("in use")
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", stuck)
    monkeypatch.chdir(tmp_path)
    r = run("inpaint", src / "t.png", *gauss, "--overwrite", "-o", "out")  # relative, was absolute
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["images"][0]["status"] == "ok" and any("could not remove" in w for w in data["config"]["warnings"])
    names = {p.name for p in out.iterdir()}
    assert "t.sample-2.png" in names and not {"t.sample-0.png", "t.sample-1.png", "t.std.npy"} & names


# -- end to end: the Gaussian oracle through the CLI -------------------------------------


def oracle_problem(tmp_path):
    """The CLI oracle tests' problem: a smooth 12x12 grey image in ``tmp_path/in``, box inpainting, noise 0.05;
    ``(folder, exact posterior mean, exact posterior std, prior mean)`` as images in [0, 1]."""
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[0:12, 0:12]
    Image.fromarray((255 * (0.5 + 0.12 * np.sin(xx / 3.0) * np.cos(yy / 4.0))).round().astype(np.uint8)).save(src / "t.png")
    x = read_image(src / "t.png", 1)
    gens = make_generators(0, 1)
    op = build_operator("inpaint", {"mask": "box"}, tuple(x.shape), gens, 0.05)
    prior = GaussianPrior.fitted(1)
    m, s = (v[0].float() for v in prior.posterior_dense(op, op(x[None], gens).double()))
    pm = (prior.mu.reshape(-1, 1, 1).expand_as(m) + 1) / 2
    return src, m, s, pm


def test_cli_samples_approach_the_exact_posterior(tmp_path):
    """PiGDM (100 steps) on the analytic grey Gaussian model, box inpainting of a 12x12 image, noise 0.05,
    through the CLI with ``--samples 4`` and ``--samples 32``; ``<stem>.png`` and ``<stem>.std.npy`` against
    ``posterior_dense``.  Measured:

        N    rel mean error   std map error   RMS std / exact
        4        0.091            0.52            0.60
        32       0.087            0.35            0.68

    The Monte-Carlo part of the errors falls with N; what is left at N = 32 is PiGDM's own bias on this
    prior (its spread 0.69 in ``test_solvers_oracle.py``), which no number of samples removes.  The first
    4 of the 32 samples are the 4 samples of the N = 4 run (sample k does not depend on N or the batch).
    """
    src, m, s, pm = oracle_problem(tmp_path)
    got = {}
    for n in (4, 32):
        out = tmp_path / str(n)
        r = run("inpaint", src, "--model", "gaussian-grey", "--method", "pigdm", "--samples", n, "--noise-sigma", "0.05",
                "--batch-size", n, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        mean, std = png(out / "t.png")[None], torch.from_numpy(np.load(out / "t.std.npy"))
        assert std.shape == (1, 12, 12) and std.dtype == torch.float32
        got[n] = (float((mean - m).norm() / (pm - m).norm()), float((std - s).norm() / s.norm()),
                  float(std.pow(2).mean().sqrt() / s.pow(2).mean().sqrt()))
        rec = json.loads((out / "metrics.json").read_text())["images"][0]
        assert rec["nfe"] == 100 * n and len(rec["samples"]["runs"]) == n
    (r4, e4, s4), (r32, e32, s32) = got[4], got[32]
    assert r32 < 0.25 and r32 <= r4 + 0.01, got          # the oracle test's PiGDM bound on the mean
    assert e32 < e4 - 0.1, got                             # the std map closes in on the exact std
    assert abs(s32 - 1) < abs(s4 - 1) and 0.4 < s32 < 1.5, got
    for k in range(4):
        assert torch.equal(png(tmp_path / "4" / f"t.sample-{k}.png"), png(tmp_path / "32" / f"t.sample-{k}.png"))


def test_cli_samples_of_the_exact_sampler_converge_to_the_exact_posterior(tmp_path):
    """``posterior-sample`` (exact samples by Matheron's rule) through the CLI, the same 12x12 problem as above:
    with an exact sampler, the mean and the std map converge to the exact posterior's at the Monte-Carlo
    rate (mean error ~ 1/sqrt(N), std error ~ 1/sqrt(2N); the mean PNG's 8 bits set a floor). Measured:

        N     rel mean error   std map error   RMS std / exact
        4         0.033            0.41            0.86
        256       0.008            0.037           0.998
    """
    src, m, s, pm = oracle_problem(tmp_path)
    got = {}
    for n in (4, 256):
        out = tmp_path / str(n)
        r = run("inpaint", src, "--model", "gaussian-grey", "--method", "posterior-sample", "--samples", n,
                "--noise-sigma", "0.05", "--batch-size", 64, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        mean, std = png(out / "t.png")[None], torch.from_numpy(np.load(out / "t.std.npy"))
        got[n] = (float((mean - m).norm() / (pm - m).norm()), float((std - s).norm() / s.norm()),
                  float(std.pow(2).mean().sqrt() / s.pow(2).mean().sqrt()))
    (r4, e4, s4), (r256, e256, s256) = got[4], got[256]
    assert r256 < r4 / 3 and e256 < e4 / 3, got            # the Monte-Carlo rate (sqrt(64) = 8 at best)
    assert r256 < 0.06 and e256 < 0.1 and abs(s256 - 1) < 0.05, got


# -- end to end: the bundled pixel model -------------------------------------------------


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmnist")
    root = Path(__file__).resolve().parents[2] / "examples" / "fmnist"
    for p in sorted(root.glob("*.png"))[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    return d


def test_cli_samples_on_the_pixel_model(fmnist, tmp_path):
    common = ["inpaint", fmnist, "--model", "fmnist-ddpm-32", "--method", "dps", "--steps", "2", "-q"]
    # --batch-size counts solves: 6 = both images' 3 samples in one batch
    r = run(*common, "--samples", "3", "--batch-size", "6", "--compare", "-o", tmp_path / "b2")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b2" / "metrics.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["config"]["samples"] == 3
    stems = [p.stem for p in sorted(fmnist.glob("*.png"))]
    for stem, rec in zip(stems, data["images"]):
        out = tmp_path / "b2"
        samples = torch.stack([png(out / f"{stem}.sample-{k}.png") for k in range(3)])
        assert not (out / f"{stem}.sample-3.png").exists()
        assert (png(out / f"{stem}.png") - samples.mean(0)).abs().max() <= 1 / 255 + 1e-6  # the mean, quantised
        std = np.load(out / f"{stem}.std.npy")
        assert std.shape == (1, 32, 32) and (std >= 0).all() and std.max() > 0
        np.testing.assert_allclose(std[0], samples.std(0).numpy(), atol=2 / 255)
        assert Image.open(out / f"{stem}.std.png").mode == "RGB"
        assert Image.open(out / f"{stem}.compare.png").size[0] > 4 * 256  # reference | measurement | mean | std + bar
        assert rec["status"] == "ok" and rec["nfe"] == 3 * 2 and rec["batch_images"] == 2
        for key in ("psnr", "ssim", "lpips", "residual"):
            assert rec[key] is not None or key == "lpips"
            assert all(run_[key] is not None or key == "lpips" for run_ in rec["samples"]["runs"])
        assert rec["samples"]["std_max"] == pytest.approx(float(np.sqrt((std ** 2).mean(0)).max()), rel=1e-5)
    # the same sample files one sample at a time
    r = run(*common, "--samples", "3", "--batch-size", "1", "-o", tmp_path / "b1")
    assert r.exit_code == 0, r.output
    for stem in stems:
        for name in [f"{stem}.sample-{k}.png" for k in range(3)] + [f"{stem}.png"]:
            assert torch.equal(png(tmp_path / "b1" / name), png(tmp_path / "b2" / name)), name
    # sample 0 is today's single-sample result
    r = run(*common, "--batch-size", "2", "-o", tmp_path / "one")
    assert r.exit_code == 0, r.output
    for stem in stems:
        assert torch.equal(png(tmp_path / "one" / f"{stem}.png"), png(tmp_path / "b2" / f"{stem}.sample-0.png"))
        assert not list((tmp_path / "one").glob(f"{stem}.sample-*")) and not (tmp_path / "one" / f"{stem}.std.npy").exists()
    # a rerun with another N is refused; the same N resumes (an image whose mean is missing is redone)
    r = run(*common, "--samples", "2", "--batch-size", "1", "-o", tmp_path / "b1")
    assert r.exit_code == 2 and "--samples was 3, now 2" in r.output, r.output
    (tmp_path / "b1" / f"{stems[1]}.png").unlink()
    r = run(*common, "--samples", "3", "--batch-size", "1", "-o", tmp_path / "b1")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b1" / "metrics.json").read_text())
    assert [rec["status"] for rec in data["images"]] == ["skipped", "ok"]
    assert torch.equal(png(tmp_path / "b1" / f"{stems[1]}.png"), png(tmp_path / "b2" / f"{stems[1]}.png"))


def test_posterior_sample_is_exact_on_the_oracle():
    """Matheron's rule against the dense exact posterior (oracle.compare, 64 samples): spread 1.00 (box) and
    1.00 (Gaussian deblur), mean error 0.03-0.04 (Monte-Carlo, ~ 1/sqrt(64) of the prior-mean distance)."""
    from restore_cli.bench.oracle import compare
    from restore_cli.solvers import PosteriorSample

    for task in ("box", "gaussian"):
        r = compare(PosteriorSample, task, n=64)
        assert abs(r.spread_ratio - 1) < 0.05 and r.rel_mean_error < 0.06 and r.nfe == 0, (task, r)
