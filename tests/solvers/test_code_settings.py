"""Method settings that follow the codes behind the papers' tables (issue 28, "Methods that differ from their codes").

* Latent DAPS on Stable Diffusion: the DAPS code's classifier-free guidance 7.5 and its decode at 512 resized to the
  measured 256 (``solvers/daps.py``), on a tiny random-weight SD-like model (CLIP text encoder, KL autoencoder);
* Latent DAPS on LDM-VQ-4: EDM's ``VPPrecond`` timestep map, against its closed form;
* DiffPIR x4 super-resolution: the analytic branch's (lambda, zeta) (``solvers/diffpir.py``);
* ReSample: inner optimisers' budgets that follow ``--steps``;
* JPEG: how far PiGDM's own JPEG model is from ours (``ops/jpeg.py``'s numbers).
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.ops import JPEG, Inpainting, quant_tables
from restore_cli.bench.oracle import oracle_task
from restore_cli.priors import LatentDiffusionPrior
from restore_cli.rng import make_generators
from restore_cli.solvers import DAPS, DiffPIR, LatentDAPS, ReSample
from restore_cli.models.catalog import DAPS_SD_PROMPT as SD_PROMPT
from restore_cli.solvers.daps import LDM_MODEL, SD_MODEL, VP_PRECOND, vp_precond_timestep
from restore_cli.models.testing import save_tiny_latent_model


COMPONENTS = {"unet": "unet", "vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer",
              "scheduler": "scheduler"}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A random-weight SD-like model (f = 2, CLIP text encoder): the folder and its prior."""
    root = save_tiny_latent_model(tmp_path_factory.mktemp("sd") / "m", "kl", conditional=True)
    return root, LatentDiffusionPrior.from_pretrained(str(root), COMPONENTS, prompt="a photo")


def box(shape):
    c, h, w = shape
    m = torch.ones(1, 1, h, w)
    m[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
    return Inpainting(m, c, sigma_y=0.01, kind="box")


# -- 1. latent DAPS on Stable Diffusion: the code's model setup -----------------------------------------------------
def test_sd_defaults_are_the_daps_codes_model_setup(tiny_sd):
    """configs/model/stable-diffusion-v1.5.yaml: guidance 7.5, prompt "a natural looking image", inner_resolution 512
    (decode) -> target_resolution 256 (the measured images), with the sd: group's step sizes."""
    _, prior = tiny_sd
    op = box((3, 8, 8))
    for cls in (DAPS, LatentDAPS):
        hp = cls(prior, op).hp
        assert (hp["cfg_scale"], hp["decode_size"], hp["timestep_map"]) == (7.5, 512, "model")
        assert hp["langevin_steps"] == 58 and hp["lr"] == 1.11e-6  # sd: inpainting.yaml
    assert SD_MODEL == {"cfg_scale": 7.5, "decode_size": 512} and SD_PROMPT == "a natural looking image"
    # one option away: the unguided model decoded at the image's size
    hp = DAPS(prior, op, cfg_scale=1.0, decode_size=0).hp
    assert (hp["cfg_scale"], hp["decode_size"]) == (1.0, 0)
    # an unconditioned model has no guidance to scale; a pixel model has no decoder to enlarge
    pix, op_p, _, _ = oracle_task("box")
    with pytest.raises(ValueError, match="cfg_scale"):
        DAPS(pix, op_p, cfg_scale=7.5)
    with pytest.raises(ValueError, match="decode_size"):
        DAPS(pix, op_p, decode_size=64)


def test_sd_run_decodes_large_and_measures_at_the_image_size(tiny_sd):
    """An 8x8 image with decode_size 16: the latent is that of a 16x16 image, the solver's forward model is
    ``A(R(D(z)))`` with ``R`` the code's bilinear resize (for 2x: the 2x2 mean), the result is 8x8, and the prior
    runs with guidance 7.5 during the run only (restored after, as is the size it decodes to)."""
    _, prior = tiny_sd
    op = box((3, 8, 8))
    s = DAPS(prior, op, decode_size=16, annealing_steps=2, langevin_steps=2)
    y = op.A(torch.rand(1, 3, 8, 8))
    seen = []
    prior.model_shape((3, 8, 8))  # the prior's own state before the run
    res = s.run(y, make_generators(0, 1), callback=lambda info: seen.append((prior.guidance_scale, prior._image_hw)))
    assert seen and all(g == 7.5 for g, _ in seen) and all(hw == (16, 16) for _, hw in seen)
    assert prior.guidance_scale == 1.0 and prior._image_hw == (8, 8)
    assert res.model.shape == (1, 4, 8, 8) and res.images.shape == (1, 3, 8, 8)
    s._inner = s.decode_shape()
    assert s._inner == (3, 16, 16)
    prior.model_shape(s._inner)
    with torch.no_grad():
        dec = prior.decode(res.model)
        torch.testing.assert_close(s.image(res.model), F.avg_pool2d(dec, 2), atol=1e-6, rtol=0)
        torch.testing.assert_close(res.images, F.avg_pool2d(dec, 2).clamp(0, 1), atol=1e-6, rtol=0)
        r = s.residual(res.model, y)
        torch.testing.assert_close(r, op.residual_scale * (y - op.A(F.avg_pool2d(dec, 2))), atol=1e-6, rtol=0)
    s._inner = None
    prior.model_shape((3, 8, 8))
    # an image at least decode_size on its shorter side decodes at its own size
    assert DAPS(prior, box((3, 16, 24)), decode_size=16).decode_shape() is None
    assert DAPS(prior, box((3, 8, 12)), decode_size=16).decode_shape() == (3, 16, 24)


def test_sd_guidance_changes_the_result(tiny_sd):
    """The guidance weight reaches the denoiser: 7.5 (the code's) and 1 give different restorations."""
    _, prior = tiny_sd
    op = box((3, 8, 8))
    y = op.A(torch.rand(1, 3, 8, 8))
    kw = dict(annealing_steps=2, langevin_steps=1, decode_size=0)
    a = DAPS(prior, op, **kw).run(y, make_generators(0, 1)).images
    b = DAPS(prior, op, cfg_scale=1.0, **kw).run(y, make_generators(0, 1)).images
    assert (a - b).abs().max() > 1e-4


def test_sd_settings_through_the_cli(tiny_sd, tmp_path):
    """``restore inpaint --method daps`` on the tiny SD model: the code's guidance recorded, ``--set decode_size``
    honoured, the restored image at the input's size."""
    root, _ = tiny_sd
    photo = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["inpaint", str(photo), "--model", str(root), "--method", "daps", "--steps", "2",
                                 "--set", "langevin_steps=2", "--set", "decode_size=32", "--fit", "none",
                                 "--no-diffstategrad", "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    hp = m["config"]["method"]["hyperparameters"]
    assert (hp["cfg_scale"], hp["decode_size"], hp["timestep_map"]) == (7.5, 32, "model")
    rec = m["images"][0]
    assert rec["status"] == "ok" and rec["psnr"] is not None, rec
    assert Image.open(out / "in.png").size == Image.open(out / "in.measurement.png").size == (16, 16)


# -- 2. latent DAPS on LDM-VQ-4: VPPrecond's timesteps --------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.001, 0.1, 0.5, 1.0, 10.0])
def test_vp_precond_timestep_is_the_closed_form(sigma):
    """EDM's VPPrecond (model/precond.py): ``c_noise = (M - 1) sigma_inv(sigma)``, ``sigma_inv = (sqrt(beta_min^2 +
    2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``, beta_d 19.9, beta_min 0.1, M 1000; and its inverse
    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` gives sigma back."""
    assert VP_PRECOND == {"beta_d": 19.9, "beta_min": 0.1, "M": 1000}
    t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(1 + sigma**2)) - 0.1) / 19.9
    assert math.isclose(vp_precond_timestep(sigma), 999 * t, rel_tol=1e-6)  # (ours: log1p, no cancellation)
    assert math.isclose(math.sqrt(math.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1), sigma, rel_tol=1e-9)


def test_vp_map_is_far_from_ldm_vq4s_own_schedule():
    """The issue's numbers: at sigma 0.1 VPPrecond says t = 27, LDM-VQ-4's own schedule (sqrt-linear 0.0015-0.0195) 6."""
    from restore_cli.convert.checkpoint import LDM_SCHEDULER
    from restore_cli.priors.base import Schedule

    own = float(Schedule.from_scheduler_config(LDM_SCHEDULER).sigma_to_t(torch.tensor(0.1)))
    assert round(vp_precond_timestep(0.1)) == 27 and round(own) == 6


def _recording(prior):
    seen = []
    unet = prior.unet
    orig = unet.forward

    def forward(x, t, *a, **k):
        seen.append(torch.as_tensor(t).flatten()[0].item())
        return orig(x, t, *a, **k)

    unet.forward = forward
    return seen, lambda: setattr(unet, "forward", orig)


def test_vq_models_default_to_the_codes_timestep_map(tmp_path):
    """On a VQ latent model DAPS feeds the network VPPrecond's timestep (the code's LDM, default), and
    ``timestep_map=model`` the model's own; a KL model without a text encoder keeps its own schedule."""
    root = save_tiny_latent_model(tmp_path / "vq", "vq")
    prior = LatentDiffusionPrior.from_pretrained(str(root), {"unet": "unet", "vqvae": "vqvae", "scheduler": "scheduler"})
    op = box((3, 8, 8))
    s = DAPS(prior, op)
    assert s.hp["timestep_map"] == "vp" and LDM_MODEL == {"timestep_map": "vp"}
    assert LatentDAPS(prior, op).hp["timestep_map"] == "vp"
    z = torch.randn(1, *prior.model_shape((3, 8, 8)))
    seen, undo = _recording(prior)
    try:
        s.tweedie(z, 0.1)
        DAPS(prior, op, timestep_map="model").tweedie(z, 0.1)
    finally:
        undo()
    assert math.isclose(seen[0], vp_precond_timestep(0.1), rel_tol=1e-6)
    assert math.isclose(seen[1], float(prior.schedule.sigma_to_t(torch.tensor(0.1))), rel_tol=1e-6)
    kl = LatentDiffusionPrior.from_pretrained(str(save_tiny_latent_model(tmp_path / "kl", "kl")),
                                              {"unet": "unet", "vae": "vae", "scheduler": "scheduler"})
    assert DAPS(kl, op).hp["timestep_map"] == "model"
    oracle, op_o, _, _ = oracle_task("box", latent=True)
    with pytest.raises(ValueError, match="timestep_map"):
        DAPS(oracle, op_o, timestep_map="vp")


# -- 3. DiffPIR x4 super-resolution: the analytic branch's setting ---------------------------------------------------
def test_diffpir_superres_default_is_the_analytic_branchs():
    """main_ddpir_sisr.py with sub_1_analytic=True (our exact prox) sweeps lambda = 2..12 at zeta = 0.25; (35, 0.35)
    belongs to its first-order branch.  The default is inside the analytic sweep."""
    prior, _, _, _ = oracle_task("box")
    from restore_cli.ops import SuperResolution

    op = SuperResolution((3, 12, 12), 4, sigma_y=0.05)
    hp = DiffPIR(prior, op).hp
    assert hp["zeta"] == 0.25 and 2 <= hp["lambda"] <= 12
    assert DiffPIR(prior, op, **{"lambda": 35.0, "zeta": 0.35}).hp["lambda"] == 35.0  # the old one, one option away
    assert DiffPIR.method_revision("superres") == 2 and DiffPIR.method_revision("deblur") == 1


# -- 5. ReSample: inner budgets follow --steps ------------------------------------------------------------------------
def test_resample_inner_budgets_follow_steps():
    """500/2000 (the code's) at the default 500 steps, scaled by steps / 500 (at least 5) otherwise, never above the
    code's; an explicit value is used as given."""
    prior, op, _, _ = oracle_task("box", latent=True)
    hp = ReSample(prior, op).hp
    assert (hp["steps"], hp["latent_iters"], hp["pixel_iters"]) == (500, 500, 2000)
    hp = ReSample(prior, op, steps=2).hp
    assert (hp["latent_iters"], hp["pixel_iters"]) == (5, 8)
    hp = ReSample(prior, op, steps=100).hp
    assert (hp["latent_iters"], hp["pixel_iters"]) == (100, 400)
    hp = ReSample(prior, op, steps=1000).hp
    assert (hp["latent_iters"], hp["pixel_iters"]) == (500, 2000)
    hp = ReSample(prior, op, steps=2, latent_iters=300, pixel_iters=0).hp
    assert (hp["latent_iters"], hp["pixel_iters"]) == (300, 0)


def test_resample_quick_run_is_quick():
    """``steps=2`` spends 5 iterations on the final latent optimisation (it was 500): 5 backward passes in all
    (the grid of 2 steps has no hard data consistency step; the DPS nudge costs one per step)."""
    prior, op, _, y = oracle_task("box", latent=True)
    res = ReSample(prior, op, steps=2, eps=0.0).run(y, make_generators(0, 1))
    assert res.n_backward <= 2 + 5, res.n_backward


# -- 6. JPEG: PiGDM's own model against ours ------------------------------------------------------------------------
def pigdm_jpeg(x, quality):
    """PiGDM's JPEG model (NVlabs/RED-diff utils/jpeg_torch.py, ddrm-jpeg's): chroma decimated x[::2, ::2],
    rounded BT.601 matrices, box upsampling, no range limit anywhere; x [B, 3, S, S] in [0, 1], S % 16 == 0."""
    from restore_cli.ops.jpeg import dct8_matrix

    fwd = torch.tensor([[.299, .587, .114], [-.1687, -.3313, .5], [.5, -.4187, -.0813]], dtype=torch.float64)
    inv = torch.tensor([[1.0, -3.68199903e-05, 1.40198758], [1.0, -3.44113281e-01, -7.14103821e-01],
                        [1.0, 1.77197812, -1.34583413e-04]], dtype=torch.float64)
    t, d = quant_tables(quality), dct8_matrix()
    v = torch.einsum("ij,bjhw->bihw", fwd, x * 255)
    v[:, 1:] += 128

    def code(p, tab):
        b, h, w = p.shape
        blk = (p - 128).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
        r = d.T @ (tab * torch.round(d @ blk @ d.T / tab)) @ d
        return r.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128

    chroma = [code(v[:, k, ::2, ::2], t[1]).repeat_interleave(2, -1).repeat_interleave(2, -2) - 128 for k in (1, 2)]
    return torch.einsum("ij,bjhw->bihw", inv, torch.stack([code(v[:, 0], t[0]), *chroma], 1)) / 255


@pytest.mark.parametrize("name,quality,expected", [("astronaut", 10, 34.6), ("chelsea", 10, 39.7), ("coffee", 5, 29.8)])
def test_pigdm_jpeg_model_distance_is_the_documented_one(name, quality, expected):
    """``ops/jpeg.py`` quotes the PSNR between our model and PiGDM's on 256x256 centre crops: measured again here."""
    from skimage import data

    im = getattr(data, name)()
    h, w = im.shape[:2]
    top, left = (h - 256) // 2, (w - 256) // 2
    x = torch.from_numpy(im[top:top + 256, left:left + 256].astype(np.float64) / 255).permute(2, 0, 1)[None]
    ours = JPEG(x.shape[1:], quality).double().A(x)
    theirs = pigdm_jpeg(x, quality)
    psnr = float(10 * torch.log10(1 / (ours - theirs).pow(2).mean()))
    assert abs(psnr - expected) < 0.1, psnr
    assert float(((theirs < 0) | (theirs > 1)).double().mean()) > 0.005  # no range limit: values leave [0, 1]


def test_daps_on_sd_defaults_to_the_codes_prompt(tiny_sd):
    """The prompt a DAPS run on Stable Diffusion gets without --prompt is the DAPS code's; PSLD keeps ""."""
    from restore_cli.models.catalog import resolve_prompt
    from restore_cli.models.config import local_model

    spec = local_model(tiny_sd[0])
    assert resolve_prompt(spec, "daps") == resolve_prompt(spec, "latent-daps") == SD_PROMPT
    assert resolve_prompt(spec, "daps", "a face") == "a face"
    assert resolve_prompt(spec, "psld") == ""
