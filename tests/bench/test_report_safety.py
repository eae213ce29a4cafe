"""`restore bench report` never writes over what a user had, finds merged shards' images wherever they ran,
and says in one line (exit 2) what it cannot read or write; a suite's text pair is the numbers it means."""

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from restore_cli.cli.app import app, main

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """One tiny suite run as two shards in two folders (inpainting in one, super-resolution in the other)."""
    d = tmp_path_factory.mktemp("shards")
    suite = d / "suite.toml"
    suite.write_text(f"""
name = "shards"
seeds = [0]
batch_size = 4

[images]
paths = ["{ROOT / 'examples' / 'fmnist'}"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "box" }}, {{ task = "superres", scale = 2 }}]
methods = ["pseudo-inverse", "posterior-mean"]
models = ["gaussian-fmnist"]
""")
    for name, only in (("a", "inpaint"), ("b", "superres")):
        r = runner.invoke(app, ["bench", str(suite), "-o", str(d / name), "--device", "cpu", "--only", only, "-q"])
        assert r.exit_code == 0, r.output
    return d


def _report(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["restore", "bench", "report", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capsys.readouterr()
    return e.value.code, cap.out + cap.err


def test_merged_shards_find_their_images_from_any_folder(shards, monkeypatch, capsys):
    out = shards / "merged"
    code, text = _report(monkeypatch, capsys, shards / "a" / "results.json", shards / "b" / "results.json", "-o", out)
    assert code == 0, text
    data = json.loads((out / "results.json").read_text())
    assert data["merged_from"] and len(data["cells"]) == 4
    paths = [Path(s[k]) for c in data["cells"].values() for s in c.get("samples", []) for k in ("restored", "truth")]
    assert paths and all(p.is_absolute() and p.exists() for p in paths)
    assert "image missing" not in text and (out / "figures").is_dir()
    # a second merge into the same folder replaces its own earlier merge
    code, text = _report(monkeypatch, capsys, shards / "a" / "results.json", shards / "b" / "results.json", "-o", out)
    assert code == 0, text


def test_a_merge_never_writes_over_a_results_file_it_did_not_write(shards, monkeypatch, capsys, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    theirs = target / "results.json"
    theirs.write_text((shards / "a" / "results.json").read_text())
    before = _digest(theirs)
    code, text = _report(monkeypatch, capsys, shards / "a" / "results.json", shards / "b" / "results.json", "-o", target)
    assert code == 2 and "nothing is overwritten" in text and len(text.strip().splitlines()) == 1, text
    assert _digest(theirs) == before


def test_name_results_is_refused(shards, monkeypatch, capsys):
    md = shards / "a" / "results.md"
    before = _digest(md)
    code, text = _report(monkeypatch, capsys, shards / "a" / "results.json", "--name", "results")
    assert code == 2 and "results.md" in text and _digest(md) == before


def test_a_foreign_or_unwritable_report_is_one_line(shards, monkeypatch, capsys, tmp_path):
    data = json.loads((shards / "a" / "results.json").read_text())
    for c in data["cells"].values():
        del c["config"]["guidance"]
    weird = tmp_path / "weird.json"
    weird.write_text(json.dumps(data))
    code, text = _report(monkeypatch, capsys, weird, "-o", tmp_path / "w")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "missing entry 'guidance'" in text, text
    code, text = _report(monkeypatch, capsys, shards / "a" / "results.json", "-o", "/proc/restore-report")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "cannot write" in text, text


def test_a_suites_coverage_given_as_text_runs(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(f"""
name = "cov"
seeds = [0]

[images]
paths = ["{ROOT / 'examples' / 'fmnist' / '0000-ankle-boot.png'}"]

[[grid]]
tasks = [{{ task = "inpaint", mask = "freeform", coverage = "0.4,0.5" }}]
methods = ["posterior-mean"]
models = ["gaussian-fmnist"]
""")
    r = runner.invoke(app, ["bench", str(suite), "-o", str(tmp_path / "o"), "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    (cell,) = json.loads((tmp_path / "o" / "results.json").read_text())["cells"].values()
    assert cell["status"] == "ok" and cell["config"]["task_opts"]["coverage"] == [0.4, 0.5]
