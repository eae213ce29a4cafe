"""Fast paths of the operators and of the Gaussian posterior mean, against their slow references.

* ``Blur(method="fft")`` computes the same operator as ``Blur(method="direct")`` (conv2d) for every
  border rule, odd and even kernels, kernels larger than the image and per-image kernels; its
  explicit adjoint is the adjoint, and autograd through ``A`` uses it;
* ``solve_AAt`` (closed form for the circular border, preconditioned CG otherwise) solves its system;
* ``GaussianPrior.posterior_mean`` (preconditioned CG) equals the dense closed form on small images,
  converges within its iteration cap on larger ones, and reports when it does not.
"""

import warnings

import pytest
import torch

from restore_cli.ops import (Blur, Inpainting, LinearOperator, SuperResolution, box_mask, freeform_mask,
                             gaussian_kernel, motion_kernel, random_mask)
from restore_cli.ops.blur import FFT_MIN_TAPS, fft_size
from restore_cli.priors.gaussian import GaussianPrior
from restore_cli.rng import make_generators
from restore_cli.solvers.baselines import PosteriorMean

BORDERS = ["reflect", "circular", "zeros"]
KERNELS = [(5, 5), (4, 4), (8, 5), (9, 9), (31, 31)]  # odd, even, non-square, larger than the image


def _kernels(kh, kw, batch, seed=0):
    k = torch.rand(batch, 1, kh, kw, generator=torch.Generator().manual_seed(seed))
    return k / k.sum((-2, -1), keepdim=True)


def _pair(kernel, shape, border, dtype):
    ops = {m: Blur(kernel, shape, border=border, method=m) for m in ("direct", "fft")}
    for op in ops.values():
        op.kernel = op.kernel.to(dtype)  # the kernel's own values in float64, for the float64 checks
    return ops["direct"], ops["fft"]


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("ks", KERNELS, ids=lambda k: f"{k[0]}x{k[1]}")
@pytest.mark.parametrize("batch", [1, 2], ids=["shared", "per-image"])
def test_fft_blur_equals_direct_convolution(border, ks, batch):
    shape = (3, 17, 22)
    g = torch.Generator().manual_seed(1)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        direct, fft = _pair(_kernels(*ks, batch), shape, border, dtype)
        x = torch.randn(2, *shape, dtype=dtype, generator=g)
        y = torch.randn(2, *shape, dtype=dtype, generator=g)
        for a, b in ((direct.A(x), fft.A(x)), (direct.A_adjoint(y), fft.A_adjoint(y))):
            assert float((a - b).abs().max()) <= rtol * float(a.abs().max())


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_blur_adjoint_is_exact(border, method):
    shape = (3, 19, 16)
    g = torch.Generator().manual_seed(2)
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for kernel in (_kernels(8, 8, 2), gaussian_kernel(61, 3.0)):
            op = Blur(kernel, shape, border=border, method=method)
            op.kernel = op.kernel.to(dtype)
            x = torch.randn(2, *shape, dtype=dtype, generator=g)
            y = torch.randn(2, *shape, dtype=dtype, generator=g)
            lhs, rhs = float((op.A(x) * y).sum()), float((x * op.A_adjoint(y)).sum())
            assert abs(lhs - rhs) <= rtol * abs(lhs)


def test_gradients_through_the_blur_use_the_adjoint():
    op = Blur(_kernels(9, 9, 1), (2, 7, 6), border="reflect", method="fft")
    op.kernel = op.kernel.double()
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A, (x,))
    assert torch.autograd.gradgradcheck(op.A, (x,))
    y = torch.randn(1, 2, 7, 6, dtype=torch.float64)
    (g,) = torch.autograd.grad(op.A(x), x, grad_outputs=y)
    torch.testing.assert_close(g, op.A_adjoint(y), rtol=1e-12, atol=1e-12)


def test_auto_method_and_fft_sizes():
    assert Blur(gaussian_kernel(61), (3, 32, 32)).uses_fft()
    assert not Blur(gaussian_kernel(5), (3, 32, 32)).uses_fft()
    assert 5 * 5 < FFT_MIN_TAPS <= 9 * 9
    for n in (1, 7, 11, 13, 97, 254, 319, 572):
        m = fft_size(n)
        assert m >= n and all(fft_size(k) > k or k == m for k in range(n, m + 1))
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        assert m == 1
    op = Blur(_kernels(9, 9, 2), (3, 16, 16), border="zeros", method="direct")
    assert op.select([1]).method == "direct"
    moved = Blur(gaussian_kernel(61), (3, 16, 16)).to("cpu").to(torch.float64)  # nn.Module.to still works
    assert moved.A(torch.rand(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError):
        Blur(gaussian_kernel(5), (3, 8, 8), method="winograd")


def test_kernel_fft_cache_follows_the_kernel():
    op = Blur(gaussian_kernel(61, 3.0), (1, 20, 20), method="fft")
    x = torch.rand(1, 1, 20, 20)
    y1 = op.A(x)
    op.kernel.mul_(2.0)
    torch.testing.assert_close(op.A(x), 2 * y1)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("kernel", ["gaussian", "motion"])
def test_solve_AAt_solves_its_system(border, kernel):
    """Closed form (circular), CG preconditioned in DCT-I (Gaussian) or Fourier (motion) otherwise."""
    shape = (3, 48, 40)
    g = torch.Generator().manual_seed(3)
    k = gaussian_kernel(15, 2.0) if kernel == "gaussian" else motion_kernel(make_generators(0, 2), size=15)
    op = Blur(k, shape, border=border)
    v = torch.randn(2, *shape, dtype=torch.float64, generator=g)
    r2 = torch.tensor([1.0, 0.3], dtype=torch.float64)
    s2 = 1e-2
    u = op.solve_AAt(v, r2, s2)
    back = r2.reshape(-1, 1, 1, 1) * op.A(op.A_adjoint(u)) + s2 * u
    assert float((back - v).norm() / v.norm()) < 1e-9
    # float32 (PiGDM): within float32's tolerance
    u32 = op.solve_AAt(v.float(), r2.float(), s2)
    back = r2.float().reshape(-1, 1, 1, 1) * op.A(op.A_adjoint(u32)) + s2 * u32
    assert float((back - v.float()).norm() / v.float().norm()) < 1e-5


# -- the Gaussian posterior mean -------------------------------------------------------------------------


class _Mixing(LinearOperator):
    """A linear operator the posterior mean knows nothing about (it mixes the channels): plain CG."""

    name = "mixing"

    def __init__(self, in_shape, sigma_y):
        super().__init__(in_shape, sigma_y)
        self.blur = Blur(gaussian_kernel(5, 1.0), in_shape)

    def A(self, x):  # noqa: N802
        return self.blur.A(x + 0.5 * x.roll(1, dims=1))


def _small_ops(c, h, w, gens, sigma_y=0.005):
    return {
        "box": Inpainting(box_mask(h, w, gens), c, sigma_y=sigma_y),
        "random": Inpainting(random_mask(h, w, gens), c, sigma_y=sigma_y),
        "blur-reflect": Blur(gaussian_kernel(5, 1.0), (c, h, w), sigma_y=sigma_y),
        "blur-zeros": Blur(gaussian_kernel(7, 1.5), (c, h, w), sigma_y=sigma_y, border="zeros"),
        "blur-circular": Blur(gaussian_kernel(61, 3.0), (c, h, w), sigma_y=sigma_y, border="circular"),
        "motion-reflect": Blur(motion_kernel(gens, 7), (c, h, w), sigma_y=sigma_y),
        "superres": SuperResolution((c, h, w), 2, sigma_y=sigma_y),
        "superres-avgpool": SuperResolution((c, h, w), 2, "avgpool", sigma_y=sigma_y),
        "mixing": _Mixing((c, h, w), sigma_y),
    }


@pytest.mark.parametrize("c", [1, 3])
def test_posterior_mean_equals_dense_closed_form(c):
    h, w = 8, 8
    prior = GaussianPrior.fitted(c)
    gens = make_generators(0, 2)
    truth = prior.decode(prior.sample((c, h, w), gens)).float()
    for name, op in _small_ops(c, h, w, gens).items():
        y = op(truth, make_generators(1, 2)).double()
        dense, _ = prior.posterior_dense(op, y)
        mean, info = prior.posterior_mean(op, y, return_info=True)
        assert all(info["converged"]), (name, info)
        assert float((mean - dense).abs().max()) < 1e-6, name


@pytest.mark.parametrize("name", ["box", "random", "freeform", "blur-reflect", "blur-circular", "superres"])
def test_posterior_mean_converges_on_a_larger_image(name):
    n = 128
    prior = GaussianPrior.fitted(3)
    gens = make_generators(4, 1)
    op = {
        "box": lambda: Inpainting(box_mask(n, n, gens), 3, sigma_y=0.005),
        "random": lambda: Inpainting(random_mask(n, n, gens), 3, sigma_y=0.005),
        "freeform": lambda: Inpainting(freeform_mask(n, n, gens), 3, sigma_y=0.005),
        "blur-reflect": lambda: Blur(gaussian_kernel(61, 3.0), (3, n, n), sigma_y=0.005),
        "blur-circular": lambda: Blur(motion_kernel(gens, 61), (3, n, n), sigma_y=0.005, border="circular"),
        "superres": lambda: SuperResolution((3, n, n), 4, sigma_y=0.005),
    }[name]()
    truth = prior.decode(prior.sample((3, n, n), gens)).float()
    y = op(truth, make_generators(5, 1))
    mean, info = prior.posterior_mean(op, y, return_info=True)
    assert info["converged"] == [True] and info["rel_residual"][0] <= info["tol"] == 1e-10, info
    assert info["iterations"] < 300, info
    # the known pixels of an inpainting keep their measured values (no speckle): within a few noise stds
    if isinstance(op, Inpainting):
        known = op.mask.expand_as(mean) > 0
        assert float((mean - y.double())[known].abs().max()) < 0.05


def test_posterior_mean_reports_a_solve_that_did_not_converge():
    prior = GaussianPrior.fitted(3)
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(64, 64, gens), 3, sigma_y=0.005)
    y = op(prior.decode(prior.sample((3, 64, 64), gens)).float(), make_generators(1, 2))
    _, info = prior.posterior_mean(op, y, iters=3, return_info=True)
    assert info["converged"] == [False, False] and min(info["rel_residual"]) > 1e-10 and info["iterations"] == 3
    solver = PosteriorMean(prior, op)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solver.run(y, make_generators(2, 2))
    assert res.extra["cg"]["converged"] == [True, True] and not caught
    small = PosteriorMean(prior, op, max_iters=3)  # --set max_iters=3
    with pytest.warns(RuntimeWarning, match="not the exact posterior mean"):
        res = small.run(y, make_generators(2, 2))
    assert res.extra["cg"]["converged"] == [False, False]
    assert all(r > 1e-10 for r in res.extra["cg"]["rel_residual"])
