"""Smoke test of benchmarks/pcx.py (PCX's MLP benchmark): --quick, two presets, MNIST."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pcx.py"


def _have_mnist() -> bool:
    root = os.environ.get("PCGRAPH_DATA")
    return bool(root) and (Path(root) / "MNIST").is_dir()


@pytest.mark.mnist
@pytest.mark.skipif(not _have_mnist(), reason="MNIST files not found (set PCGRAPH_DATA)")
def test_the_pcx_benchmark_writes_its_table_and_resumes(tmp_path):
    args = [sys.executable, str(SCRIPT), "--quick", "--datasets", "mnist", "--methods", "bp,pc_se",
            "--epochs", "2", "--results", str(tmp_path), "--threads", "1"]
    # an interrupted run: only the first epoch of the 2-epoch schedule
    first = subprocess.run([*args, "--until", "1"], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "epoch   1/2" in first.stdout and "epoch   2/2" not in first.stdout
    assert (tmp_path / "runs" / "e2" / "mnist" / "pc_se" / "seed0" / "checkpoint.pt").exists()
    # the same command without --until continues from the checkpoint: epoch 2 only
    second = subprocess.run(args, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert "resumed after epoch 1" in second.stdout
    assert "epoch   1/2" not in second.stdout and "epoch   2/2" in second.stdout

    table = (tmp_path / "table.md").read_text()
    assert "| bp (BP-CE) |" in table and "| pc_se (PC-SE) |" in table
    assert "MNIST best" in table and "FashionMNIST" not in table.split("\n\n")[1].splitlines()[0]
    assert table.count("not found") >= 3          # the paper column and the note: no invented numbers
    assert "--epochs 25 --seeds 0,1,2,3,4,5,6" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["epochs"] == 2 and results["meta"]["quick"]
    for method in ("bp", "pc_se"):
        entry = results["results"]["mnist"][method]
        history = entry["runs"]["0"]["history"]
        assert [h["epoch"] for h in history] == [1, 2]
        assert all(0 <= h["test_accuracy"] <= 1 and h["seconds"] > 0 for h in history)
        summary = entry["summary"]
        assert summary["best_mean"] == pytest.approx(100 * max(h["test_accuracy"] for h in history))
        assert summary["final_mean"] == pytest.approx(100 * history[-1]["test_accuracy"])
