"""Smoke test of benchmarks/bench_pcx_speed.py (pcgraph vs PCX, ms per update): 2 rounds, T = 1,
random data. It passes with and without PCX: with it, the PCX rows and the checks are there; without
it, the script says PCX is skipped and still times pcgraph."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pcx_speed.py"
SKIP = "PCX is not importable"
PCG = ("pcgraph il", "pcgraph pc", "pcgraph pc+m")


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--rounds", "2", "--T", "1", "--data", "random", "--steps", "2",
           "--warmup", "1", "--n-batches", "2", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "pcx_speed.md").exists() and (out / "pcx_speed.json").exists()
    return proc, json.loads((out / "pcx_speed.json").read_text()), (out / "pcx_speed.md").read_text()


def _check_pcgraph_side(report: dict, md: str) -> None:
    assert report["config"]["T"] == [1] and report["config"]["rounds"] == 2
    assert report["config"]["sizes"] == [784, 256, 256, 256, 10]
    row = report["results"]["1"]
    for name in PCG:
        r = row["methods"][name]
        assert len(r["ms_rounds"]) == 2 and r["ms"] > 0 and r["ms_iqr"][0] <= r["ms"] <= r["ms_iqr"][1]
    assert "## T = 1" in md and "il (gamma 0.1)" in md


def test_the_benchmark_writes_its_tables(tmp_path):
    proc, report, md = _run(tmp_path)
    _check_pcgraph_side(report, md)
    if report["pcx"]["available"]:
        row = report["results"]["1"]
        for name in ("PCX sgd", "PCX sgd+m"):
            assert len(row["methods"][name]["ms_rounds"]) == 2
        for pair in ("pcgraph il / PCX sgd", "pcgraph pc / PCX sgd", "pcgraph pc+m / PCX sgd+m"):
            p = row["pairs"][pair]
            assert p["ratio"] > 0 and len(p["ratios"]) == 2
        checks = report["checks"]
        assert checks["shapes"]["equal"]
        assert all(v < 1e-2 for v in checks["same_update"]["max_rel_diff_of_weight_step"].values())
        assert checks["loss_decreases"]["pcx_decreases"]
        assert "pcgraph / PCX" in md and SKIP not in proc.stdout
    else:
        assert SKIP in proc.stdout and SKIP in md and report["pcx"]["message"].startswith(SKIP)
        assert "PCX sgd" not in report["results"]["1"]["methods"]


def test_without_pcx_the_script_skips_it_and_times_pcgraph(tmp_path):
    # is pcx importable without the extra site-packages? (from tmp_path: benchmarks/pcx.py is not on the path)
    probe = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('pcx') is not None)"],
                           capture_output=True, text=True, cwd=tmp_path, check=False)
    if probe.stdout.strip() == "True":
        pytest.skip("pcx is importable in this interpreter: the skip path cannot be forced")
    proc, report, md = _run(tmp_path, "--pcx-site", str(tmp_path / "no-such-site-packages"))
    assert SKIP in proc.stdout and "skipping PCX, timing the pcgraph side only" in proc.stdout
    assert not report["pcx"]["available"] and SKIP in md
    assert report["results"]["1"]["pairs"] == {} and report["checks"] == {}
    _check_pcgraph_side(report, md)
