"""What the user sees in a terminal: one quick line when the Hub cannot be reached, listings that never cut
the names a user types, and help text without flag metavars or lost brackets."""

import io
import re
import socket
import time

import pytest
from PIL import Image
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from restore_cli.cli import console as cli
from restore_cli.cli.app import app

runner = CliRunner()


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    p = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(p)  # 128x128 RGB
    return p


# -- 14: offline, without --model: one line, in seconds ---------------------------------------------------

@pytest.fixture(params=["no-answer", "refused"])
def dead_endpoint(request):
    """A local server that accepts connections but never answers, or a port that refuses them."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if request.param == "no-answer":
        s.listen(16)  # the kernel completes the handshake; nobody ever reads or replies
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def online_empty_cache(monkeypatch, tmp_path, dead_endpoint):
    """HF_HUB_OFFLINE off, the Hub at ``dead_endpoint``, and nothing in any cache."""
    import diffusers  # noqa: F401 - imported before any clock starts: the time measured is the network's
    import huggingface_hub.constants as c
    import transformers  # noqa: F401

    import restore_cli.runs.execute  # noqa: F401

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", dead_endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", dead_endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path / "restore-cache"))
    return dead_endpoint


def test_unreachable_hub_without_model_is_one_quick_line(online_empty_cache, photo, tmp_path):
    t0 = time.monotonic()
    r = runner.invoke(app, ["inpaint", "--method", "dps", str(photo), "-o", str(tmp_path / "out")])
    took = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    # in a log (not a terminal) the model's loading is said first: a download can take minutes
    assert r.stderr.startswith("loading model ffhq-256\n"), r.stderr
    lines = r.stderr.strip().splitlines()[1:]
    assert len(lines) == 1, r.stderr
    assert "ffhq-256" in lines[0] and online_empty_cache in lines[0] and "cannot be reached" in lines[0]
    assert "restore models download ffhq-256" in lines[0] and "--model DIR" in lines[0]
    assert "Traceback" not in r.output and "Retry" not in r.output
    assert took < 10, took


def test_unreachable_url_source_is_one_quick_line(online_empty_cache, tmp_path):
    mf = tmp_path / "models.toml"
    mf.write_text(f'[models.zoo]\nkind = "latent"\nsource = "url"\nformat = "ldm"\nurl = "{online_empty_cache}/ffhq.zip"\n'
                  'filename = "model.ckpt"\narchitecture = "ldm-ffhq-256"\nresolution = 256\n')
    t0 = time.monotonic()
    r = runner.invoke(app, ["models", "download", "zoo", "--models-file", str(mf)])
    took = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'zoo'" in lines[0] and online_empty_cache in lines[0], r.stderr
    assert took < 10, took


# -- 15: listings never cut the names ---------------------------------------------------------------------

def names():
    from restore_cli.models.config import load_registry
    from restore_cli.models.catalog import METHODS

    return {"models": list(load_registry(None).models), "methods": list(METHODS)}


@pytest.mark.parametrize("what", ["models", "methods"])
def test_listing_in_a_pipe_is_tab_separated_rows(what):
    r = runner.invoke(app, ["models", "list"] if what == "models" else ["methods"])
    assert r.exit_code == 0, r.output
    rows = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert len({len(row) for row in rows}) == 1 and len(rows[0]) > 3  # a header and rows, same fields
    assert [row[0] for row in rows[1:]] == names()[what]
    if what == "models":
        assert rows[0][:4] == ["name", "kind", "resolution", "channels"]
        assert {row[0]: row[2:4] for row in rows[1:]}["ffhq-256"] == ["256", "3"]


@pytest.mark.parametrize("width", [80, 120, 200])
@pytest.mark.parametrize("what", ["models", "methods"])
def test_listing_on_a_terminal_never_cuts_a_name(what, width, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, force_terminal=True, width=width, color_system=None))
    r = runner.invoke(app, ["models", "list"] if what == "models" else ["methods"])
    assert r.exit_code == 0, r.output
    lines = buf.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= width
    first_words = [ln.split()[0] for ln in lines if ln.strip()]
    for name in names()[what]:
        assert name in first_words, (name, buf.getvalue())
    assert "…" not in buf.getvalue()


# -- 16: help ---------------------------------------------------------------------------------------------

HELPS = [["--help"], ["inpaint", "--help"], ["bench", "--help"], ["models", "list", "--help"], ["hdr", "--help"]]


@pytest.mark.parametrize("args", HELPS, ids=lambda a: " ".join(a))
def test_help_shows_flags_as_flags(args):
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "BOOLEAN" not in r.output
    if "inpaint" in args:
        for flag in ("--measured", "--compare", "--overwrite", "--low-memory", "--diffstategrad", "--quiet", "--help"):
            line = next(ln for ln in r.output.splitlines() if flag in ln)
            assert "<" not in line.split(flag)[1].split()[0], line  # no value type after the flag


def test_help_keeps_square_brackets_and_lists_every_method():
    from restore_cli.models.catalog import METHODS

    r = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert "'inpaint[mask=box]'" in r.output and "[images]" in r.output
    r = runner.invoke(app, ["inpaint", "--help"], env={"COLUMNS": "400"})
    method_line = next(ln for ln in r.output.splitlines() if "│ --method" in ln)
    assert "restore methods" in method_line, method_line  # the list is there, one method a row
    assert "[-1, 1]" in r.output
    r = runner.invoke(app, ["methods"])
    assert all(m in r.output for m in METHODS)


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_no_help_text_loses_text_to_rich_markup():
    """Every help text, rendered as Rich markup (as --help does), keeps all its square brackets."""
    import typer

    def lost(text: str) -> bool:
        text = re.sub(r"\[/?bold\]", "", text)  # the only markup meant
        return Text.from_markup(text).plain.count("[") != text.count("[")

    for path, cmd in _commands(typer.main.get_command(app)):
        assert not lost(cmd.help or ""), path
        for p in cmd.params:
            assert not lost(getattr(p, "help", None) or ""), (path, p.name, p.help)


def test_the_help_example_is_fast(photo, tmp_path):
    import typer

    helptext = typer.main.get_command(app).help
    example = re.search(r"\[bold\](restore [^[]+)\[/bold\]", helptext).group(1).split()
    assert example[-1] == "photo.png" and "--model" in example
    t0 = time.monotonic()
    r = runner.invoke(app, [*example[1:-1], str(photo), "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "photo.png").exists()
    assert time.monotonic() - t0 < 60
