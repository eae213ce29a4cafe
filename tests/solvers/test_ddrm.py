"""DDRM (``solvers/ddrm.py``) and the SVD of the linear operators it runs in (``ops/svd.py``).

* every decomposition reproduces its operator's ``A`` (to ~1e-5 in float32 images) with an orthogonal ``V``;
* the whole sampler equals a dense reference written from the reference code's
  ``efficient_generalized_steps`` (dense SVD of the operator's matrix, the code's three cases), fed
  the same noise: DDRM's update depends on each coefficient's singular value only, so any SVD gives
  the same samples;
* against the exact Gaussian posterior (``oracle.compare``): near it at the defaults, while
  deliberately broken variants (no ``eta_b`` pull, ``V`` and ``V^T`` swapped, the model-space offset
  dropped) and the pseudo-inverse fail the same bounds;
* with the bundled pixel model the output fits the measurement, noiseless and noisy, on every task;
* the CLI: ``restore methods`` lists it, DiffStateGrad and a motion kernel with a reflect border are
  usage errors (exit 2), and inpaint, deblur and superres run end to end.
"""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from restore_cli import ops
from restore_cli.models.catalog import METHODS
from restore_cli.cli.app import app
from restore_cli.bench.oracle import compare, oracle_task
from restore_cli.ops.svd import SeparableSVD, svd_of
from restore_cli.priors import GaussianPrior
from restore_cli.rng import make_generators, randn, randn_like
from restore_cli.solvers import DDRM, PseudoInverse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "fmnist"


def operators(shape=(3, 32, 32)):
    c, h, w = shape
    g = make_generators(0, 2)
    out = {"inpaint-box": ops.Inpainting(ops.box_mask(h, w, g), c),
           "inpaint-random": ops.Inpainting(ops.random_mask(h, w, g), c),
           "superres-bicubic": ops.SuperResolution(shape, 4),
           "superres-bicubic-odd": ops.SuperResolution((c, h - 1, w - 3), 3),
           "superres-avgpool": ops.SuperResolution((c, h - 2, w), 4, "avgpool"),
           "deblur-motion-circular": ops.Blur(ops.motion_kernel(g, 15), shape, border="circular")}
    for border in ("reflect", "circular", "zeros"):
        out[f"deblur-gaussian-{border}"] = ops.Blur(ops.gaussian_kernel(61, 3.0), shape, border=border)
        out[f"deblur-uniform-{border}"] = ops.Blur(ops.uniform_kernel(9), shape, border=border)
        out[f"deblur-even-{border}"] = ops.Blur(ops.gaussian_kernel(8, 1.5), (c, h - 12, w - 8), border=border)
    return out


@pytest.mark.parametrize("name", list(operators()))
def test_svd_reproduces_the_operator(name):
    op = operators()[name]
    svd = svd_of(op, zero=0.0)
    x = torch.rand(2, *op.in_shape, generator=torch.Generator().manual_seed(1))
    assert (svd.A(x.double()).float() - op.A(x)).abs().max() < 1e-5
    assert (svd.V(svd.Vt(x.double())) - x.double()).abs().max() < 1e-10  # V orthogonal
    # a spectrum (of a real image: Hermitian for the Fourier SVD)
    z = svd.Vt(torch.randn(2, *op.in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    assert (svd.Vt(svd.V(z)) - z).abs().max() < 1e-10
    obs = svd.observed.expand(z.shape)
    uz = svd.Ut(svd.U(z))  # U^T U = I on the observed coefficients
    assert (uz[obs] - z[obs]).abs().max() < 1e-10 and (uz[~obs] == 0).all()
    assert svd.A(x.double()).shape == op.A(x).shape


def test_svd_thresholds_like_the_code_and_refuses_what_it_cannot_decompose():
    op = ops.Blur(ops.gaussian_kernel(61, 3.0), (1, 32, 32))
    svd = svd_of(op)  # DDRM's ZERO = 3e-2 on the 1-D singular values
    assert isinstance(svd, SeparableSVD) and (svd.s == 0).any() and svd.observed.all()
    assert svd.s[svd.s > 0].min() >= 3e-2**2
    motion = ops.motion_kernel(make_generators(0, 1), 15)
    with pytest.raises(ValueError, match="not separable, so it needs --border circular"):
        svd_of(ops.Blur(motion, (1, 32, 32), border="reflect"))
    with pytest.raises(ValueError, match="no SVD of the hdr operator"):
        svd_of(ops.HDR((1, 8, 8)))


# -- a dense reference: the code's efficient_generalized_steps on the operator's matrix --------------------
def dense_matrix(op):
    n = op.in_shape[0] * op.in_shape[1] * op.in_shape[2]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *op.in_shape)
    a = op.A(basis).reshape(n, -1).T  # [m, n]
    if isinstance(op, ops.Inpainting):
        a = a[a.abs().sum(1) > 0]  # the code's Inpainting measures the kept pixels only
    return a


def ddrm_reference(prior, op, y, gens, sigmas, eta, eta_b):
    """DDRM as ``functions/denoising.py`` computes it (VE form: ``xt_mod``), with a dense SVD of ``A`` and
    the noise drawn in image space in the solver's order (``z_bar = V^T z``)."""
    shape = y.shape[:1] + op.in_shape
    a = dense_matrix(op)
    if isinstance(op, ops.Inpainting):
        keep = op.mask[0].expand(op.in_shape).reshape(-1) > 0.5
        y_vec = y.reshape(len(y), -1)[:, keep]
    else:
        y_vec = y.reshape(len(y), -1)
    u, singulars, vt = torch.linalg.svd(a, full_matrices=True)
    v = vt.T
    y_0 = 2 * y_vec - 0.5 * 2 * (a @ torch.ones(a.shape[1], dtype=torch.float64))  # y_m = 2 (y - A(1/2))
    sigma_0 = 2 * op.sigma_y
    nsing = singulars.shape[0]
    ut_y = y_0 @ u  # U^T y per row
    sig_inv_ut_y = ut_y / singulars[:nsing]

    def Vt(img):  # noqa: N802
        return img.reshape(len(img), -1) @ v

    def V(vec):  # noqa: N802
        return (vec @ v.T).reshape(shape)

    # init (the code's init_y, in VE units)
    sig_t = float(sigmas[0])
    z = Vt(randn(shape[1:], gens, dtype=torch.float64))
    large = singulars * sig_t > sigma_0
    init = torch.zeros_like(z)
    init[:, :nsing][:, large] = sig_inv_ut_y[:, large]
    inv = torch.zeros(z.shape[1], dtype=torch.float64)
    inv[:nsing][large] = sigma_0 / singulars[large]
    init = init + (sig_t**2 - inv**2).clamp_min(0).sqrt() * z
    x = V(init)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = prior.denoise(x, sigma)
        if sigma_next == 0:
            return x0
        et = (x - x0) / sigma
        v_t_x0 = Vt(x0)
        svt_x0 = v_t_x0[:, :nsing] * singulars
        falses = torch.zeros(v_t_x0.shape[1] - nsing, dtype=torch.bool)
        before_lite, after_lite = singulars * sigma_next > sigma_0, singulars * sigma_next < sigma_0
        before, after = torch.cat([before_lite, falses]), torch.cat([after_lite, falses])
        noise = Vt(randn_like(x0, gens))
        std_c, std_a = sigma_next * eta, sigma_next * eta
        tilde_c, tilde_a = (sigma_next**2 - std_c**2) ** 0.5, (sigma_next**2 - std_a**2) ** 0.5
        nxt = v_t_x0 + tilde_c * Vt(et) + std_c * noise
        if after_lite.any():
            nxt[:, after] = v_t_x0[:, after] + tilde_a * ((ut_y - svt_x0) / sigma_0)[:, after_lite] + std_a * noise[:, after]
        diff_b = (sigma_next**2 - sigma_0**2 / singulars[before_lite] ** 2 * eta_b**2).sqrt()
        nxt[:, before] = sig_inv_ut_y[:, before_lite] * eta_b + (1 - eta_b) * v_t_x0[:, before] + diff_b * noise[:, before]
        x = V(nxt)
    return x


REF_OPS = {
    "inpaint": lambda s: ops.Inpainting(ops.box_mask(s[1], s[2], make_generators(3, 1), size=(4, 3)), s[0]),
    "deblur-reflect": lambda s: ops.Blur(ops.gaussian_kernel(5, 1.0), s, border="reflect"),
    "deblur-motion-circular": lambda s: ops.Blur(ops.motion_kernel(make_generators(3, 1), 5), s, border="circular"),
    "superres": lambda s: ops.SuperResolution(s, 2),
}


@pytest.mark.parametrize("sigma_y", [0.05, 0.0])
@pytest.mark.parametrize("name", list(REF_OPS))
def test_ddrm_equals_the_reference_algorithm(name, sigma_y):
    shape = (1, 8, 8)
    prior = GaussianPrior.fitted(1)
    op = REF_OPS[name](shape)
    op.sigma_y = sigma_y
    truth = prior.decode(prior.sample(shape, make_generators(5, 1))).double()
    y = op(truth, make_generators(6, 1)).double()
    hp = {"steps": 10, "eta": 0.85, "eta_b": 1.0, "svd_zero": 0.0}  # the dense reference has no threshold
    got = DDRM(prior, op, **hp).run(y, make_generators(7, 1)).model
    solver = DDRM(prior, op, **hp)
    want = ddrm_reference(prior, op, y, make_generators(7, 1), solver.sigmas(), 0.85, 1.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)  # measured <= 1.5e-8; eta 0.8 for 0.85 moves it 1e-3


# -- the exact Gaussian posterior ---------------------------------------------------------------------------
# measured (seeds fixed), box / gaussian: rel 0.13 / 0.08, spread 0.78 / 0.57, efficiency 0.80 / 0.88
BOUNDS = {"box": (0.30, 0.4, 1.5, 0.6), "gaussian": (0.25, 0.35, 1.5, 0.6)}  # max rel, spread range, min efficiency


class SwappedV(DDRM):
    """Broken on purpose: ``V`` where ``V^T`` belongs and back (the blur's 1-D matrices are not symmetric)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.svd.Vt, self.svd.V = self.svd.V, self.svd.Vt


class NoOffset(DDRM):
    """Broken on purpose: ``y`` taken as a model-space measurement without the ``[0, 1] -> [-1, 1]`` offset."""

    def spectral_measurement(self, y, like):
        uty, ybar, s, obs = super().spectral_measurement(y, like)
        shift = self.svd.Ut(self.op.residual_scale * self.op.A(self.prior.decode(torch.zeros_like(like))))
        return uty + shift, ybar + shift / torch.where(s > 0, s, torch.ones_like(s)), s, obs


@pytest.mark.parametrize("task", ["box", "gaussian"])
def test_ddrm_approaches_the_exact_posterior(task):
    max_rel, lo, hi, min_eff = BOUNDS[task]
    r = compare(DDRM, task)
    assert r.nfe == 20
    assert r.rel_mean_error < max_rel and lo < r.spread_ratio < hi and r.efficiency > min_eff, r
    # negative controls, each failing the bounds: no pull toward y while noisier than it, a broken
    # spectral map (on the blur, where V is not symmetric), a wrong model-space measurement, A^+ y
    assert compare(DDRM, task, n=16, eta_b=0.0).rel_mean_error > max_rel
    if task == "gaussian":
        assert compare(SwappedV, task, n=16).rel_mean_error > max_rel
    assert compare(NoOffset, task, n=16).rel_mean_error > max_rel
    prior, op, truth, y = oracle_task(task)
    pinv = PseudoInverse(prior, op).run(y, make_generators(0, 1)).images.double()
    assert compare(None, task, samples=pinv.expand(32, -1, -1, -1)).efficiency < min_eff


def test_ddrm_hyperparameters_are_checked():
    prior, op, _, _ = oracle_task("box")
    with pytest.raises(ValueError, match="eta must be in"):
        DDRM(prior, op, eta=1.5)
    with pytest.raises(ValueError, match="no measurement gradient"):
        from restore_cli.solvers import DiffStateGrad
        DDRM(prior, op, DiffStateGrad(0.99, 1))
    assert not DDRM.gradient_guided and DDRM.defaults["steps"] == 20 and DDRM.defaults["eta"] == 0.85


def test_catalog_gradient_flags_match_the_solvers():
    for info in METHODS.values():
        assert info.gradient_guided == info.cls.gradient_guided, info.name


# -- the bundled pixel model: the output fits the measurement -----------------------------------------------
@pytest.fixture(scope="module")
def bundled():
    from restore_cli.models.config import load_registry
    from restore_cli.models.hub import load_prior
    from restore_cli.images.files import list_images
    from restore_cli.images.read import read_image

    prior = load_prior(load_registry().get("fmnist-ddpm-32"), torch.device("cpu"), torch.float32)
    x = torch.stack([read_image(p, 1) for p in list_images([EXAMPLES])])[:2]
    return prior, x


@pytest.mark.parametrize("task,opts", [("inpaint", {}), ("deblur", {}), ("superres", {}),
                                       ("deblur", {"kernel": "motion", "border": "circular"}),
                                       ("superres", {"filter": "avgpool"})],
                         ids=["inpaint", "deblur", "superres", "deblur-motion-circular", "superres-avgpool"])
def test_ddrm_output_fits_the_measurement(bundled, task, opts):
    from restore_cli.models.registry import build_operator

    prior, x = bundled
    for noise_sigma in (0.0, 0.05):
        gens = make_generators(0, len(x))
        op = build_operator(task, opts, tuple(x.shape[1:]), gens, noise_sigma)
        y = op(x, gens)
        res = DDRM(prior, op).run(y, make_generators(1, len(x)))
        assert res.nfe == 20 and torch.isfinite(res.model).all()
        rms = (op.A(prior.decode(res.model)) - y).flatten(1).pow(2).mean(1).sqrt()
        if noise_sigma == 0:  # measured: <= 0.0032 (a prior sample is ~0.1 off)
            assert (rms < 0.01).all(), rms
        else:  # measured: 0.98-1.45 sigma_y
            assert ((rms > 0.5 * op.sigma_y) & (rms < 2.0 * op.sigma_y)).all(), (rms, op.sigma_y)


# -- the CLI --------------------------------------------------------------------------------------------------
def test_cli_lists_ddrm_and_refuses_what_it_cannot_do(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "ddrm" in r.output
    img = sorted(EXAMPLES.iterdir())[0]
    r = runner.invoke(app, ["inpaint", "--method", "ddrm", "--diffstategrad", "--model", "fmnist-ddpm-32", str(img),
                            "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "no measurement gradient" in r.output, r.output
    r = runner.invoke(app, ["deblur", "--method", "ddrm", "--kernel", "motion", "--model", "fmnist-ddpm-32", str(img),
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--border circular" in r.output, r.output
    r = runner.invoke(app, ["inpaint", "--method", "pseudo-inverse", "--diffstategrad", str(img), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("task", ["inpaint", "deblur", "superres"])
def test_cli_end_to_end(tmp_path, task):
    import json

    img = sorted(EXAMPLES.iterdir())[0]
    r = CliRunner().invoke(app, [task, "--method", "ddrm", "--model", "fmnist-ddpm-32", "--steps", "3", "-q",
                                 str(img), "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["method"]["name"] == "ddrm" and m["summary"]["images"]["failed"] == 0
    assert (tmp_path / f"{img.stem}.png").exists()
