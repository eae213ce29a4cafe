"""The models that ship inside the package: present offline, loadable, and actually trained.

"Trained" is checked against independent baselines on held-out images (examples/fmnist holds
Fashion-MNIST *test* images): the learned denoiser must beat the exact MMSE denoiser of the
Gaussian prior fitted to the same training data, and a restoration must beat the zero-filled
measurement by a wide margin.  A randomly initialised network fails both.
"""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.models.config import load_registry
from restore_cli.models.hub import availability, load_prior
from restore_cli.images.files import list_images
from restore_cli.images.read import read_image
from restore_cli.rng import make_generators, randn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "fmnist"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images():
    return torch.stack([read_image(p, 1) for p in list_images([EXAMPLES])])


@pytest.fixture(scope="module")
def reg():
    return load_registry()


@pytest.mark.parametrize("name", ["fmnist-ddpm-32", "fmnist-ldm-32", "gaussian-fmnist"])
def test_bundled_models_are_available_offline(reg, name):
    ok, where = availability(reg.get(name))
    assert ok, where


def denoise_mse(prior, x, sigma, **kw):
    """MSE of the prior's Tweedie estimate of images ``x`` (in [0, 1]) noised at ``sigma`` (model space)."""
    z = prior.encode(x)
    noisy = z + sigma * randn(z.shape[1:], make_generators(0, len(x)))
    with torch.no_grad():
        return float((prior.decode(prior.denoise(noisy, sigma, **kw)) - x).pow(2).mean())


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_pixel_model_denoises_better_than_the_gaussian_mmse(reg, images, sigma):
    learned = load_prior(reg.get("fmnist-ddpm-32"), CPU, torch.float32)
    gauss = load_prior(reg.get("gaussian-fmnist"), CPU, torch.float32)
    m_learned, m_gauss = denoise_mse(learned, images, sigma), denoise_mse(gauss, images, sigma)
    assert m_learned < 0.7 * m_gauss, (m_learned, m_gauss)


def test_latent_model_autoencoder_and_class_prompts(reg, images):
    prior = load_prior(reg.get("fmnist-ldm-32"), CPU, torch.float32)
    assert prior.conditional and prior.model_shape((1, 32, 32)) == (4, 8, 8)
    with torch.no_grad():
        rec = prior.decode(prior.encode(images)).clamp(0, 1)
    psnr = -10 * torch.log10((rec - images).pow(2).flatten(1).mean(1))
    assert float(psnr.mean()) > 20.0, psnr
    enc = prior.class_prompts
    assert enc.classes[7] == "sneaker"
    assert enc.index("a photo of an Ankle Boot") == enc.classes.index("ankle boot")
    assert enc.index("") is None
    assert enc.index("a t-shirt") == enc.index("top") == enc.classes.index("t-shirt/top")
    assert enc.index("a shirt") == enc.classes.index("shirt")
    e = enc(["sneaker", "", "bag"])
    assert torch.equal(e[0], enc.table[7]) and torch.equal(e[1], enc.null) and e.shape[0] == 3
    with pytest.raises(ValueError, match="names none of the model's classes"):
        enc(["a cat"])
    # the learned denoiser beats the Gaussian MMSE denoiser in image space at a moderate level
    gauss = load_prior(reg.get("gaussian-fmnist"), CPU, torch.float32)
    m_latent = denoise_mse(prior, images, 1.0)
    m_gauss = denoise_mse(gauss, images, 1.0 / prior.scaling_factor)
    assert m_latent < m_gauss, (m_latent, m_gauss)


def test_quickstart_command_restores_better_than_the_measurement(tmp_path):
    """The README's quick start (fewer steps): PiGDM with the bundled model fills the box far
    better than zero filling (the pseudo-inverse baseline) on the same masks and noise."""
    runner = CliRunner()
    common = ["inpaint", "--batch-size", "8", "--noise-sigma", "0.05", "-q", str(EXAMPLES)]
    r = runner.invoke(app, [*common, "--model", "fmnist-ddpm-32", "--method", "pigdm", "--steps", "25", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    r0 = runner.invoke(app, [*common, "--model", "gaussian-fmnist", "--method", "pseudo-inverse", "-o", str(tmp_path / "b")])
    assert r0.exit_code == 0, r0.output
    restored = json.loads((tmp_path / "a" / "metrics.json").read_text())
    zero = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert restored["config"]["model"]["source"] == "bundled"
    assert restored["summary"]["psnr"]["mean"] > zero["summary"]["psnr"]["mean"] + 3.0
    assert restored["summary"]["lpips"]["mean"] is None or restored["summary"]["lpips"]["mean"] < zero["summary"]["lpips"]["mean"]
