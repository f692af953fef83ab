"""README, examples/ and graphs/ stay runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcgraph import Spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,args", [
    ("build_and_train.py", ["--epochs", "2"]), ("networkx_graph.py", []), ("gamma_per_layer.py", []),
    ("energy_queries.py", ["--epochs", "2"]),
])
def test_example_runs(script, args, tmp_path):
    if script == "build_and_train.py":
        args = args + ["--out", str(tmp_path)]
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    if script == "networkx_graph.py":
        div = float(re.search(r"max divergence: (\S+)", res.stdout).group(1))
        assert div <= 1e-10
    if script == "energy_queries.py":            # classification by inference, well above chance (0.1)
        acc = float(re.search(r"accuracy/label: (\S+)", res.stdout).group(1))
        assert acc > 0.5, res.stdout
    if script == "gamma_per_layer.py":
        for line in res.stdout.splitlines():
            m = re.search(r"ratio (\S+)\s+gamma\*\*l (\S+)$", line)
            if m:
                assert abs(float(m.group(1)) - float(m.group(2))) < 1e-10, line


def test_readme_python_block_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    block = block.replace("pcgraph.Trainer(exp, out=None).fit()", "pcgraph.Trainer(exp, out=None, progress=False).fit(1)")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert Spec.load(tmp_path / "tiny.yaml").name == "tiny"


@pytest.mark.parametrize("path", sorted((ROOT / "graphs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_graph_validates_and_round_trips(path):
    spec = Spec.load(path)
    assert Spec.from_yaml(spec.to_yaml()) == spec
