"""Throughput (issue "One GPU: throughput"): the per-step code never waits for the device, constants are
computed once, and none of it changes a result.

"Never waits for the device" is checked on the CPU by running the solvers on PyTorch's ``meta`` device,
whose tensors have shapes but no values: every ``.item()``, ``.cpu()``, ``float(t)``, ``bool(t)`` or
copy back to the host raises there, exactly where a GPU run would synchronise.
"""

from __future__ import annotations


import pytest
import torch

from restore_cli.ops import Inpainting, SuperResolution, box_mask
from restore_cli.priors import DiffusionPrior, LatentDiffusionPrior, as_batch_sigma, vp_scale
from restore_cli.priors.diffusion import sigma_and_t, timesteps
from restore_cli.rng import make_generators, randn_like
from restore_cli.solvers import DAPS, DPS, GMLDPS, P2L, PSLD, DiffStateGrad, PiGDM
from restore_cli.rng import noise_like
from restore_cli.models.testing import save_tiny_latent_model, tiny_unet

SCHED = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def pixel_prior(learned_variance=True):
    return DiffusionPrior(tiny_unet(6 if learned_variance else 3, 3, 16), SCHED)


@pytest.fixture(scope="module")
def latent_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    return {"kl": save_tiny_latent_model(root / "kl", "kl"),
            "cond": save_tiny_latent_model(root / "cond", "kl", conditional=True)}


def latent_prior(root, conditional=False, guidance=1.0):
    comps = {"unet": "unet", "vae": "vae", "scheduler": "scheduler"}
    if conditional:
        comps.update({"text_encoder": "text_encoder", "tokenizer": "tokenizer"})
    return LatentDiffusionPrior.from_pretrained(str(root), comps, prompt="a photo", guidance_scale=guidance)


# -- the timestep lookup ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_sigma_and_timestep_as_before(dtype):
    """A Python-number noise level gives the sigma ``as_batch_sigma`` gave and the timestep the host lookup
    of that (rounded) sigma gave, bit for bit, including levels off the grid's ends."""
    s = pixel_prior().schedule
    x = torch.zeros(3, 2, 4, 4, dtype=dtype)
    for sigma in (1e-5, s.sigma_min, 0.0123, 0.5, 1.0, 7.3, s.sigma_max, 1e4, torch.tensor(0.7, dtype=torch.float64)):
        got_s, got_t = sigma_and_t(s, sigma, x)
        ref_s = as_batch_sigma(sigma, x)
        ref_t = s.sigma_to_t(ref_s.reshape(-1).cpu()).to(torch.float32)
        assert got_s.dtype == dtype and got_s.shape == ref_s.shape and torch.equal(got_s, ref_s)
        assert got_t.dtype == torch.float32 and torch.equal(got_t, ref_t)


def test_per_image_timesteps_on_the_device_path():
    """Per-image levels (a tensor, e.g. classifier-free guidance's doubled batch) take the on-device lookup:
    the same arithmetic as ``Schedule.sigma_to_t``."""
    s = pixel_prior().schedule
    sig = torch.tensor([1e-6, 0.01, 0.3, 2.0, 80.0, 1e5]).reshape(-1, 1, 1, 1)
    assert torch.equal(timesteps(s, sig), s.sigma_to_t(sig.reshape(-1)).to(torch.float32))
    x = torch.zeros(6, 1, 2, 2)
    got_s, got_t = sigma_and_t(s, sig.reshape(-1), x)
    assert torch.equal(got_s, sig) and torch.equal(got_t, timesteps(s, sig))


def test_denoise_is_the_old_formula():
    """The pixel denoiser (epsilon model with a learned variance) gives what it gave before the change,
    where sigma went to the device with ``as_batch_sigma`` and t came back from the host."""
    prior = pixel_prior()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for sigma in (0.3, 12.0, torch.tensor([0.2, 5.0])):
        sb = as_batch_sigma(sigma, x)
        t = prior.schedule.sigma_to_t(sb.reshape(-1).cpu()).to(torch.float32)
        with torch.no_grad():
            out = prior.unet(x * vp_scale(sb), t).sample
            ref = (x - sb * out[:, :3]).clamp(-1, 1)
            x0, var = prior.denoise_with_variance(x, sigma)
            assert torch.equal(prior.denoise(x, sigma), ref)
        assert torch.equal(x0, ref) and torch.equal(var, out[:, 3:])


def test_latent_denoise_with_guidance_as_before(latent_dirs):
    """Classifier-free guidance doubles the batch: its timesteps are the scalar lookup's, repeated."""
    prior = latent_prior(latent_dirs["cond"], conditional=True, guidance=3.0)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        new = prior.denoise(z, 0.9)
        old = prior._denoise(z, as_batch_sigma(0.9, z))  # t computed from the tensor inside unet_x0
    assert torch.equal(new, old)


# -- no host-device synchronisation in the steps -------------------------------------------------------

def _meta_pixel():
    prior = pixel_prior().to("meta")
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.05, kind="box").to("meta")
    return prior, op, torch.zeros(2, 3, 16, 16, device="meta")


@pytest.mark.parametrize("dsg", [False, True])
@pytest.mark.parametrize("cls,hp", [(DPS, {"steps": 3}), (PiGDM, {"steps": 3}),
                                    (DAPS, {"annealing_steps": 2, "langevin_steps": 2, "ode_steps": 2})])
def test_pixel_solvers_never_wait_for_the_device(cls, hp, dsg):
    prior, op, y = _meta_pixel()
    res = cls(prior, op, DiffStateGrad() if dsg else None, **hp).run(y, make_generators(1, 2))
    assert res.images.device.type == "meta" and res.images.shape == y.shape


def test_dds_never_waits_for_the_device():
    """DDS's CG steps in every DDIM step: a fixed budget, asked nothing of the device."""
    from restore_cli.solvers import DDS

    prior, op, y = _meta_pixel()
    res = DDS(prior, op, steps=3).run(y, make_generators(1, 2))
    assert res.images.device.type == "meta"


@pytest.mark.parametrize("precond", [False, True])
def test_cg_asks_the_device_only_every_few_iterations_with_the_same_result(precond):
    """ops.cg: whether every image has stopped is asked every ``sync_every`` iterations (never with 0);
    each image still stops at its own tolerance on the device, so the solution and the reported iterations
    do not depend on it.  Two systems of different difficulty in one batch, against a dense solve."""
    from restore_cli.ops.base import cg

    g = torch.Generator().manual_seed(0)
    n = 120
    q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
    mats = torch.stack([q @ torch.diag(torch.linspace(1, c, n, dtype=torch.float64)) @ q.T for c in (3.0, 100.0)])
    b = torch.randn(2, n, dtype=torch.float64, generator=g)

    def apply(v):
        return (mats @ v.unsqueeze(-1)).squeeze(-1)

    pre = (lambda v: v / torch.diagonal(mats, dim1=1, dim2=2)) if precond else None
    exact = torch.linalg.solve(mats, b)
    got = [cg(apply, b, iters=200, tol=1e-8, precond=pre, return_info=True, sync_every=k) for k in (0, 1, 8)]
    for x, info in got:
        assert torch.allclose(x, exact, atol=1e-6) and bool(info.converged.all())
        assert torch.equal(x, got[1][0]) and info.iterations == got[1][1].iterations
    assert 3 < got[1][1].iterations < 100  # the hard system sets the count; the easy one stopped earlier
    easy_only = cg(lambda v: (mats[:1] @ v.unsqueeze(-1)).squeeze(-1), b[:1], iters=200, tol=1e-8,
                   precond=pre and (lambda v: v / torch.diagonal(mats[:1], dim1=1, dim2=2)), return_info=True)[1].iterations
    assert easy_only < got[1][1].iterations


def test_cg_synchronises_rarely_stops_early_and_leaves_stopped_images_alone(monkeypatch):
    """How often ops.cg asks the device (``Tensor.__bool__`` counted): never with ``sync_every=0``, after
    iterations 1, 2, 4 and then every 8 by default; a one-step system stops after one ``apply``; an
    image whose system is NaN keeps its start (0 * NaN would not)."""
    from restore_cli.ops.base import cg

    g = torch.Generator().manual_seed(1)
    n = 120
    q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))[0]
    m = q @ torch.diag(torch.linspace(1, 100, n, dtype=torch.float64)) @ q.T
    b = torch.randn(1, n, dtype=torch.float64, generator=g)
    calls = {"bool": 0, "apply": 0}
    real_bool = torch.Tensor.__bool__

    def counted(self):
        calls["bool"] += 1
        return real_bool(self)

    def apply(v):
        calls["apply"] += 1
        return v @ m

    monkeypatch.setattr(torch.Tensor, "__bool__", counted)
    for every, most in ((0, 0), (8, None), (1, None)):
        calls.update(bool=0, apply=0)
        _, info = cg(apply, b, iters=200, tol=1e-8, return_info=True, sync_every=every)
        k = info.iterations
        expect = {0: 0, 1: k, 8: 3 + k // 8}[every]
        assert calls["bool"] <= expect + 1, (every, calls, k)
    assert 30 < k < 200
    calls.update(bool=0, apply=0)
    x, info = cg(lambda v: (calls.__setitem__("apply", calls["apply"] + 1), 2 * v)[1], b, iters=100, tol=1e-8,
                 return_info=True)
    assert calls["apply"] == 1 + 1 and info.iterations == 1 and torch.allclose(x, b / 2)  # + the final residual
    start = torch.ones(2, n, dtype=torch.float64)
    bb = torch.stack([b[0], torch.full((n,), float("nan"), dtype=torch.float64)])
    x = cg(lambda v: v @ m, bb, x0=start, iters=50, tol=1e-8, sync_every=0)
    assert torch.equal(x[1], start[1]) and torch.isfinite(x[0]).all()


def test_pigdm_noiseless_never_waits_for_the_device():
    prior, _, y = _meta_pixel()
    op = Inpainting(box_mask(16, 16, make_generators(0, 2)), 3, 0.0, kind="box").to("meta")
    PiGDM(prior, op, steps=2).run(y, make_generators(1, 2))


@pytest.mark.parametrize("dsg", [False, True])
@pytest.mark.parametrize("cls,hp,cond", [(DPS, {"steps": 3}, False), (GMLDPS, {"steps": 3}, False),
                                         (PSLD, {"steps": 3}, False),
                                         (P2L, {"steps": 3, "every": 2, "prompt_steps": 2}, True)])
def test_latent_solvers_never_wait_for_the_device(latent_dirs, cls, hp, cond, dsg):
    """Latent DPS, GML-DPS and PSLD (KL encoder sampled at every step) and P2L's prompt tuning, update and
    projection (a fixed budget of CG steps, ops.cg with ``sync_every=0``).  (ReSample's optimisers stop per
    image when the loss is small, which asks the device at every iteration by design.)"""
    prior = latent_prior(latent_dirs["cond" if cond else "kl"], conditional=cond).to("meta")
    if cond:
        prior.set_prompt(prior.prompt)  # embeddings on the device, as hub.load_prior does
    op = Inpainting(box_mask(16, 16, make_generators(0, 2)), 3, 0.0, kind="box").to("meta")
    y = torch.zeros(2, 3, 16, 16, device="meta")
    res = cls(prior, op, DiffStateGrad() if dsg else None, **hp).run(y, make_generators(1, 2))
    assert res.images.device.type == "meta"


# -- constants computed once, decoded once: same results ---------------------------------------------

def test_pigdm_measurement_cache_follows_the_measurement():
    """PiGDM computes ``encode(h^+(y))`` once per measurement; a solver reused with another ``y`` recomputes it."""
    prior = pixel_prior(False)
    gens = make_generators(0, 2)
    op = SuperResolution((3, 16, 16), 2, "bicubic", 0.0)
    xa, xb = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    solver = PiGDM(prior, op, steps=3)
    solver.run(op(xa, gens), make_generators(1, 2))
    reused = solver.run(op(xb, gens), make_generators(1, 2)).model
    fresh = PiGDM(prior, op, steps=3).run(op(xb, gens), make_generators(1, 2)).model
    assert torch.equal(reused, fresh)


def test_psld_glue_cache_follows_the_measurement(latent_dirs):
    prior = latent_prior(latent_dirs["kl"])
    gens = make_generators(0, 2)
    op = SuperResolution((3, 16, 16), 2, "bicubic", 0.0)
    xa, xb = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    solver = PSLD(prior, op, steps=3)
    solver.run(op(xa, gens), make_generators(1, 2))
    reused = solver.run(op(xb, gens), make_generators(1, 2)).model
    fresh = PSLD(prior, op, steps=3).run(op(xb, gens), make_generators(1, 2)).model
    assert torch.equal(reused, fresh)
    # the cached A^T y is the formula's
    img = torch.rand(2, 3, 16, 16)
    y = op(xb, gens)
    ref = solver.transpose(op.residual_scale * y - op.A(torch.ones_like(img)))
    assert torch.equal(solver.glued_measurement(img, y), ref)


def test_p2l_decodes_once_per_step(latent_dirs):
    """The projection reuses the guidance's decoded image: one decoder pass fewer on projection steps, same result."""
    prior = latent_prior(latent_dirs["kl"])
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box")
    y = op(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)), gens)
    prior.n_decode = 0
    P2L(prior, op, steps=4, every=1).run(y, make_generators(1, 2))
    assert prior.n_decode == 4 + 1  # one per step (guidance and projection) and the final image


def test_pixel_low_memory_same_results():
    """Gradient checkpointing in a pixel UNet (DiffusionPrior.low_memory) recomputes, never changes, the gradient."""
    prior = pixel_prior()
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box")
    y = op(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)), gens)
    plain = DPS(prior, op, steps=3).run(y, make_generators(1, 2)).model
    prior.low_memory(True)
    assert prior.unet.is_gradient_checkpointing
    low = DPS(prior, op, steps=3).run(y, make_generators(1, 2)).model
    prior.low_memory(False)
    torch.testing.assert_close(low, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,hp", [(DAPS, {"annealing_steps": 3, "langevin_steps": 3, "ode_steps": 2}),
                                    (PiGDM, {"steps": 3})])
def test_batched_equals_per_image_on_a_network(cls, hp):
    """On a real (tiny) network, each image of a batch gets what it gets alone."""
    prior = pixel_prior(False)
    gens = make_generators(0, 3)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box")
    y = op(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6)), gens)
    dsg = DiffStateGrad()
    full = cls(prior, op, dsg, **hp).run(y, make_generators(1, 3)).model
    alone = cls(prior, op.select([2]), dsg, **hp).run(y[2:], make_generators(1, 1, offset=2)).model
    torch.testing.assert_close(full[2:], alone, rtol=1e-4, atol=1e-5)


def test_daps_restarts_a_diverged_chain_from_the_ode_estimate():
    """The non-finite check is a mask on the device now (no ``bool``): a NaN chain still restarts from x0_hat."""
    prior = pixel_prior(False)
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box")
    y = op(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)), gens)
    y[1] = float("nan")  # image 1's likelihood gradient is NaN at every Langevin step
    res = DAPS(prior, op, annealing_steps=2, langevin_steps=2, ode_steps=2).run(y, make_generators(1, 2))
    assert torch.isfinite(res.model).all()


def test_noise_like_is_randn_like():
    x = torch.zeros(3, 2, 5, 5)
    assert torch.equal(noise_like(x, make_generators(9, 3)), randn_like(x, make_generators(9, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noise_like_on_cuda_is_randn_like():  # pragma: no cover - GPU only
    x = torch.zeros(3, 2, 5, 5, device="cuda")
    assert torch.equal(noise_like(x, make_generators(9, 3)).cpu(), randn_like(x, make_generators(9, 3)).cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dps_step_never_synchronises_on_cuda():  # pragma: no cover - GPU only
    """On a GPU, CUDA's own sync detector: a DPS run without DiffStateGrad (whose SVD syncs, once per step)."""
    prior = pixel_prior().to("cuda")
    gens = make_generators(0, 2)
    op = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box").to("cuda")
    y = op(torch.rand(2, 3, 16, 16).cuda(), gens)
    solver = DPS(prior, op, steps=3)
    solver.run(y, make_generators(1, 2))  # warm-up (allocations, pinned buffers)
    x = solver.init_x(y, make_generators(1, 2), 10.0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.enable_grad():
            solver.step(0, x, y, 10.0, 5.0, make_generators(1, 2))
    finally:
        torch.cuda.set_sync_debug_mode(0)


# -- mixed precision ----------------------------------------------------------------------------------

def _bundled(dtype, device="cpu"):
    from restore_cli.models.config import load_registry
    from restore_cli.models.hub import load_prior

    return load_prior(load_registry().get("fmnist-ddpm-32"), torch.device(device), dtype)


def test_bf16_network_stays_within_tolerance_of_fp32():
    """The trained bundled network in bf16: its noise prediction (what precision changes; x0 = x - sigma eps
    scales any error by sigma) within 3 % RMS of fp32's at every noise level. Measured: 0.05-2.4 %.
    End to end on the CPU, 50 DPS steps in bf16 gave a restoration 52.9 dB from fp32's (docs/throughput.md);
    the CUDA test below checks fp16 and bf16 end to end where they are fast."""
    p32, p16 = _bundled(torch.float32), _bundled(torch.bfloat16)
    g = make_generators(0, 2)
    for s in (0.05, 0.3, 1.0, 5.0, 40.0):
        x = torch.rand(2, 1, 32, 32) * 2 - 1 + s * randn_like(torch.zeros(2, 1, 32, 32), g)
        e32, e16 = (x - p32.denoise(x, s)) / s, (x - p16.denoise(x, s)) / s
        assert ((e32 - e16).pow(2).mean() / e32.pow(2).mean()).sqrt() < 0.03, s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_restoration_within_tolerance_on_cuda(dtype):  # pragma: no cover - GPU only
    """DPS, 100 steps, on the bundled model: the half-precision restoration within 35 dB of fp32's."""
    gens = make_generators(0, 2)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 36, 36), 5, 1)  # a smooth test image
    op = Inpainting(box_mask(32, 32, gens), 1, 0.005, kind="box").to("cuda")
    y = op(x.cuda(), make_generators(1, 2))
    out = {dt: DPS(_bundled(dt, "cuda"), op, steps=100).run(y, make_generators(2, 2)).images for dt in (torch.float32, dtype)}
    mse = (out[torch.float32] - out[dtype]).pow(2).flatten(1).mean(1)
    assert (-10 * mse.log10()).min() > 35


# -- the benchmark script -----------------------------------------------------------------------------

def test_bench_throughput_prints_the_table(tmp_path, capsys, monkeypatch):
    """`restore bench throughput` (restore_cli.bench.throughput) through the console script's main()."""
    from restore_cli.cli.app import main

    monkeypatch.setattr("sys.argv", ["restore", "bench", "throughput", "--models", "fmnist-ddpm-32", "--methods", "dps",
                                     "--batch-sizes", "1", "2", "--steps", "2", "--dsg-share", "--workdir",
                                     str(tmp_path), "--markdown", str(tmp_path / "t.md")])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "| dps | fmnist-ddpm-32 | 2 | fp32 | yes | no |" in out and "s/image at B / at 1" in out
    assert (tmp_path / "throughput.jsonl").exists() and (tmp_path / "t.md").read_text().startswith("| method |")


def test_bench_throughput_usage_error_is_exit_2(monkeypatch, capsys):
    from restore_cli.cli.app import main

    monkeypatch.setattr("sys.argv", ["restore", "bench", "throughput", "--dtypes", "fp64"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "restore bench throughput" in capsys.readouterr().err
