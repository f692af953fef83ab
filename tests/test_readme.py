"""The README and the documentation pages say what happens.

The pages are README.md and every Markdown file under docs/ (the guides the README's sections
moved to); what is checked here holds wherever a block stands.

- Every ```bash / ```console block preceded by a ``<!-- cheap -->`` line (seconds, no network,
  no GPU, no dataset files) runs and exits 0, in a temporary folder that sees the repository's
  ``graphs/`` and ``examples/`` (so ``runs/``, ``docs/`` ... land there, never in the tree).
- Every ``figure: NAME`` block is one that ``tools/readme_figures.py`` knows (which reruns and
  rewrites them), each figure stands in exactly one page, and ``--list``, ``--check`` and the
  rewriting work.
- The CLI synopsis (docs/guides/cli.md) names every verb and only flags that verb takes; every
  verb takes ``--threads``; a missing CIFAR-10 is one line that says what to do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_PAGE = ROOT / "docs" / "guides" / "cli.md"
TOOL = ROOT / "tools" / "readme_figures.py"
CHEAP = re.compile(r"^<!-- cheap -->[ \t]*\n```(bash|console)[ \t]*\n(.*?)^```", re.S | re.M)


def _tool():
    """``tools/readme_figures.py`` as a module (a fresh one: tests may patch its figures)."""
    spec = importlib.util.spec_from_file_location("readme_figures", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_figures"] = mod          # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def pages() -> list[Path]:
    """README.md and the documentation pages (docs/**/*.md)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def cheap_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for page in pages() for m in CHEAP.finditer(page.read_text())]


def script_of(kind: str, body: str) -> str:
    """A bash block as it is; a console block's ``$ `` lines (and their ``\\`` continuations)."""
    if kind == "bash":
        return body
    lines, cont = [], False
    for line in body.splitlines():
        if line.startswith("$ ") or cont:
            lines.append(line[2:] if line.startswith("$ ") and not cont else line)
            cont = line.rstrip().endswith("\\")
    return "\n".join(lines) + "\n"


def _block_id(block: tuple[str, str]) -> str:
    first = next(ln for ln in script_of(*block).splitlines() if ln.strip() and not ln.startswith("#"))
    return re.sub(r"\s+", " ", first)[:60]


def test_the_readme_marks_cheap_blocks_and_every_marker_is_on_a_block():
    for page in pages():
        text = page.read_text()
        assert text.count("<!-- cheap -->") == len(CHEAP.findall(text)), \
            f"{page.relative_to(ROOT)}: a <!-- cheap --> marker must stand on its own line right above a " \
            f"```bash or ```console block"
    assert len(cheap_blocks()) >= 3
    assert CHEAP.search(README.read_text()), "the README's example is a cheap block"


@pytest.mark.parametrize("block", cheap_blocks(), ids=_block_id)
def test_cheap_readme_block_runs(block, tmp_path):
    for name in ("graphs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PCGRAPH_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script_of(*block)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"


# ---- the figures -----------------------------------------------------------------------------

def test_every_figure_block_is_known_to_the_script():
    tool, names = _tool(), []
    assert tool.pages() == pages()
    for page in pages():
        text = page.read_text()
        found = tool.markers(text)
        assert text.count("<!-- figure: ") == text.count("<!-- /figure -->") == len(found), \
            f"{page.relative_to(ROOT)}: unbalanced markers"
        names += found
    assert tool.markers(README.read_text()), "the README has no figure blocks"
    assert not [n for n in names if n not in tool.BY_NAME], "orphan figure markers"
    assert len(set(names)) == len(names), "a figure appears twice"
    assert sorted(names) == sorted(tool.BY_NAME), "a figure of the script has no block in the README"


def test_figures_list_is_cheap_and_names_every_figure():
    res = subprocess.run([sys.executable, str(TOOL), "--list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    tool = _tool()
    for f in tool.FIGURES:
        assert re.search(rf"^{re.escape(f.name)}  \[[^\]]+\]", res.stdout, re.M), f.name
    assert "benchmarks/run_all.py" in res.stdout          # the timing tables: listed, not rerun
    assert "(no block in README.md or docs/)" not in res.stdout
    assert "exactness  [" in res.stdout and "(in docs/guides/exactness.md)" in res.stdout


def test_rewrite_keeps_inline_and_block_figures_in_place():
    tool = _tool()
    text = ("a <!-- figure: a -->1.0<!-- /figure --> b\n\n<!-- figure: t -->\n| old |\n<!-- /figure -->\n"
            "c <!-- figure: z -->keep<!-- /figure -->\n")
    new = tool.rewrite(text, {"a": "2.0", "t": "| new |\n|---|"})
    assert new == ("a <!-- figure: a -->2.0<!-- /figure --> b\n\n<!-- figure: t -->\n| new |\n|---|\n"
                   "<!-- /figure -->\nc <!-- figure: z -->keep<!-- /figure -->\n")


def test_check_shows_a_diff_and_writes_nothing_then_a_run_rewrites(tmp_path, monkeypatch, capsys):
    tool = _tool()
    readme = tmp_path / "README.md"
    readme.write_text("x <!-- figure: quickstart -->`final test accuracy: 0.5`<!-- /figure -->\n")
    monkeypatch.setattr(tool.BY_NAME["quickstart"], "build", lambda runner, write: "`final test accuracy: 0.9`")
    assert tool.main(["--check", "--only", "quickstart", "--readme", str(readme), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "-x <!-- figure: quickstart -->`final test accuracy: 0.5`" in out and "0.9" in out
    assert "0.5" in readme.read_text()
    assert tool.main(["--only", "quickstart", "--readme", str(readme), "--quiet"]) == 0
    assert readme.read_text() == "x <!-- figure: quickstart -->`final test accuracy: 0.9`<!-- /figure -->\n"
    assert tool.main(["--check", "--only", "quickstart", "--readme", str(readme), "--quiet"]) == 0
    assert tool.main(["--only", "nope", "--readme", str(readme), "--quiet"]) == 2
    readme.write_text("<!-- figure: nope -->1<!-- /figure -->\n")
    assert tool.main(["--list", "--readme", str(readme)]) == 2          # an orphan marker is an error


# ---- the CLI as the guide shows it -----------------------------------------------------------

def _synopsis() -> dict[str, set[str]]:
    text = CLI_PAGE.read_text()
    block = re.search(r"^# The CLI\n.*?^```\n(pcgraph run .*?)^```", text, re.S | re.M).group(1)
    verbs: dict[str, set[str]] = {}
    verb = None
    for line in block.splitlines():
        m = re.match(r"pcgraph (\w+)", line)
        if m:
            verb = m.group(1)
            verbs[verb] = set()
        line = re.sub(r"\(see [^)]*\)", "", line)
        verbs[verb] |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    return verbs


def _subparsers():
    from pcgraph.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return sub.choices


def test_the_cli_synopsis_names_every_verb_and_only_real_flags():
    shown, parsers = _synopsis(), _subparsers()
    assert sorted(shown) == sorted(parsers)
    for verb, flags in shown.items():
        real = {s for a in parsers[verb]._actions for s in a.option_strings}
        assert flags <= real, (verb, flags - real)


def test_every_verb_takes_threads():
    for verb, parser in _subparsers().items():
        assert any("--threads" in a.option_strings for a in parser._actions), verb


# ---- a missing dataset says what to do -------------------------------------------------------

@pytest.mark.parametrize("root", ["empty", None])
def test_missing_cifar10_is_one_line_with_the_files_or_the_stand_in(root, tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    from pcgraph.data.datasets import load_dataset
    from pcgraph.errors import DataError

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.delenv("PCGRAPH_DATA", raising=False)
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    if root:
        (tmp_path / root).mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=str(tmp_path / root) if root else None)
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg
    assert msg.endswith("--set data.dataset=cifar10_synthetic")
    assert (f"in {tmp_path / root}" if root else "data.root or PCGRAPH_DATA") in msg
