"""CUDA paths (skipped without a GPU, as in CI): same results as the CPU, low precision, the CLI on cuda."""

import json

import pytest
import torch

from restore_cli.ops import Blur, Inpainting, box_mask, motion_kernel
from restore_cli.priors import DiffusionPrior, GaussianPrior
from restore_cli.rng import make_generators
from restore_cli.solvers import DAPS, DPS, DiffStateGrad, PiGDM
from tests.conftest import tiny_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FAST = {DPS: dict(steps=50), PiGDM: dict(steps=20), DAPS: dict(annealing_steps=8, langevin_steps=5)}


@pytest.mark.parametrize("solver", [DPS, PiGDM, DAPS])
def test_cuda_matches_cpu(solver):
    prior = GaussianPrior.fitted(3)
    x = prior.decode(prior.sample((3, 16, 20), make_generators(0, 2))).float().clamp(0, 1)
    op = Blur(motion_kernel(make_generators(1, 2), 9), (3, 16, 20), sigma_y=0.01, kind="motion")
    y = op(x, make_generators(2, 2))
    cpu = solver(prior, op, DiffStateGrad(), **FAST[solver]).run(y, make_generators(3, 2)).images
    dev = torch.device("cuda")
    gpu = solver(prior.to(dev), op.to(dev), DiffStateGrad(), **FAST[solver]).run(y.to(dev), make_generators(3, 2)).images
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unet_prior_low_precision(dtype):
    dev = torch.device("cuda")
    unet = tiny_unet(out_channels=6, size=16)
    ref = DiffusionPrior(unet, dict(num_train_timesteps=1000)).to(dev)
    low = DiffusionPrior(tiny_unet(out_channels=6, size=16), dict(num_train_timesteps=1000)).to(dev)
    low.unet.to(dtype)
    x = torch.randn(2, 3, 16, 16, device=dev) * 5
    with torch.no_grad():
        a, b = ref.denoise(x, 1.0), low.denoise(x, 1.0)  # x0 = x - sigma * eps: the eps error is scaled by sigma
    assert b.dtype == torch.float32 and (a - b).abs().max() < 0.05
    op = Inpainting(box_mask(16, 16, make_generators(0, 2)), 3, kind="box").to(dev)
    y = op(torch.rand(2, 3, 16, 16, device=dev), make_generators(1, 2))
    r = DPS(low, op, DiffStateGrad(), steps=20).run(y, make_generators(2, 2))
    assert torch.isfinite(r.images).all()


def test_cli_on_cuda(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from restore_cli.cli.app import app

    Image.new("RGB", (20, 24), (120, 80, 40)).save(tmp_path / "a.png")
    d = tmp_path / "model"
    tiny_unet(size=16).save_pretrained(d / "unet")
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=1000).save_pretrained(d / "scheduler")
    for dtype in ("fp16", "bf16", "fp32"):
        out = tmp_path / dtype
        r = CliRunner().invoke(app, ["inpaint", str(tmp_path / "a.png"), "--model", str(d), "--device", "cuda",
                                     "--dtype", dtype, "--steps", "10", "--diffstategrad", "-o", str(out)])
        assert r.exit_code == 0, r.output
        m = json.loads((out / "metrics.json").read_text())
        assert m["config"]["device"] == "cuda" and m["config"]["dtype"] == dtype
        assert m["environment"]["gpu"]
    r = CliRunner().invoke(app, ["inpaint", str(tmp_path / "a.png"), "--model", "gaussian", "--device", "cuda",
                                 "--method", "daps", "--set", "annealing_steps=5", "-o", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("kind,cond,method", [("vq", False, "resample"), ("kl", True, "psld"), ("kl", False, "latent-dps")])
def test_latent_cli_on_cuda(kind, cond, method, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from restore_cli.cli.app import app
    from restore_cli.models.testing import save_tiny_latent_model

    Image.new("RGB", (18, 16), (120, 80, 40)).save(tmp_path / "a.png")
    root = save_tiny_latent_model(tmp_path / "m", kind, cond)
    fast = ["--steps", "9", "--set", "every=3", "--set", "pixel_iters=5", "--set", "latent_iters=5"] \
        if method == "resample" else ["--steps", "6"]
    for dtype in ("fp16", "fp32"):
        r = CliRunner().invoke(app, ["inpaint", str(tmp_path / "a.png"), "--model", str(root), "--method", method,
                                     "--device", "cuda", "--dtype", dtype, "--diffstategrad", "--low-memory", *fast,
                                     "-o", str(tmp_path / dtype)])
        assert r.exit_code == 0, r.output
        m = json.loads((tmp_path / dtype / "metrics.json").read_text())
        assert m["images"][0]["status"] == "ok" and m["images"][0]["peak_memory_mb"] > 0, m["images"][0]
