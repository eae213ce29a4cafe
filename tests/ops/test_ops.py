"""Operators: adjointness, pseudo-inverses, gradients, masks and kernels against independent references."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from restore_cli.ops import (HDR, Blur, Inpainting, PhaseRetrieval, Quantize, SuperResolution, box_mask,
                             freeform_mask, gaussian_kernel, kernel_from_file, mask_from_file, motion_kernel,
                             random_mask, uniform_kernel)
from restore_cli.rng import make_generators

SHAPES = [(1, 13, 9), (3, 16, 16), (3, 21, 34)]  # odd, square, non-square


def linear_ops(c, h, w, gens):
    k_small = gaussian_kernel(5, 1.0)
    return [
        Inpainting(box_mask(h, w, gens), c, kind="box"),
        Inpainting(random_mask(h, w, gens), c, kind="random"),
        Inpainting(freeform_mask(h, w, gens), c, kind="freeform"),
        Blur(gaussian_kernel(), (c, h, w), border="reflect", kind="gaussian"),
        Blur(motion_kernel(gens, size=9), (c, h, w), border="circular", kind="motion"),
        Blur(k_small, (c, h, w), border="zeros", kind="gaussian"),
        SuperResolution((c, h, w), 4, "bicubic"),
        SuperResolution((c, h, w), 3, "avgpool"),
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_adjoint_identity(shape, gens):
    c, h, w = shape
    x = torch.rand(2, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for op in linear_ops(c, h, w, gens):
        ax = op.A(x)
        y = torch.randn(ax.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        lhs, rhs = (ax * y).sum(), (x * op.A_adjoint(y)).sum()
        assert abs(lhs - rhs) <= 1e-6 * abs(lhs), type(op).__name__


@pytest.mark.parametrize("shape", SHAPES)
def test_pseudo_inverse(shape, gens):
    c, h, w = shape
    x = torch.rand(2, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # full row rank: A A^+ y = y for any y
    for op in [SuperResolution((c, h, w), 4, "bicubic"), SuperResolution((c, h, w), 3, "avgpool")]:
        y = torch.randn_like(op.A(x))
        torch.testing.assert_close(op.A(op.A_dagger(y)), y, rtol=1e-6, atol=1e-6)
    # projections / rank-deficient: A A^+ y = y on the range of A, and A^+ y lies in the row space
    for op in [Inpainting(box_mask(h, w, gens), c), Inpainting(random_mask(h, w, gens), c)]:
        y = op.A(x)
        torch.testing.assert_close(op.A(op.A_dagger(y)), y)
    # circular blur with an invertible kernel: the closed form is the exact inverse
    op = Blur(gaussian_kernel(3, 0.5), (c, h, w), border="circular")
    torch.testing.assert_close(op.A_dagger(op.A(x)), x, rtol=1e-6, atol=1e-6)
    # reflect border (CG on the normal equations): A^T A x^+ = A^T y
    op = Blur(gaussian_kernel(3, 0.5), (c, h, w), border="reflect")
    y = op.A(x) + 0.01 * torch.randn_like(x)
    xd = op.A_dagger(y)
    torch.testing.assert_close(op.A_adjoint(op.A(xd)), op.A_adjoint(y), rtol=1e-5, atol=1e-5)


def test_blur_reflect_matches_dps_convolution():
    """Reflect border = torch ReflectionPad2d + conv2d (DPS's Blurkernel), for a symmetric kernel."""
    x = torch.rand(1, 3, 40, 33, dtype=torch.float64)
    k = gaussian_kernel(9, 2.0).double()
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect"),
                                     k.expand(3, 1, 9, 9), groups=3)
    torch.testing.assert_close(Blur(k, (3, 40, 33)).A(x), ref)


def test_blur_large_kernel_on_small_image():
    op = Blur(gaussian_kernel(), (3, 10, 12))
    y = op.A(torch.ones(1, 3, 10, 12))
    torch.testing.assert_close(y, torch.ones_like(y))  # a normalised kernel keeps a constant image


def test_gaussian_kernel_is_dps_scipy_filter():
    imp = np.zeros((61, 61))
    imp[30, 30] = 1
    ref = scipy.ndimage.gaussian_filter(imp, sigma=3.0)
    np.testing.assert_allclose(gaussian_kernel(61, 3.0)[0, 0].numpy(), ref, atol=1e-7)


def test_motion_kernel_properties():
    g1, g2 = make_generators(0, 2), make_generators(0, 2)
    k1, k2 = motion_kernel(g1), motion_kernel(g2)
    assert k1.shape == (2, 1, 61, 61)
    torch.testing.assert_close(k1, k2)  # same seed, same kernels
    assert not torch.allclose(k1[0], k1[1])  # images get their own kernel
    assert (k1 >= 0).all() and torch.allclose(k1.sum((2, 3)), torch.ones(2, 1))
    assert (k1[0, 0] > 1e-4).sum() > 20  # a trajectory, not a delta


def test_bicubic_matches_matlab_weights():
    """Weights of DPS's Resizer (MATLAB imresize, 256 -> 64), read from its code independently."""
    from restore_cli.ops.resize import bicubic_matrix

    dps = [-0.00171, -0.01099, -0.01831, -0.01196, 0.02271, 0.09741, 0.18188, 0.24097,
           0.24097, 0.18188, 0.09741, 0.02271, -0.01196, -0.01831, -0.01099, -0.00171]
    m = bicubic_matrix(256, 4)
    np.testing.assert_allclose(m[10, 34:50].numpy(), dps, atol=2e-5)  # output i uses taps 4i-6 .. 4i+9
    assert m[10, :34].abs().sum() == 0 and m[10, 50:].abs().sum() == 0


def test_masks():
    g = make_generators(7, 3)
    box = box_mask(256, 256, g)
    assert ((1 - box).sum((1, 2, 3)) == 128 * 128).all()
    # DPS's placement: corner in [16, 111]
    for b in box:
        rows = (b[0] == 0).any(1).nonzero().flatten()
        assert 16 <= rows[0] <= 111
    centred = box_mask(256, 256, g, placement="center")
    assert centred[0, 0, 64:192, 64:192].sum() == 0 and centred.sum() == 3 * (256 * 256 - 128 * 128)
    rnd = random_mask(256, 256, make_generators(1, 2))
    assert abs(float(1 - rnd.mean()) - 0.7) < 0.01
    ff = freeform_mask(64, 80, make_generators(2, 4))
    cover = 1 - ff.mean((1, 2, 3))
    assert ((cover >= 0.2) & (cover <= 0.3)).all(), cover


def test_mask_and_kernel_files(tmp_path):
    from PIL import Image

    arr = np.zeros((20, 30), np.uint8)
    arr[5:10, 5:15] = 255  # white = hole
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = mask_from_file(tmp_path / "m.png", 20, 30)
    assert m.shape == (1, 1, 20, 30) and m.sum() == 600 - 50
    np.save(tmp_path / "k.npy", np.ones((5, 5)))
    torch.testing.assert_close(kernel_from_file(tmp_path / "k.npy"), uniform_kernel(5))
    np.save(tmp_path / "bad.npy", -np.ones((5, 5)))
    with pytest.raises(ValueError):
        kernel_from_file(tmp_path / "bad.npy")


def test_phase_retrieval_parseval_and_gradcheck():
    op = PhaseRetrieval((3, 16, 12))
    assert (op.pad_h, op.pad_w) == (4, 3)  # int(2 / 8 * side)
    x = torch.rand(2, 3, 16, 12, dtype=torch.float64)
    y = op.A(x)
    assert y.shape == (2, 3, 24, 18)
    torch.testing.assert_close(y.pow(2).sum((1, 2, 3)), x.pow(2).sum((1, 2, 3)))  # orthonormal DFT
    torch.testing.assert_close(op.A(-x), y)  # a global sign (phase) is invisible: one reason for restarts
    small = PhaseRetrieval((1, 4, 5))
    assert torch.autograd.gradcheck(small.A, (torch.rand(1, 1, 4, 5, dtype=torch.float64, requires_grad=True) + 0.1,))


def test_hdr_and_quantize():
    op = HDR((3, 8, 8))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(op.A(x), torch.clamp(2 * (2 * x - 1), -1, 1) / 2 + 0.5)  # DAPS's clip(2x) in [-1, 1]
    torch.testing.assert_close(op.A(op.h_dagger(op.A(x))), op.A(x))  # PiGDM: h(h^+(h(x))) = h(x)
    inner = (torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.4 + 0.3).requires_grad_()  # away from the kinks
    assert torch.autograd.gradcheck(op.A, (inner,))
    q = Quantize((3, 8, 8), bits=3)
    assert len(torch.unique(q.A(x))) <= 8
    torch.testing.assert_close(q.A(q.h_dagger(q.A(x))), q.A(x))


def test_seeded_noise_is_reproducible_and_per_image():
    op = Blur(gaussian_kernel(5, 1.0), (3, 10, 11), sigma_y=0.05)
    x = torch.rand(3, 3, 10, 11)
    y1, y2 = op(x, make_generators(5, 3)), op(x, make_generators(5, 3))
    torch.testing.assert_close(y1, y2)
    y_alone = op(x[1:2], make_generators(5, 1, offset=1))
    torch.testing.assert_close(y1[1:2], y_alone)
    assert abs(float((y1 - op.A(x)).std()) - 0.05) < 0.005
    with pytest.raises(ValueError):
        op(x)  # noise needs generators


def test_bad_parameters():
    with pytest.raises(ValueError):
        SuperResolution((3, 16, 16), 2.5)
    with pytest.raises(ValueError):
        SuperResolution((3, 16, 16), 4, "lanczos")
    with pytest.raises(ValueError):
        Blur(gaussian_kernel(5), (3, 8, 8), border="mirror")
    with pytest.raises(ValueError):
        random_mask(8, 8, make_generators(0, 1), missing=1.5)
    with pytest.raises(ValueError):
        Inpainting(torch.ones(1, 1, 8, 8), 3, sigma_y=-1)


@pytest.mark.parametrize("task,opts", [("inpaint", {"mask": "box"}), ("deblur", {"kernel_size": 9}), ("superres", {"scale": 2}),
                                       ("hdr", {}), ("phase-retrieval", {})])
def test_noise_sigma_is_in_the_papers_units(task, opts):
    """--noise-sigma means what the papers' configs mean: the noise std on measurements of [-1, 1] images (the
    codes map images to [-1, 1], then add sigma_y); phase retrieval measures [0, 1] images (DAPS).  The scale
    agrees with each operator's residual_scale, through which solvers see residuals in the codes' units."""
    from restore_cli.models.registry import build_operator
    from restore_cli.models.catalog import noise_unit
    from restore_cli.rng import make_generators

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    op = build_operator(task, opts, (3, 32, 32), make_generators(0, 4), 0.05)
    assert op.residual_scale == noise_unit(task)[0]
    noise_code_units = op.residual_scale * (op(x, make_generators(1, 4)) - op.A(x))
    assert abs(float(noise_code_units.std()) - 0.05) < 0.003
