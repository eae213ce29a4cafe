"""The documentation holds together: a short README, every link and anchor resolves, the site's nav
lists every page, and (where mkdocs is installed) the site builds without a warning."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (which mkdocs' agrees with on the plain headings these pages use)."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.M)}


def test_slug_matches_github():
    assert slug("Posterior samples and uncertainty") == "posterior-samples-and-uncertainty"
    assert slug("The papers' models") == "the-papers-models"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_readme_is_short_and_points_at_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "the README is the front page; the manual lives in docs/"
    linked = set(LINK.findall(readme))
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md" and f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_site_nav_lists_every_page():
    nav = re.findall(r"^\s+- [^:]+:\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert sorted(nav) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_site_builds_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "usage" / "index.html").exists()


def test_readme_task_method_table_is_the_catalog():
    """README's "Tasks and methods" table says what `restore methods` knows: a method or task added or
    changed without the README fails here."""
    from restore_cli.models.catalog import ALL_TASKS, METHODS

    text = (ROOT / "README.md").read_text()
    section = text.split("## Tasks and methods", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    got = {}
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        got[cells[0].strip("`")] = (cells[1], tuple(t for t, c in zip(ALL_TASKS, cells[2:-1]) if c == "✓"),
                                    cells[-1] == "✓")
    want = {m.name: ("/".join(m.spaces), tuple(t for t in ALL_TASKS if t in m.tasks), m.gradient_guided)
            for m in METHODS.values()}
    assert got == want


def test_methods_page_shows_the_defaults():
    """docs/methods.md lists every method with its hyperparameters' defaults as the solver classes hold them."""
    from restore_cli.models.catalog import METHODS

    text = (ROOT / "docs" / "methods.md").read_text()
    for m in METHODS.values():
        section = text.split(f"## `{m.name}`\n", 1)[1].split("\n## ", 1)[0]
        rows = dict(re.findall(r"^\| `(\w+)`(?: \(\*steps\*\))? \| `(.+)` \|$", section, flags=re.M))
        assert rows == {k: repr(v) for k, v in m.cls.defaults.items()}, m.name
