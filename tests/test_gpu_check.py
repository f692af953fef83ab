"""benchmarks/gpu_check.py runs (as a smoke test on the CPU: no GPU here) and writes its report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "res"
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--only",
                        "quickstart,pc_graph_mnist", "--quick", "--no-bench", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rep = json.loads((out / "gpu.json").read_text())
    assert rep["checks"]["quickstart"]["float64"]["status"] == "pass"
    assert rep["checks"]["pc_graph_mnist"]["float64"]["status"].startswith("n/a")
    assert rep["host_syncs"]["quickstart"]["zil"] == "no host sync"
    md = (out / "gpu.md").read_text()
    assert "| quickstart | pass" in md


def test_gpu_check_refuses_without_cuda():
    import torch
    if torch.cuda.is_available():
        return
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--no-bench"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "no CUDA device here" in p.stderr
