"""Issue 33: every operator parameter is an option, from one table (models/catalog.py, TASK_OPTIONS) that feeds
both `restore <task>` and a suite's task keys; an option for another kernel or mask is a usage error; the
defaults are unchanged; --noise-unit states the noise on [0, 1] or [-1, 1] images.

Each case goes through the command line (or, for the suites, through load_suite)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from restore_cli.cli.app import COMMON_NAMES, app
from restore_cli.models.catalog import TASK_DEFAULTS, TASK_OPTIONS, TASKS, task_options

runner = CliRunner()
FAST = ["--model", "gaussian-grey", "--method", "pseudo-inverse"]  # analytic: no network, milliseconds per image
ROOT = Path(__file__).resolve().parents[2]
# a task command's options that are not the operator's: the suites set them per grid or per suite
RUN_OPTIONS = {"restarts": "a grid's restarts", "restart_rule": "a suite's restart_rule"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def img(tmp_path) -> Path:
    p = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)).save(p)
    return p


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


# -- one table ---------------------------------------------------------------------------------------------

def _cli_options(task: str) -> set[str]:
    cmd = typer.main.get_command(app).commands[task]
    return {p.name for p in cmd.params} - set(COMMON_NAMES)


def test_every_suite_key_is_an_option_and_every_option_a_suite_key():
    from restore_cli.bench.suite import TASK_KEYS

    cli = {t: _cli_options(t) for t in TASKS}
    for key in TASK_KEYS - {"task"}:  # a suite key: an option of each task that takes it
        takers = [t for t in TASKS if key in cli[t]]
        assert takers, f"suite key {key} has no option"
        assert set(takers) == set(next(o.tasks for o in TASK_OPTIONS if o.name == key)), key
    for task, names in cli.items():  # an option: a suite key (or a suite's run setting)
        for name in names:
            assert name in TASK_KEYS or name in RUN_OPTIONS, f"restore {task} --{name.replace('_', '-')}: no suite key"


def test_a_suite_takes_every_option_of_the_table(tmp_path, img):
    from restore_cli.bench.suite import load_suite

    (tmp_path / "net.pth").write_bytes(b"")
    examples = {"str": None, "int": 5, "float": 0.5, "pair": [0.1, 0.2]}
    special = {"kernel_model": "net.pth", "then": "jpeg:10", "box_placement": "center", "mask": "box",
               "kernel": "gaussian", "border": "zeros", "filter": "avgpool", "rounding": "cubic", "quality": 20,
               "scale": 2, "kernel_size": 9, "oversample": 1.5, "hdr_scale": 1.5}
    kinds = {"box_placement": {"mask": "box"}, "missing": {"mask": "random"}, "coverage": {"mask": "freeform"},
             "kernel_sigma": {"kernel": "gaussian"}, "motion_intensity": {"kernel": "motion"},
             "kernel_model": {"kernel": "nonlinear"}}
    tasks = []
    for o in TASK_OPTIONS:
        value = special[o.name] if o.name in special else examples[o.type]
        tasks.append({"task": o.tasks[0], **kinds.get(o.name, {}), o.name: value})
    toml = "[images]\npaths = ['a.png']\n[[grid]]\nmethods = ['pseudo-inverse']\nmodels = ['gaussian-grey']\ntasks = [\n"
    toml += ",\n".join("{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in t.items()) + "}" for t in tasks) + "]\n"
    (tmp_path / "s.toml").write_text(toml)
    s = load_suite(tmp_path / "s.toml")
    got = {k for c in s.cells for k in c.task_opts}
    assert got == {o.name for o in TASK_OPTIONS}


@pytest.mark.parametrize("opts, msg", [
    ({"kernel": "motion", "kernel_sigma": 2.0}, 'kernel_sigma applies to kernel = "gaussian" only'),
    ({"mask": "box", "missing": 0.5}, "missing applies to mask"),
    ({"kernel": "gaussian", "kernel_sigma": -1}, "kernel_sigma must be > 0"),
])
def test_a_suite_refuses_an_option_for_another_kernel_or_mask(tmp_path, img, opts, msg):
    from restore_cli.bench.suite import SuiteError, load_suite

    task = "deblur" if "kernel" in opts else "inpaint"
    t = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in {"task": task, **opts}.items()) + "}"
    (tmp_path / "s.toml").write_text(f"[images]\npaths = ['a.png']\n[[grid]]\nmethods = ['dps']\nmodels = ['gaussian']\n"
                                     f"tasks = [{t}]\n")
    with pytest.raises(SuiteError, match=msg):
        load_suite(tmp_path / "s.toml")


def test_the_suites_cell_keys_are_unchanged():
    """The regression baseline's cells still find theirs (no key changed by the table)."""
    from restore_cli.bench.suite import load_suite

    s = load_suite(ROOT / "benchmarks" / "regression.toml")
    base = json.loads((ROOT / "benchmarks" / "regression.json").read_text())
    assert set(base["cells"]) <= {c.key for c in s.cells}


def test_each_option_says_its_default_unit_and_kernel_or_mask():
    cmd = typer.main.get_command(app)
    for o in TASK_OPTIONS:
        for task in o.tasks:
            text = next(p.help for p in cmd.commands[task].params if p.name == o.name)
            if o.default is not None:
                assert f"default {o.say_default()}" in text, (o.name, text)
                assert o.unit in text, (o.name, text)
            if o.applies is not None:
                assert o.applies[0] in text and all(k in text for k in o.applies[1] if k != "file"
                                                     ) or "not --" in text, (o.name, text)
    assert TASK_DEFAULTS == {"inpaint": {"mask": "box"}, "deblur": {"kernel": "gaussian", "kernel_size": 61, "border": "reflect"},
                             "superres": {"scale": 4, "filter": "bicubic"}, "phase-retrieval": {"oversample": 2.0},
                             "hdr": {"hdr_scale": 2.0}, "jpeg": {"quality": 10, "rounding": "ste"}}


def test_task_help_stays_short():
    for task in TASKS:
        r = runner.invoke(app, [task, "--help"], env={"COLUMNS": "80"})
        assert r.exit_code == 0 and len(r.output.splitlines()) <= 75, (task, len(r.output.splitlines()))
    assert [o.name for o in task_options("deblur")][:4] == ["kernel", "kernel_size", "kernel_sigma", "motion_intensity"]


# -- the options reach the operator --------------------------------------------------------------------------

def test_kernel_sigma_and_motion_intensity_reach_the_blur(img, tmp_path):
    d = tmp_path
    assert run("deblur", img, *FAST, "--kernel-size", "9", "-o", d / "g", "-q").exit_code == 0
    assert run("deblur", img, *FAST, "--kernel-size", "9", "--kernel-sigma", "3", "-o", d / "g3", "-q").exit_code == 0
    assert run("deblur", img, *FAST, "--kernel-size", "9", "--kernel-sigma", "1", "-o", d / "g1", "-q").exit_code == 0
    # the default is 3 px, as before: the same pixels; a sigma given is used and recorded
    assert sha(d / "g" / "a.measurement.png") == sha(d / "g3" / "a.measurement.png")
    assert sha(d / "g" / "a.measurement.png") != sha(d / "g1" / "a.measurement.png")
    assert "kernel_sigma" not in metrics(d / "g")["config"]["operator"]["task_options"]  # as runs always recorded
    assert metrics(d / "g1")["config"]["operator"]["task_options"]["kernel_sigma"] == 1.0
    for name, args in (("m", []), ("m5", ["--motion-intensity", "0.5"]), ("m1", ["--motion-intensity", "0.1"])):
        r = run("deblur", img, *FAST, "--kernel", "motion", "--kernel-size", "9", *args, "-o", d / name, "-q")
        assert r.exit_code == 0, r.output
    assert sha(d / "m" / "a.measurement.png") == sha(d / "m5" / "a.measurement.png")
    assert sha(d / "m" / "a.measurement.png") != sha(d / "m1" / "a.measurement.png")


def test_a_centred_box_is_the_same_box_for_every_seed(img, tmp_path):
    d = tmp_path
    for place in ("random", "center"):
        for seed in (0, 1):
            r = run("inpaint", img, *FAST, "--box-placement", place, "--noise-sigma", "0", "--seed", seed,
                    "-o", d / f"{place}{seed}", "-q")
            assert r.exit_code == 0, r.output
    assert sha(d / "center0" / "a.measurement.png") == sha(d / "center1" / "a.measurement.png")
    assert sha(d / "random0" / "a.measurement.png") != sha(d / "random1" / "a.measurement.png")
    m = np.asarray(Image.open(d / "center0" / "a.measurement.png").convert("L"), np.float64)
    x = np.asarray(Image.open(img).convert("L"), np.float64)
    hole = np.zeros((32, 32), bool)
    hole[8:24, 8:24] = True  # half the side, centred
    assert np.abs(m[~hole] - x[~hole]).max() <= 1 and np.abs(m[hole] - x[hole]).max() > 1


def test_the_random_masks_ratio_and_the_freeform_coverage_reach_the_mask(img, tmp_path):
    d = tmp_path
    assert run("inpaint", img, *FAST, "--mask", "random", "--missing", "0.3", "-o", d / "r", "-q").exit_code == 0
    assert abs(metrics(d / "r")["images"][0]["operator"]["missing_fraction"] - 0.3) < 0.06
    r = run("inpaint", img, *FAST, "--mask", "freeform", "--coverage", "0.1,0.15", "-o", d / "f", "-q")
    assert r.exit_code == 0, r.output
    m = metrics(d / "f")
    assert m["config"]["operator"]["task_options"]["coverage"] == [0.1, 0.15]
    assert 0.1 <= m["images"][0]["operator"]["missing_fraction"] <= 0.15


NOT_APPLICABLE = [
    (["deblur", "--kernel", "motion", "--kernel-sigma", "2"], "--kernel-sigma applies to --kernel gaussian only, not motion"),
    (["deblur", "--motion-intensity", "0.3"], "--motion-intensity applies to --kernel motion only, not gaussian"),
    (["deblur", "--kernel", "uniform", "--kernel-size", "9"], "--kernel-size applies to --kernel gaussian or motion only"),
    (["inpaint", "--missing", "0.5"], "--missing applies to --mask random only, not box"),
    (["inpaint", "--mask", "random", "--box-placement", "center"], "--box-placement applies to --mask box only"),
    (["inpaint", "--coverage", "0.1,0.2"], "--coverage applies to --mask freeform only"),
    (["inpaint", "--mask", "freeform", "--coverage", "0.3,0.2"], "--coverage must be LO,HI"),
    (["inpaint", "--mask", "random", "--missing", "1"], "--missing must be < 1"),
    (["inpaint", "--box-placement", "left"], "--box-placement must be one of random, center"),
    (["deblur", "--kernel-sigma", "0"], "--kernel-sigma must be > 0"),
    (["deblur", "--kernel", "motion", "--motion-intensity", "2"], "--motion-intensity must be <= 1"),
    (["inpaint", "--noise-unit", "255"], "--noise-unit must be one of pm1, 01"),
    (["inpaint", "--noise-unit", "01", "--noise-sigma", "1.5"], "--noise-sigma must be <= 1"),
]


@pytest.mark.parametrize("args, msg", NOT_APPLICABLE, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_an_option_for_another_kernel_or_mask_is_a_usage_error(img, tmp_path, args, msg):
    r = run(args[0], img, *FAST, *args[1:], "-o", tmp_path / "o")
    assert r.exit_code == 2, r.output
    assert len([ln for ln in r.output.strip().splitlines() if ln.strip()]) == 1, r.output
    assert msg in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()


def test_those_usage_errors_come_before_torch(img, tmp_path):
    cases = [[a[0], str(img), *FAST, *a[1:], "-o", str(tmp_path / "o")] for a, _ in NOT_APPLICABLE]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom restore_cli.cli.app import app\n"
            f"for args in {cases!r}:\n    r = CliRunner().invoke(app, args)\n    assert r.exit_code == 2, (args, r.output)\n"
            "assert 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr


# -- the noise's unit ---------------------------------------------------------------------------------------

def test_noise_unit_01_is_the_same_noise_recorded_in_both_units(img, tmp_path):
    d = tmp_path
    assert run("inpaint", img, *FAST, "--noise-sigma", "0.02", "-o", d / "pm1", "-q").exit_code == 0
    assert run("inpaint", img, *FAST, "--noise-sigma", "0.01", "--noise-unit", "01", "-o", d / "01", "-q").exit_code == 0
    assert sha(d / "pm1" / "a.measurement.png") == sha(d / "01" / "a.measurement.png")
    op = metrics(d / "01")["config"]["operator"]
    assert op["noise_sigma"] == pytest.approx(0.02) and op["sigma_y_01"] == pytest.approx(0.01)
    assert op["noise_as_given"] == {"noise_sigma": 0.01, "noise_unit": "01"}
    assert "noise_as_given" not in metrics(d / "pm1")["config"]["operator"]  # no --noise-unit: as runs recorded
    # the same run: a rerun in the other unit resumes it (nothing to redo) instead of refusing
    r = run("inpaint", img, *FAST, "--noise-sigma", "0.02", "--noise-unit", "pm1", "-o", d / "01")
    assert r.exit_code == 0, r.output
    # phase retrieval's papers' unit is [0, 1]: --noise-unit 01 leaves the value as it is, pm1 halves it
    from restore_cli.runs.checks import RunConfig, check

    for unit, papers in (("01", 0.05), ("pm1", 0.025)):
        cfg = RunConfig(task="phase-retrieval", inputs=[img], model="ffhq-256", method="dps", noise_sigma=0.05,
                        noise_unit=unit, output=d / "pr")
        check(cfg)
        check(cfg)  # (the CLI checks twice: converted once)
        assert cfg.noise_sigma == pytest.approx(papers) and cfg.noise_given == (0.05, unit)


def test_noise_sigma_help_says_both_conventions_and_their_sources():
    cmd = typer.main.get_command(app).commands["deblur"]
    text = " ".join(next(p.help for p in cmd.params if p.name == "noise_sigma").split())
    assert "[-1, 1]" in text and "[0, 1]" in text and "000:252" in text and "papers' codes" in text
    text = next(p.help for p in cmd.params if p.name == "noise_unit")
    assert "pm1" in text and "01" in text
