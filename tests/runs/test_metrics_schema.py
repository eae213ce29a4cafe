"""metrics.json's schema describes every field a run writes: image records may carry no field the schema
does not describe, so a new field without its description fails these runs (and every other test that
validates a run's metrics.json)."""

import copy
import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import app

SCHEMA = json.loads(resources.files("restore_cli").joinpath("data/metrics.schema.json").read_text())
IMAGE = SCHEMA["properties"]["images"]["items"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(d / "g.png")  # grey into a colour model
    return d


def validated(out: Path) -> dict:
    data = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(data, SCHEMA)
    for rec in data["images"]:
        assert set(rec) <= set(IMAGE["properties"]), set(rec) - set(IMAGE["properties"])
    return data


@pytest.mark.parametrize("samples", [1, 2])
def test_restarts_samples_and_conversion_are_described(images, tmp_path, samples):
    out = tmp_path / "o"
    r = run("phase-retrieval", images / "a.png", images / "g.png", "--model", "gaussian", "--method", "dps",
            "--steps", 4, "--restarts", 2, "--samples", samples, "-o", out)
    assert r.exit_code == 0, r.output
    recs = validated(out)["images"]
    for rec in recs:
        assert {"measurement", "working_size", "input_size", "batch_images", "operator", "restarts"} <= set(rec)
        chosen = rec["restarts"]["chosen_run"]
        assert (len(chosen) == samples) if samples > 1 else isinstance(chosen, int)
    assert [rec.get("converted") for rec in recs] == [None, "grey to colour"]
    # a rerun skips both: the skipped records keep their fields and still validate
    r = run("phase-retrieval", images / "a.png", images / "g.png", "--model", "gaussian", "--method", "dps",
            "--steps", 4, "--restarts", 2, "--samples", samples, "-o", out)
    assert r.exit_code == 0 and [x["status"] for x in validated(out)["images"]] == ["skipped"] * 2


def test_posterior_mean_solve_is_described(images, tmp_path):
    r = run("deblur", images / "a.png", "--model", "gaussian", "--method", "posterior-mean", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert validated(tmp_path / "o")["images"][0]["cg"]["converged"] is True


def test_an_undescribed_field_fails_validation(images, tmp_path):
    r = run("inpaint", images / "a.png", "--model", "gaussian", "--method", "pseudo-inverse", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    data = validated(tmp_path / "o")
    bad = copy.deepcopy(data)
    bad["images"][0]["new_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    bad = copy.deepcopy(data)
    del bad["images"][0]["operator"]  # an ok image says which operator made its measurement
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_the_code_revision_is_recorded(tmp_path, images):
    """metrics.json's environment names the git commit restore ran from (and whether its files differed
    from it); outside a git work tree, None (an installed release: its version says it)."""
    import shutil
    import subprocess

    from restore_cli.runs.report import git_revision

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("x = 1\n")
    (repo / "venv" / "site" / "pkg").mkdir(parents=True)  # an installed copy inside the repository (ignored)
    (repo / "venv" / "site" / "pkg" / "__init__.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("venv/\n")

    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_revision(repo / "pkg") == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (repo / "pkg" / "__init__.py").write_text("x = 2\n")
    assert git_revision(repo / "pkg")["dirty"] is True
    assert git_revision(repo / "venv" / "site" / "pkg") is None  # not the repository's files
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "__init__.py").write_text("")
    assert git_revision(tmp_path / "loose") is None
    r = run("inpaint", images / "a.png", "--model", "gaussian", "--method", "pseudo-inverse", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    src = validated(tmp_path / "o")["environment"]["restore_source"]
    import restore_cli

    installed = Path(restore_cli.__file__).resolve().parent
    here = git_revision(installed)
    assert src == here  # a clone installed with -e: its commit; an installed release: None
    if installed.is_relative_to(Path(__file__).resolve().parents[2]):  # this checkout, installed with -e
        assert here is not None and len(here["commit"]) == 40
