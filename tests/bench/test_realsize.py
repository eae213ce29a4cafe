"""The real-size tier: registered real models at their exact architectures (random weights), through the CLI.

CI runs the defaults' part (ffhq-256 with DPS and ldm-ffhq-256 with ReSample, with and without
DiffStateGrad, 2 steps at 256x256).  The whole matrix (every real model x every learned method, with and
without DiffStateGrad) is marked ``realsize`` and deselected by default: it takes hours on a CPU.  Run it
with ``pytest -m realsize`` or, with a table of seconds per step, NFE and peak memory,
``python benchmarks/tools/bench_models.py`` (results in docs/realsize.md).
"""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app
from restore_cli.models.config import load_registry
from restore_cli.models.testing import REAL_MODELS, real_size_args, real_size_cells, save_random_model

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Random-weight folders of the real models, built on first use."""
    root = tmp_path_factory.mktemp("realsize")
    reg, cache = load_registry(), {}

    def get(name):
        if name not in cache:
            cache[name] = save_random_model(reg.get(name), root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photo")
    for size in (256, 512):
        Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC).save(d / f"astro{size}.png")
    return d


def run_cell(built, photo, tmp_path, model, method, task, dsg):
    spec = load_registry().get(model)
    img = photo / f"astro{spec.resolution}.png"
    out = tmp_path / f"{model}-{method}-{task}-{int(dsg)}"
    r = runner.invoke(app, [task, str(img), "--model", str(built(model)), *real_size_args(method, task, dsg), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    im = m["images"][0]
    assert im["status"] == "ok", im
    assert im["working_size"] == [spec.resolution, spec.resolution]  # native resolution, no resize
    assert Image.open(out / f"{img.stem}.png").size == (spec.resolution, spec.resolution)
    assert (m["config"]["method"]["diffstategrad"] is not None) == dsg
    return m


@pytest.mark.parametrize("dsg", [False, True])
def test_ffhq_256_dps(built, photo, tmp_path, dsg):
    m = run_cell(built, photo, tmp_path, "ffhq-256", "dps", "inpaint", dsg)
    assert m["images"][0]["nfe"] == 2 and m["config"]["model"]["loaded_as"]["learned_variance"] is True


@pytest.mark.parametrize("dsg", [False, True])
def test_ldm_ffhq_256_resample(built, photo, tmp_path, dsg):
    m = run_cell(built, photo, tmp_path, "ldm-ffhq-256", "resample", "inpaint", dsg)
    assert m["config"]["model"]["loaded_as"]["space"] == "latent"


CI_CELLS = {("ffhq-256", "dps", "inpaint"), ("ldm-ffhq-256", "resample", "inpaint")}


@pytest.mark.realsize
@pytest.mark.parametrize("cell", [c for c in real_size_cells(REAL_MODELS) if c[:3] not in CI_CELLS],
                         ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{'dsg' if c[3] else 'plain'}")
def test_every_real_model_and_method(built, photo, tmp_path, cell):
    run_cell(built, photo, tmp_path, *cell)
