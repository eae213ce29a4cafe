"""The non-linear blur (BKSE's KernelWizard, DPS Table 4): architecture, strict loading, the operator, the CLI.

The published GOPRO_wVAE.pth is not available here; the architecture's names and shapes were checked
against BKSE's own ``KernelWizard(opt)`` built from ``options/generate_blur/default.yml`` (159 tensors,
115,265,475 parameters, identical names and shapes) and, on a small configuration with random weights,
its ``adaptKernel`` output against ours (identical).  These tests use a small configuration.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.ops import nonlinear_blur as nb
from restore_cli.ops.nonlinear_blur import (GOPRO_WVAE, KernelModelError, KernelWizard, KernelWizardConfig,
                                            NonlinearBlur, extractor_shapes, load_kernel_wizard)
from restore_cli.rng import make_generators

SMALL = KernelWizardConfig(nf=4, kernel_dim=32, front_RBs=1, back_RBs=1, extractor_blocks=1)
FMNIST = Path(__file__).resolve().parents[2] / "examples" / "fmnist" / "0000-ankle-boot.png"
runner = CliRunner()


def random_state_dict(config: KernelWizardConfig, seed: int = 0) -> dict:
    """A full BKSE KernelWizard state dict (with the kernel extractor) of random weights."""
    g = torch.Generator().manual_seed(seed)
    net = KernelWizard(config)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in net.state_dict().items()}
    sd.update({k: torch.randn(s, generator=g) * 0.05 for k, s in extractor_shapes(config).items()})
    return sd


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "GOPRO_wVAE.pth"
    torch.save(random_state_dict(SMALL), path)
    return path


@pytest.fixture
def small_net():
    from restore_cli.ops.nonlinear_blur import kernel_wizard_from_state_dict

    return kernel_wizard_from_state_dict(random_state_dict(SMALL), SMALL)


def test_gopro_architecture_names_and_sizes():
    with torch.device("meta"):
        net = KernelWizard(GOPRO_WVAE)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()} | extractor_shapes(GOPRO_WVAE)
    assert len(shapes) == 159  # BKSE's KernelWizard(default.yml).state_dict()
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 115_265_475
    assert sum(p.numel() for p in net.parameters()) == 23_662_531  # what the forward model keeps
    assert shapes["adapter.model.submodule.submodule.submodule.submodule.up.1.weight"] == (1024, 512, 4, 4)
    assert shapes["kernel_extractor.model.22.conv_block.5.weight"] == (1024, 1024, 3, 3)
    assert shapes["recon_trunk.28.weight"] == (3, 64, 3, 3)


def test_strict_load_roundtrip_and_sha256(ckpt):
    net, digest = load_kernel_wizard(ckpt, SMALL)
    assert digest == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    sd = torch.load(ckpt, weights_only=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not any(p.requires_grad for p in net.parameters())
    assert load_kernel_wizard(ckpt, SMALL)[0] is net  # cached for the next batch
    # a DataParallel checkpoint: every name prefixed with module.
    dp = ckpt.with_name("dp.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, dp)
    assert torch.equal(load_kernel_wizard(dp, SMALL)[0].recon_trunk[-1].weight, sd["recon_trunk.9.weight"])


@pytest.mark.parametrize("change", ["rename", "drop", "extra", "shape", "extractor"])
def test_wrong_architecture_is_refused_in_one_line(tmp_path, change):
    sd = random_state_dict(SMALL)
    if change == "rename":
        sd["adapter.model.down.0.weight_x"] = sd.pop("adapter.model.down.0.weight")
    elif change == "drop":
        del sd["feature_extractor.6.conv2.bias"]
    elif change == "extra":
        sd["adapter.model.down.0.bias"] = torch.zeros(SMALL.nf)  # a norm other than none has biases
    elif change == "shape":
        sd["recon_trunk.1.weight"] = torch.zeros(SMALL.nf * 2, SMALL.nf, 3, 3)
    else:
        del sd["kernel_extractor.model.19.conv_block.5.weight"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(KernelModelError) as e:
        load_kernel_wizard(path, SMALL)
    msg = str(e.value)
    assert "\n" not in msg and "bad.pth" in msg and "KernelWizard" in msg


def test_garbage_and_the_gopro_shapes_refused(tmp_path, ckpt):
    bad = tmp_path / "notes.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(KernelModelError, match=r"notes\.pth: not a readable PyTorch checkpoint") as e:
        load_kernel_wizard(bad, SMALL)
    assert "\n" not in str(e.value)
    with pytest.raises(KernelModelError, match=r"GOPRO_wVAE\.pth: not BKSE's KernelWizard.*missing"):  # a small network is not GOPRO_wVAE
        load_kernel_wizard(ckpt, GOPRO_WVAE)


def test_known_sha256_is_checked(ckpt, monkeypatch):
    monkeypatch.setattr(nb, "KNOWN_SHA256", "0" * 64)
    with pytest.raises(KernelModelError, match="sha256"):
        load_kernel_wizard(ckpt, KernelWizardConfig(nf=4, kernel_dim=32, front_RBs=1, back_RBs=1, extractor_blocks=2))


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 40, 24), (3, 128, 128)])
def test_operator_shape_range_and_params(small_net, shape):
    gens = make_generators(0, 2)
    op = NonlinearBlur(small_net, shape, gens, checkpoint="x.pth", sha256="ab" * 32)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    y = op.A(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not op.linear and op.residual_scale == 2.0 and op.task_key == "deblur_nonlinear"
    side = -(-max(shape[1:]) // 128)
    assert op.codes.shape[0] == 2 and op.codes.shape[1] == SMALL.kernel_dim
    p = op.select([1]).params()
    assert p["kernel"] == "nonlinear" and p["kernel_model_sha256"] == "ab" * 32 and p["code_scale"] == 1.2
    assert p["code_shape"][0] == SMALL.kernel_dim and max(p["code_shape"][1:]) == side
    # not linear: A(2x) != 2 A(x) in general
    assert not torch.allclose(op.A(0.5 * x), 0.5 * y, atol=1e-4)
    # the code matters
    other = NonlinearBlur(small_net, shape, make_generators(7, 2))
    assert not torch.allclose(other.A(x), y)


def test_the_papers_code_shape_at_256(small_net):
    op = NonlinearBlur(small_net, (3, 256, 256), make_generators(0, 1))
    assert op.params()["code_shape"] == [SMALL.kernel_dim, 2, 2] and op.padded == (256, 256)
    assert abs(float(op.codes.std()) - 1.2) < 0.35  # randn * 1.2


def test_codes_per_image_independent_of_the_batch(small_net):
    shape = (1, 32, 32)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2))
    both = NonlinearBlur(small_net, shape, make_generators(5, 2))
    first = NonlinearBlur(small_net, shape, make_generators(5, 1, offset=0))
    second = NonlinearBlur(small_net, shape, make_generators(5, 1, offset=1))
    assert torch.equal(both.codes[1:], second.codes) and torch.equal(both.codes[:1], first.codes)
    y = both.A(x)
    assert torch.allclose(y[1:], second.A(x[1:]), atol=1e-6) and torch.allclose(y[:1], first.A(x[:1]), atol=1e-6)
    assert torch.allclose(both.select([1]).A(x[1:]), y[1:], atol=1e-6)


def test_directional_derivative_matches_finite_differences(small_net):
    net = KernelWizard(SMALL).double()
    net.load_state_dict({k: v.double() for k, v in small_net.state_dict().items()})
    net.requires_grad_(False)
    op = NonlinearBlur(net, (3, 16, 16), make_generators(3, 1))
    g = torch.Generator().manual_seed(4)
    x = (0.25 + 0.5 * torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)).requires_grad_(True)
    v = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    w = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    y = op.A(x)
    assert y.requires_grad and 0 < float(y.detach().min()) and float(y.detach().max()) < 1  # away from the clamp
    (grad,) = torch.autograd.grad((w * y).sum(), x)
    analytic = float((grad * v).sum())
    eps = 1e-6
    with torch.no_grad():
        numeric = float((w * (op.A(x + eps * v) - op.A(x - eps * v))).sum()) / (2 * eps)
    assert analytic != 0 and abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_channels_checked(small_net):
    with pytest.raises(ValueError, match="3-channel"):
        NonlinearBlur(small_net, (2, 32, 32), make_generators(0, 1))


# -- the command line ------------------------------------------------------------------------------------

def cli(*args):
    return runner.invoke(app, ["deblur", "--kernel", "nonlinear", "--device", "cpu", "-q", *map(str, args)])


@pytest.fixture
def small_arch(monkeypatch):
    monkeypatch.setattr(nb, "CHECKPOINT_CONFIG", SMALL)


@pytest.mark.parametrize("method,model,extra", [
    ("dps", "fmnist-ddpm-32", []),
    ("dps", "fmnist-ddpm-32", ["--diffstategrad"]),
    ("daps", "fmnist-ddpm-32", ["--set", "annealing_steps=2", "--set", "langevin_steps=2", "--set", "ode_steps=2"]),
    ("latent-dps", "fmnist-ldm-32", []),
    ("gml-dps", "fmnist-ldm-32", ["--diffstategrad"]),
    ("resample", "fmnist-ldm-32", ["--set", "pixel_iters=3", "--set", "latent_iters=3", "--set", "every=1"]),
])
def test_cli_end_to_end(tmp_path, ckpt, small_arch, method, model, extra):
    steps = [] if method == "daps" else ["--steps", "2"]
    out = tmp_path / "out"
    r = cli("--kernel-model", ckpt, "--method", method, "--model", model, *steps, *extra, FMNIST, "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["config"]["operator"]["task_options"]["kernel"] == "nonlinear"
    assert data["config"]["operator"]["task_options"]["kernel_model"] == str(ckpt)
    op = data["images"][0]["operator"]
    assert data["images"][0]["status"] == "ok"
    assert op["kernel_model_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert op["kernel_model"] == str(ckpt.resolve()) and op["task_key"] == "deblur_nonlinear"
    assert (out / "0000-ankle-boot.png").is_file()


@pytest.mark.parametrize("args,text", [
    ([], "needs --kernel-model"),
    (["--kernel-model", "nowhere.pth"], "--kernel-model nowhere.pth: no such file"),
    (["--kernel-model", "{ckpt}", "--method", "pigdm"], "needs a linear blur or a pseudo-inverse"),
    (["--kernel-model", "{ckpt}", "--method", "psld", "--model", "fmnist-ldm-32"], "needs a linear blur"),
])
def test_cli_usage_errors(tmp_path, ckpt, args, text):
    args = [a.format(ckpt=ckpt) for a in args]
    r = cli(*args, "--model", "fmnist-ddpm-32", FMNIST, "-o", tmp_path / "out") if "--model" not in args else \
        cli(*args, FMNIST, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split())
    r = runner.invoke(app, ["deblur", "--kernel", "gaussian", "--kernel-model", str(ckpt), "--model", "fmnist-ddpm-32",
                            str(FMNIST), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "applies to --kernel nonlinear only" in " ".join(r.output.split())


def test_cli_wrong_file_one_line(tmp_path, small_arch):
    bad = tmp_path / "GOPRO_wVAE.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    r = cli("--kernel-model", bad, "--model", "fmnist-ddpm-32", "--steps", "2", FMNIST, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "GOPRO_wVAE.pth" in lines[0] and "not BKSE's KernelWizard" in lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_bench_suite_runs_the_nonlinear_cells_given_the_network(tmp_path, ckpt, small_arch):
    """`restore bench --kernel-model`: the suite's non-linear blur cells run with it and are skipped, saying
    why, without it (the network cannot ship); the other cells are unaffected."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.png").write_bytes(FMNIST.read_bytes())
    suite = tmp_path / "nl.toml"
    suite.write_text(f'name = "nl"\nseeds = [0]\nbatch_size = 1\n[images]\npaths = ["{img}"]\n'
                     '[[grid]]\ntasks = [{ task = "deblur", kernel = "nonlinear" }, { task = "deblur", kernel = "gaussian", '
                     'kernel_size = 5 }]\nmethods = ["dps"]\nmodels = ["fmnist-ddpm-32"]\nsteps = 2\n')
    out = tmp_path / "out"
    r = runner.invoke(app, ["bench", str(suite), "-o", str(out), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    cells = list(json.loads((out / "results.json").read_text())["cells"].values())
    status = {c["config"]["task_opts"]["kernel"]: c for c in cells}
    assert status["gaussian"]["status"] == "ok" and status["nonlinear"]["status"] == "skipped"
    assert "--kernel-model" in status["nonlinear"]["reason"]
    r = runner.invoke(app, ["bench", str(suite), "-o", str(out), "--device", "cpu", "-q", "--kernel-model", str(ckpt)])
    assert r.exit_code == 0, r.output
    cells = list(json.loads((out / "results.json").read_text())["cells"].values())
    assert sorted(c["status"] for c in cells) == ["ok", "ok"]
    nl = next(c for c in cells if c["config"]["task_opts"]["kernel"] == "nonlinear")
    assert nl["config"]["task_opts"]["kernel_model"] == str(ckpt.resolve())
    r = runner.invoke(app, ["bench", str(suite), "-o", str(out), "--kernel-model", str(tmp_path / "none.pth")])
    assert r.exit_code == 2 and "no such file" in r.output
