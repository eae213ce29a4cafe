"""FID and KID: the statistics against direct computations on hand-made features, the Inception network against
torch-fidelity's (names, shapes, features), and the weights' pinning, checksum and offline behaviour.

The real Inception weights are not downloaded here: the network is tested with random weights of the same
architecture (``random_inception``), saved to a file in a test cache like the real one would be."""

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

pytest.importorskip("torchmetrics")

from restore_cli.metrics import fid as fidmod
from restore_cli.metrics.fid import (
    FID,
    FIDUnavailable,
    fid_status,
    frechet_distance,
    install,
    kernel_inception_distance,
    load_inception,
    weights_path,
)
from restore_cli.metrics.inception import InceptionV3FID, random_inception, resize_tf1, to_uint8_levels

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty restore cache and torch hub cache (no weights anywhere)."""
    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path / "restore"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture(scope="module")
def random_net():
    return random_inception(1)


@pytest.fixture(scope="module")
def random_weights_file(tmp_path_factory, random_net):
    p = tmp_path_factory.mktemp("fidweights") / fidmod.WEIGHTS_FILE
    torch.save(random_net.state_dict(), p)
    return p


def _direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 8
    mix = rng.normal(size=(d, d))
    a = rng.normal(size=(300, d)) @ mix
    b = 0.7 * rng.normal(size=(250, d)) @ mix.T + rng.normal(size=d)
    expect = _direct_fid(a, b)
    assert expect > 1
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expect, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    # two Gaussians' closed form: N(0, I) vs N(m, 4 I): |m|^2 + d (1 + 4 - 2 * 2), up to sampling error
    a, b = rng.normal(size=(20000, 3)), 2 * rng.normal(size=(20000, 3)) + np.array([1.0, 0, -1])
    assert frechet_distance(a, b) == pytest.approx(2 + 3, rel=0.03)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def _direct_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, written out term by term."""
    m, d = len(x), x.shape[1]
    k = lambda u, v: (u @ v / d + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return float(xx + yy - 2 * xy)


def test_kid_matches_a_direct_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 5)), 1.3 * rng.normal(size=(20, 5)) + 0.4
    mean, std = kernel_inception_distance(x, y)  # both sets whole: one subset, exact
    assert mean == pytest.approx(_direct_kid(x, y), rel=1e-10)
    assert std is None
    # same distribution: the unbiased estimate is near zero and can be negative
    same, _ = kernel_inception_distance(x, rng.normal(size=(20, 5)))
    assert abs(same) < 0.5 * mean
    # unequal sizes: random subsets of the smaller size, reproducible, the global RNG left alone
    z = rng.normal(size=(35, 5)) * 1.3 + 0.4
    state = torch.random.get_rng_state()
    m1, s1 = kernel_inception_distance(x, z, subsets=10)
    assert torch.equal(state, torch.random.get_rng_state())
    assert (m1, s1) == kernel_inception_distance(x, z, subsets=10)
    assert s1 is not None and s1 >= 0
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)


def test_inception_state_dict_is_torch_fidelitys():
    """Names, shapes and order of torch-fidelity 0.4.0's FeatureExtractorInceptionV3, so that the real weights
    file loads with strict=True (566 entries, as the file has)."""
    listing = json.loads((DATA / "fid_inception_keys.json").read_text())["entries"]
    sd = InceptionV3FID().state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, s) for k, s in listing]
    assert len(sd) == 566
    InceptionV3FID().load_state_dict({k: torch.zeros(s) for k, s in listing}, strict=True)


def test_inception_features_match_torch_fidelity(random_net):
    """Features of torch-fidelity's own extractor (its TF1 resize, scaling and blocks) for these random
    weights and images, computed once with torch-fidelity 0.4.0."""
    ref = np.load(DATA / "fid_torch_fidelity_features.npz")
    got = random_net(torch.from_numpy(ref["images"]))
    assert got.shape == (2, 2048) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref["features"], atol=2e-5, rtol=1e-4)
    assert float((got[0] - got[1]).abs().max()) > 1e-3  # the features depend on the image


def test_tf1_resize_and_quantisation():
    x = torch.tensor([[[[0.0, 10.0]]]]).expand(1, 1, 2, 2)
    # TensorFlow 1.x: output i reads input i * in / out, clamped at the edge (no half-pixel offset)
    torch.testing.assert_close(resize_tf1(x, 4)[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))
    y = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_tf1(y, 2)[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    f = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    q = to_uint8_levels(f)
    assert q.dtype == torch.uint8 and q.shape == (2, 3, 5, 5)
    torch.testing.assert_close(q[:, 0], (f[:, 0] * 255).round().to(torch.uint8))
    assert torch.equal(to_uint8_levels(q), q)
    bad = torch.tensor([float("nan"), float("inf"), -1.0, 2.0, 0.5]).view(1, 1, 1, 5)
    assert to_uint8_levels(bad)[0, 0, 0].tolist() == [0, 0, 0, 255, 128]
    with pytest.raises(ValueError):
        to_uint8_levels(torch.rand(1, 2, 4, 4))


@pytest.mark.slow
def test_fid_and_kid_with_a_random_weight_inception_loaded_from_the_cache(cache, random_weights_file):
    """The real architecture with random weights, installed into a test cache under its own checksum (slow on a
    CPU: FID's eigenvalues of a 2048 x 2048 matrix)."""
    digest = fidmod.file_sha256(random_weights_file)
    assert install(random_weights_file, sha256=digest) == weights_path()
    net = load_inception(weights_path(), sha256=digest)
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(3, 3, 32, 32, generator=g)
    restored = (refs + 0.3 * torch.randn(refs.shape, generator=g)).clamp(0, 1)
    metric = FID(net, batch_size=2)
    metric.update(refs, real=True)
    metric.update(restored, real=False)
    res = metric.compute()
    assert (res.n_real, res.n_fake) == (3, 3)
    assert np.isfinite(res.fid) and res.fid > 0 and np.isfinite(res.kid)
    assert "biased" in res.note and "\n" not in res.note
    m = res.as_metrics()
    assert m["fid"] == res.fid and m["kid"] == res.kid and m["fid_images"] == [3, 3]


class _Pixels(torch.nn.Module):
    """A cheap stand-in for the network: per-channel means and standard deviations."""

    num_features = 6

    def forward(self, x):
        x = x.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_fewer_than_two_images_gives_none_and_a_reason():
    metric = FID(_Pixels())
    metric.update(torch.rand(1, 3, 8, 8), real=True)
    metric.update(torch.rand(4, 3, 8, 8), real=False)
    res = metric.compute()
    assert res.fid is None and res.kid is None
    assert "at least 2" in res.note and res.note.startswith("FID/KID not computed") and "\n" not in res.note
    metric.update(torch.rand(1, 3, 8, 8), real=True)
    res = metric.compute()
    assert res.fid > 0 and res.kid is not None
    # the same images on both sides: FID 0 (features reused, the network not run again)
    same = FID(_Pixels())
    same.update_features(metric.stored_features(False), real=True)
    same.update_features(metric.stored_features(False), real=False)
    assert same.compute().fid == pytest.approx(0, abs=1e-9)


def test_a_file_with_another_sha256_is_refused(cache, random_weights_file):
    """The random weights are a valid Inception state dict, but not the pinned file."""
    dest = weights_path()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(random_weights_file.read_bytes())
    ok, why = fid_status()
    assert not ok and "refused" in why and "sha256" in why and "\n" not in why
    with pytest.raises(FIDUnavailable, match="refused"):
        load_inception()
    with pytest.raises(FIDUnavailable, match="not the pinned"):
        load_inception(dest)
    with pytest.raises(FIDUnavailable, match="refused"):
        FID()
    with pytest.raises(FIDUnavailable, match="not the pinned"):
        install(random_weights_file)


def test_download_is_checked_against_the_pinned_sha256(cache, random_weights_file, monkeypatch):
    """A served file is kept only with the expected digest (a file:// URL stands for the server)."""
    monkeypatch.setattr(fidmod, "offline", lambda: False)
    url = random_weights_file.as_uri()
    with pytest.raises(FIDUnavailable, match="not the pinned"):
        install(urls=(url,))
    assert not weights_path().exists() and not list(weights_path().parent.glob("*.part"))
    digest = fidmod.file_sha256(random_weights_file)
    assert install(urls=(url,), sha256=digest) == weights_path()
    assert fidmod.file_sha256(weights_path()) == digest


def test_offline_without_weights_says_so_and_never_connects(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    ok, why = fid_status()
    assert not ok and "no FID Inception weights" in why and "install" in why and "\n" not in why
    with pytest.raises(FIDUnavailable, match="HF_HUB_OFFLINE is set") as e:
        install()
    assert "\n" not in str(e.value)
    with pytest.raises(FIDUnavailable, match="no FID Inception weights"):
        FID()
    res = fid_status()[1]
    assert fidmod.FIDResult.unavailable(res).note.startswith("FID/KID not computed: no FID Inception weights")


def test_importing_the_metrics_does_not_import_torchmetrics():
    code = ("import sys, restore_cli.metrics, restore_cli.metrics.fid, restore_cli.metrics.inception; "
            "assert 'torchmetrics' not in sys.modules, 'torchmetrics imported'")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
