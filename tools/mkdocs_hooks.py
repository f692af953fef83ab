"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks:``).

- The site's home page is README.md itself (no copy to keep in step): its links into ``docs/``
  are rewritten to the site's pages.
- The spec reference (``reference/spec.md``) is rendered from the validation code by
  ``tools/spec_reference.py`` at every build, so the site cannot show a stale schema.
- Pages are written to read well on GitHub too, so they link to files of the repository
  outside ``docs/`` (``../../graphs/quickstart.yaml``, ``benchmarks/results/speed.png``). On the
  site an image outside ``docs/`` is copied in under ``repo/`` and other such links become
  plain text (the site carries no copy of the repository).
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

README = ROOT / "README.md"
SPEC_PAGE = "reference/spec.md"
ASSETS = "repo"                          # where images from outside docs/ land on the site
IMAGE = (".png", ".svg", ".jpg", ".jpeg", ".gif")
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)


def _source(page_uri: str, docs_dir: Path) -> Path:
    """The file on disk a page's links are relative to (README.md for the home page)."""
    return README if page_uri == "index.md" else docs_dir / page_uri


def _outside_target(target: str, source: Path, docs_dir: Path) -> Path | None:
    """The repository file a relative link points at, when it lies outside ``docs/``."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.I):
        return None
    path = (source.parent / target.split("#", 1)[0]).resolve()
    try:
        path.relative_to(docs_dir.resolve())
        return None
    except ValueError:
        return path


def _markdown_files(docs_dir: Path) -> list[tuple[str, Path]]:
    pages = [("index.md", README)]
    pages += [(p.relative_to(docs_dir).as_posix(), p) for p in sorted(docs_dir.rglob("*.md"))]
    return pages


def _prose(text: str):
    """``text`` split into (is_code, chunk): fenced blocks are left alone."""
    pos = 0
    for m in FENCE.finditer(text):
        yield False, text[pos:m.start()]
        yield True, m.group(0)
        pos = m.end()
    yield False, text[pos:]


def _spec_reference():
    """``tools/spec_reference.py`` as a module."""
    name = "pcgraph_spec_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "spec_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"])
    if files.get_file_from_path("index.md") is None:
        files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    seen = set()
    for uri, source in _markdown_files(docs_dir):
        for is_code, chunk in _prose(source.read_text()):
            if is_code:
                continue
            for m in LINK.finditer(chunk):
                path = _outside_target(m.group(3), source, docs_dir)
                if path is None or path.suffix.lower() not in IMAGE or not path.is_file():
                    continue
                rel = f"{ASSETS}/{path.relative_to(ROOT).as_posix()}"
                if rel not in seen:
                    seen.add(rel)
                    files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files


def on_page_read_source(page, config) -> str | None:
    if page.file.src_uri == SPEC_PAGE:
        return _spec_reference().render()
    return None


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs_dir = Path(config["docs_dir"])
    source = _source(page.file.src_uri, docs_dir)
    page_dir = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        if page.file.src_uri == "index.md" and target.rstrip("/") == "docs":
            return text                   # the docs folder: the site itself
        if page.file.src_uri == "index.md" and target.startswith("docs/"):
            return f"{bang}[{text}]({target[len('docs/'):]})"
        path = _outside_target(target, source, docs_dir)
        if path is None:
            return m.group(0)
        if path == README.resolve():      # the home page
            anchor = target.split("#", 1)[1] if "#" in target else ""
            return f"{bang}[{text}]({posixpath.relpath('index.md', page_dir or '.')}{'#' + anchor if anchor else ''})"
        if bang and path.suffix.lower() in IMAGE:
            rel = f"{ASSETS}/{path.relative_to(ROOT).as_posix()}"
            return f"![{text}]({posixpath.relpath(rel, page_dir or '.')})"
        return text                       # a file of the repository: named, not linked

    return "".join(chunk if is_code else LINK.sub(fix, chunk) for is_code, chunk in _prose(markdown))


__all__ = ["on_files", "on_page_read_source", "on_page_markdown"]
