"""The ADM prior (ffhq-256's exact architecture, random weights) against guided-diffusion's own sampler maths.

guided-diffusion's ``GaussianDiffusion.p_mean_variance`` (learned-range variance, clip_denoised) gives
the reference ``pred_xstart``, the DDPM step's mean and its log variance; restore's converted UNet inside
``DiffusionPrior`` with the converted scheduler must give the same through the VE parametrisation
(``x = x_vp sqrt(1 + sigma^2)``), at several noise levels, for the full 1000-step chain and for a
respaced one (DPS with fewer steps).
"""

import math

import numpy as np
import pytest
import torch

gd = pytest.importorskip("guided_diffusion.script_util")
respace = pytest.importorskip("guided_diffusion.respace")

from restore_cli.convert import architecture  # noqa: E402
from restore_cli.convert.checkpoint import ADM_SCHEDULER  # noqa: E402
from restore_cli.convert.unet import convert_openai_unet  # noqa: E402
from restore_cli.priors import DiffusionPrior  # noqa: E402
from restore_cli.solvers.base import ancestral_step, learned_noise_std  # noqa: E402

FFHQ = dict(image_size=256, num_channels=128, num_res_blocks=1, learn_sigma=True, class_cond=False,
            use_checkpoint=False, attention_resolutions="16", num_heads=4, num_head_channels=64,
            num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
            use_new_attention_order=False, channel_mult="")


@pytest.fixture(scope="module")
def pair():
    """The original ffhq-256 network with random weights (std 1/sqrt(fan_in)) and restore's prior from it."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = gd.create_model(**FFHQ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) / math.sqrt(fan_in) if p.dim() > 1 else torch.randn_like(p) * 0.1)
    cfg = architecture("ffhq-256.unet")
    unet = UNet2DModel.from_config(cfg)
    unet.load_state_dict(convert_openai_unet(ref.state_dict(), cfg), strict=True)
    return ref, DiffusionPrior(unet, ADM_SCHEDULER, name="ffhq-256")


def _reference(ref, diffusion, x_vp, idx):
    t = torch.full((x_vp.shape[0],), idx, dtype=torch.long)
    with torch.no_grad():
        return diffusion.p_mean_variance(ref, x_vp, t, clip_denoised=True)


@pytest.mark.parametrize("t", [1, 37, 400, 999])
def test_denoiser_and_learned_variance_equal_guided_diffusion(pair, t):
    ref, prior = pair
    diffusion = gd.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                             timestep_respacing="")
    assert np.allclose(prior.schedule.alphas_cumprod.numpy(), diffusion.alphas_cumprod, rtol=1e-6)
    g = torch.Generator().manual_seed(t)
    x_vp = torch.randn(2, 3, 32, 32, generator=g)  # the architecture is size-agnostic: 32x32 keeps it fast
    out = _reference(ref, diffusion, x_vp, t)
    s, s_next = float(prior.schedule.sigmas[t]), float(prior.schedule.sigmas[t - 1])
    x = x_vp * math.sqrt(1 + s**2)
    with torch.no_grad():
        x0, v = prior.denoise_with_variance(x, s)
    assert v is not None and prior.learns_variance
    assert (x0 - out["pred_xstart"]).abs().max() < 1e-4
    std = learned_noise_std(v, s, s_next)  # VE units
    ref_std = (0.5 * out["log_variance"]).exp() * math.sqrt(1 + s_next**2)
    assert torch.allclose(std, ref_std, rtol=1e-4, atol=1e-7)
    # the step's mean: DDPM's posterior mean, the same in both parametrisations
    noise = torch.zeros_like(x)
    mean = ancestral_step(x, x0, s, s_next, noise, eta=1.0, noise_std=std)
    assert (mean - out["mean"] * math.sqrt(1 + s_next**2)).abs().max() < 1e-4


def test_respaced_chain_uses_the_respaced_betas(pair):
    """DPS with 100 steps walks restore's DDIM grid; guided-diffusion's SpacedDiffusion on the same timesteps
    recomputes beta_t from the skipped alpha_bars, and so must the learned variance."""
    ref, prior = pair
    ts = list(range(0, 1000, 10))
    base = dict(betas=gd.gd.get_named_beta_schedule("linear", 1000), model_mean_type=gd.gd.ModelMeanType.EPSILON,
                model_var_type=gd.gd.ModelVarType.LEARNED_RANGE, loss_type=gd.gd.LossType.MSE)
    spaced = respace.SpacedDiffusion(use_timesteps=set(ts), **base)
    wrapped = spaced._wrap_model(ref)
    for i in (1, 50, 99):
        x_vp = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        out = _reference(wrapped, spaced, x_vp, i)
        s, s_next = float(prior.schedule.sigmas[ts[i]]), float(prior.schedule.sigmas[ts[i - 1]])
        with torch.no_grad():
            x0, v = prior.denoise_with_variance(x_vp * math.sqrt(1 + s**2), s)
        assert (x0 - out["pred_xstart"]).abs().max() < 1e-4
        std = learned_noise_std(v, s, s_next)
        assert torch.allclose(std, (0.5 * out["log_variance"]).exp() * math.sqrt(1 + s_next**2), rtol=1e-4)


def test_learned_noise_std_spans_beta_tilde_to_beta():
    """v = -1 is DDPM's posterior variance (the ancestral step's own noise); v = +1 is beta_t."""
    s, sn = 2.0, 1.5
    up = sn * math.sqrt(s**2 - sn**2) / s  # ancestral_step's eta = 1 noise std
    lo = learned_noise_std(torch.tensor([-1.0]), s, sn)
    hi = learned_noise_std(torch.tensor([1.0]), s, sn)
    beta = 1 - (1 + sn**2) / (1 + s**2)
    assert math.isclose(float(lo), up, rel_tol=1e-6)
    assert math.isclose(float(hi), math.sqrt(beta * (1 + sn**2)), rel_tol=1e-6)
    assert float(lo) < float(learned_noise_std(torch.tensor([0.0]), s, sn)) < float(hi)


def test_dps_uses_the_learned_variance_and_can_turn_it_off(pair):
    """The same DPS step with and without the learned variance differs only in its noise's scale."""
    from restore_cli import ops
    from restore_cli.rng import make_generators
    from restore_cli.solvers import DPS

    _, prior = pair
    op = ops.Inpainting(torch.ones(1, 1, 32, 32), 3, 0.0)
    y = op.A(torch.rand(1, 3, 32, 32))
    x = torch.randn(1, 3, 32, 32) * 5
    s, sn = float(prior.schedule.sigmas[5]), float(prior.schedule.sigmas[4])  # beta_tilde ~ 0.8 beta here
    outs = {}
    for lv in (True, False):
        solver = DPS(prior, op, zeta=0.0, learned_variance=lv)
        outs[lv], x0 = solver.step(0, x, y, s, sn, make_generators(7, 1))
    mean = x0 + (sn**2 / s**2) * (x - x0)
    _, v = prior.denoise_with_variance(x, s)
    up = sn * math.sqrt(s**2 - sn**2) / s
    noise = (outs[False] - mean) / up  # the same generator draws the same noise in both
    std = learned_noise_std(v, s, sn)
    assert not torch.allclose(std, torch.full_like(std, up), rtol=1e-2)
    assert torch.allclose(outs[True] - mean, std * noise, atol=1e-5)
