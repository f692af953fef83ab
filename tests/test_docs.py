"""The documentation site builds, and its pages link to what exists.

- ``mkdocs build --strict`` (mkdocs.yml: every warning is an error, broken links, missing
  anchors and pages left out of the navigation included) builds the site into a temporary
  folder; skipped, saying so, where MkDocs is not installed (``pip install -e ".[docs]"``).
- Every relative link and image of README.md and of the pages under docs/ points at a file or
  folder of the repository (as GitHub shows them, before the site rewrites any).
- The committed spec reference (docs/reference/spec.md) is what ``tools/spec_reference.py``
  renders from the validation code now; the gallery shows every picture in docs/.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text outside code (fenced blocks and code spans), less
    URLs and in-page anchors."""
    text = CODE.sub("", FENCE.sub("", text))
    return [t for t in LINK.findall(text) if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.I)]


def test_the_site_builds_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e \".[docs]\" to build the documentation site")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - t0
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    site = tmp_path / "site"
    home = (site / "index.html").read_text()
    assert "Two commands" in home and 'href="guides/specs/"' in home      # the README, its links rewritten
    spec = (site / "reference" / "spec" / "index.html").read_text()
    assert "distributed_timeout" in spec and "locally_connected2d" in spec
    api = (site / "reference" / "api" / "index.html").read_text()
    assert 'id="pcgraph.spec.schema.Spec"' in api and "add_edge" in api     # from the docstrings
    assert (site / "repo" / "benchmarks" / "results" / "speed.png").is_file()
    assert took < 120, f"the site took {took:.0f} s to build"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page.read_text()):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to what does not exist: {', '.join(broken)}"


def test_the_link_scan_sees_links_and_skips_code():
    text = "[a](x.md) ![b](img/y.png) `[c](z.md)` [d](https://e.org) [f](#g)\n```\n[h](i.md)\n```\n"
    assert relative_links(text) == ["x.md", "img/y.png"]


def test_the_spec_reference_is_current():
    tool = _load("spec_reference_for_tests", ROOT / "tools" / "spec_reference.py")
    committed = (DOCS / "reference" / "spec.md").read_text()
    assert committed == tool.render(), \
        "docs/reference/spec.md is out of date: run python tools/spec_reference.py (the site renders it anew)"


def test_the_gallery_shows_every_picture():
    gallery = (DOCS / "gallery.md").read_text()
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", gallery))
    missing = [p.name for p in sorted(DOCS.glob("*.png")) if p.name not in shown]
    assert not missing, f"docs/gallery.md does not show {', '.join(missing)}: add each with a caption"
