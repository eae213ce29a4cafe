"""Priors: the schedule, the exact Gaussian denoiser, and diffusers UNet priors built from a config."""

import pytest
import torch

from restore_cli.priors import DiffusionPrior, GaussianPrior, Schedule
from restore_cli.rng import make_generators
from tests.conftest import tiny_unet


def test_schedule_sigma_t_roundtrip():
    s = Schedule.ddpm_linear()
    t = torch.tensor([0.0, 10.0, 499.0, 999.0])
    torch.testing.assert_close(s.sigma_to_t(s.sigmas[t.long()]), t.double())
    mid = s.sigma_to_t((s.sigmas[10] * s.sigmas[11]).sqrt())  # geometric mean: halfway in log sigma
    assert abs(float(mid) - 10.5) < 1e-9
    d = s.ddim_sigmas(100)
    assert len(d) == 101 and d[-1] == 0 and torch.all(d[:-1][:-1] > d[:-1][1:])
    assert d[0] == s.sigmas[990] and d[-2] == s.sigmas[0]


def test_gaussian_denoiser_is_the_dense_formula():
    pr = GaussianPrior.fitted(3)
    c, h, w = 3, 5, 6
    n = c * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
    cov = pr.cov_apply(eye).reshape(n, n)
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0
    mu = pr.mu.reshape(-1, 1, 1).expand(c, h, w).reshape(-1)
    x = torch.randn(2, n, dtype=torch.float64)
    sigma = 0.7
    expect = mu + (cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(n, dtype=torch.float64), (x - mu).T)).T
    got = pr.denoise(x.reshape(2, c, h, w), sigma).reshape(2, n)
    torch.testing.assert_close(got, expect)
    assert pr.nfe == 1


def test_gaussian_samples_have_the_prior_covariance():
    pr = GaussianPrior.fitted(1)
    xs = pr.sample((1, 8, 8), make_generators(0, 4000))
    emp = xs.reshape(4000, -1)
    c_emp = torch.cov(emp.T)
    c_true = pr.cov_apply(torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)).reshape(64, 64)
    assert (c_emp - c_true).abs().max() < 0.1 * c_true.diagonal().mean()
    torch.testing.assert_close(emp.mean(0), pr.mu.expand(64), atol=0.05, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_prior_matches_diffusers_x0(prediction_type):
    """Our VE denoiser at sigma_t equals diffusers' own ``pred_original_sample`` at integer t."""
    from diffusers import DDPMScheduler

    unet = tiny_unet()
    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type, clip_sample=False)
    prior = DiffusionPrior(unet, cfg, clip=False)
    sched = DDPMScheduler(**cfg)
    x_vp = torch.randn(2, 3, 8, 8)
    for t in [5, 300, 900]:
        a = sched.alphas_cumprod[t].double()
        sigma = float(((1 - a) / a).sqrt())
        with torch.no_grad():
            ref = sched.step(unet(x_vp, t).sample, t, x_vp).pred_original_sample
            got = prior.denoise(x_vp / a.sqrt().float(), sigma)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_learned_variance_uses_mean_channels_and_clips():
    unet = tiny_unet(out_channels=6)
    prior = DiffusionPrior(unet, dict(num_train_timesteps=1000), clip=True)
    with torch.no_grad():
        x0 = prior.denoise(torch.randn(1, 3, 8, 8) * 50, 50.0)
    assert x0.shape == (1, 3, 8, 8) and x0.abs().max() <= 1


def test_diffusion_prior_from_local_dir_and_offline_cache(tmp_path, monkeypatch):
    """Loads from a saved directory and from a pre-filled Hub cache with HF_HUB_OFFLINE=1."""
    from diffusers import DDPMScheduler

    unet = tiny_unet()
    d = tmp_path / "model"
    unet.save_pretrained(d / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(d / "scheduler")
    assert (d / "unet" / "diffusion_pytorch_model.safetensors").exists()
    p = DiffusionPrior.from_pretrained(str(d), subfolder="unet", scheduler_subfolder="scheduler")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(p.denoise(x, 3.0), DiffusionPrior(unet, dict(num_train_timesteps=1000)).denoise(x, 3.0))

    # a Hub cache laid out as huggingface_hub writes it: models--org--name/{refs,snapshots}
    from restore_cli.models.testing import fill_hub_cache

    cache = tmp_path / "hub"
    fill_hub_cache(cache, "restore/tiny-ddpm", d)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    q = DiffusionPrior.from_pretrained("restore/tiny-ddpm", subfolder="unet", scheduler_subfolder="scheduler",
                                       cache_dir=str(cache))
    with torch.no_grad():
        torch.testing.assert_close(q.denoise(x, 3.0), p.denoise(x, 3.0))
    with pytest.raises(Exception):
        DiffusionPrior.from_pretrained("restore/not-there", subfolder="unet", cache_dir=str(cache))
