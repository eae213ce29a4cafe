"""Composed measurements (ops/composed.py; PiGDM Sec. 5.3) and `--then jpeg:Q` on the command line."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.ops import JPEG, Blur, Composed, Inpainting, LinearComposed, SuperResolution, box_mask, gaussian_kernel
from restore_cli.rng import make_generators

runner = CliRunner()


def _dot(a, b):
    return (a * b).flatten(1).sum(1)


def test_linear_composition_is_linear_with_the_adjoint_in_reverse():
    """<A x, y> = <x, A^T y> for blur then 2x super-resolution, and A^T = first^T o second^T."""
    g = torch.Generator().manual_seed(0)
    blur = Blur(gaussian_kernel(5, 1.0), (3, 16, 16), 0.0).double()
    sr = SuperResolution((3, 16, 16), 2, sigma_y=0.0).double()
    op = Composed(blur, sr, 0.02)
    assert isinstance(op, LinearComposed) and op.linear and op.sigma_y == 0.02
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=g)
    y = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g)
    assert torch.allclose(op.A(x), sr.A(blur.A(x)))
    assert torch.allclose(_dot(op.A(x), y), _dot(x, op.A_adjoint(y)), rtol=1e-10)
    # the adjoint agrees with the base class's autograd vector-Jacobian product
    from restore_cli.ops.base import LinearOperator

    assert torch.allclose(op.A_adjoint(y), LinearOperator.A_adjoint(op, y))
    # the exact pseudo-inverse (CG) reproduces the measurement: A A^+ y = y (A has independent rows)
    assert torch.allclose(op.A(op.A_dagger(y)), y, atol=1e-6)


def test_noise_is_added_once_at_the_end():
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sr = SuperResolution((3, 16, 16), 2, sigma_y=0.3)  # the parts' noise is never drawn
    op = Composed(sr, JPEG((3, 8, 8), 90, sigma_y=0.4), 0.05)
    r = op(x, make_generators(3, 64)) - op.A(x)
    assert abs(float(r.std()) - 0.05) < 0.003
    assert Composed(sr, JPEG((3, 8, 8), 90, sigma_y=0.4)).sigma_y == 0.4  # default: the last operator's (DeepInverse)


def test_sr_then_jpeg_pseudo_inverse_reproduces_the_measurement():
    """PiGDM Sec. 5.3: h^+ = S^+ o J^+ with J^+ = identity (decoding); h(h^+(y)) = y on a measurement y = J(S x)."""
    x = 0.25 + 0.5 * torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sr = SuperResolution((3, 64, 64), 4, sigma_y=0.0).double()
    op = Composed(sr, JPEG((3, 16, 16), 10).double(), 0.0)
    assert not op.linear and op.has_h_dagger and op.task_key == "superres" and op.residual_scale == 2.0
    y = op.A(x)
    hy = op.h_dagger(y)
    assert hy.shape == x.shape and torch.allclose(hy, sr.A_dagger(y))
    assert float((op.A(hy) - y).abs().max()) < 1e-9


def test_params_select_and_visualize():
    gens = make_generators(0, 2)
    inp = Inpainting(box_mask(16, 16, gens), 3, 0.0, kind="box")
    t = torch.stack([JPEG((3, 16, 16), 10).tables[0], JPEG((3, 16, 16), 50).tables[0]])
    op = Composed(inp, JPEG((3, 16, 16), tables=t), 0.01)
    p = op.params()
    assert p["name"] == "composed" and p["task_key"] == "inpaint_box"
    assert p["first"]["name"] == "inpaint" and p["second"]["name"] == "jpeg" and p["sigma_y"] == 0.01
    one = op.select([1])
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one.A(x[1:]), op.A(x)[1:])
    assert one.params()["second"]["tables"][0] == t[1, 0].int().flatten().tolist()
    assert torch.equal(op.visualize(op.A(x)), op.A(x).clamp(0, 1))
    with pytest.raises(ValueError, match="cannot compose"):
        Composed(SuperResolution((3, 16, 16), 2), JPEG((3, 16, 16), 10))


def test_registry_builds_the_composition():
    from restore_cli.models.registry import build_operator

    op = build_operator("superres", {"scale": 2, "then": "jpeg:20"}, (1, 16, 16), make_generators(0, 1), 0.02)
    assert isinstance(op, Composed) and not op.linear
    assert op.first.factor == 2 and op.second.quality == 20 and op.second.in_shape == (1, 8, 8)
    assert op.sigma_y == pytest.approx(0.01) and op.first.sigma_y == 0 and op.second.sigma_y == 0


# -- the command line ------------------------------------------------------------------------------

def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("composed_in")
    Image.fromarray(data.camera()[100:132, 200:232]).save(d / "cam.png")  # 32x32, the bundled models' size
    return d


@pytest.mark.parametrize("method", ["pigdm", "dps"])
def test_cli_superres_then_jpeg(grey, tmp_path, method):
    out = tmp_path / "o"
    args = ["superres", grey / "cam.png", "--scale", "2", "--then", "jpeg:10", "--model", "fmnist-ddpm-32",
            "--method", method, "--steps", "2", "-o", out, "-q"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["operator"]["task_options"] == {"scale": 2, "filter": "bicubic", "then": "jpeg:10"}
    rec = m["images"][0]
    assert rec["status"] == "ok" and rec["operator"]["name"] == "composed"
    assert rec["operator"]["first"]["factor"] == 2 and rec["operator"]["second"]["quality"] == 10
    assert Image.open(out / "cam.measurement.png").size == (16, 16)
    # a rerun with the same options resumes (nothing to do); with another quality it is refused
    r = run(*args)
    assert r.exit_code == 0, r.output
    r = run(*[a if a != "jpeg:10" else "jpeg:20" for a in args])
    assert r.exit_code == 2 and "then" in r.output and "jpeg:10" in r.output


def test_cli_then_usage_errors(grey, tmp_path):
    for args, msg in [(["superres", "--then", "jpeg"], "--then expects jpeg:Q"),
                      (["superres", "--then", "jpeg:1"], "--then expects jpeg:Q"),
                      (["superres", "--then", "png:10"], "--then expects jpeg:Q"),
                      (["superres", "--then", "jpeg:10", "--method", "psld"], "needs a linear operator"),
                      (["inpaint", "--then", "jpeg:10", "--method", "posterior-mean", "--model", "gaussian"],
                       "needs a linear operator"),
                      (["inpaint", "--then", "jpeg:10", "--measured", "--mask", "box"], "--then with --measured")]:
        r = run(args[0], grey / "cam.png", *args[1:], "-o", tmp_path / "x")
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_a_composed_operator_copies_and_pickles():
    import copy
    import pickle

    gens = make_generators(0, 1)
    for first in (SuperResolution((3, 16, 16), 2, sigma_y=0.0), Inpainting(box_mask(16, 16, gens), 3, 0.0)):
        op = Composed(first, JPEG((3, 8, 8) if first.name == "superres" else (3, 16, 16), 10))
        x = torch.rand(1, 3, 16, 16)
        for clone in (copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
            assert type(clone) is type(op) and torch.equal(clone.A(x), op.A(x))


def test_out_shape_is_the_measurements_shape():
    """Every operator's out_shape (what a composition checks, without running the operator) equals A's."""
    from restore_cli.ops import HDR, PhaseRetrieval

    gens = make_generators(0, 1)
    shape = (3, 16, 24)
    for op in (SuperResolution(shape, 4), SuperResolution(shape, 2, "avgpool"), Inpainting(box_mask(16, 24, gens), 3),
               Blur(gaussian_kernel(5, 1.0), shape), HDR(shape), PhaseRetrieval(shape), JPEG(shape, 10),
               Composed(SuperResolution(shape, 2, sigma_y=0.0), JPEG((3, 8, 12), 10))):
        assert tuple(op.A(torch.rand(1, *shape)).shape[1:]) == tuple(op.out_shape), op.name


def test_then_is_recorded_as_parsed(tmp_path):
    """`--then JPEG:010` is `jpeg:10`: a rerun spelled either way resumes."""
    src = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (120, 80, 40)).save(src)
    out = tmp_path / "out"
    args = ["superres", str(src), "--scale", "2", "--model", "gaussian", "--method", "pseudo-inverse", "-o", str(out)]
    assert CliRunner().invoke(app, [*args, "--then", "JPEG:010"]).exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["operator"]["task_options"]["then"] == "jpeg:10"
    r = CliRunner().invoke(app, [*args, "--then", "jpeg:10"])
    assert r.exit_code == 0, r.output
