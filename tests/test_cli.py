"""The ``pcgraph`` command line: help, error reporting (exit 2, no traceback), show, run, resume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pcgraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "graphs" / "quickstart.yaml"

# Valid except for the fourth edge (edges[3]), whose 'to' names no node (line 12, column 17).
BROKEN = textwrap.dedent("""\
    name: broken
    data: {dataset: digits, batch_size: 32}
    model:
      nodes:
        - {name: x, shape: [64], role: input}
        - {name: h, shape: [16]}
        - {name: y, shape: [10], role: output}
      edges:
        - {from: x, to: h}
        - {from: h, to: y}
        - {from: x, to: y}
        - {from: h, to: hh}
    loss: cross_entropy
    train: {algorithm: zil}
    """)
BROKEN_MESSAGE = "model.edges[3].to: edge end 'hh' is not a node (known: x, h, y)"


@pytest.fixture
def broken(tmp_path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- help -----------------------------------------------------------------------------------

def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "check", "show", "examples:", "PCGRAPH_DATA"):
        assert word in out


@pytest.mark.parametrize("verb, options", [
    ("run", ["--epochs", "--out", "--resume", "--no-progress", "--dtype", "--algorithm", "--set", "--seed",
             "--device"]),
    ("check", ["--steps", "--tol", "--dtype", "--algorithm", "--set", "--seed", "--device"]),
    ("show", ["--algorithm", "--set", "--seed", "--device"]),
])
def test_verb_help(capsys, verb, options):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pcgraph {verb}")
    for opt in options:
        assert opt in out, f"{opt} missing from 'pcgraph {verb} --help'"


def test_no_verb_prints_help_and_fails(capsys):
    rc, out, _ = run_cli(capsys)
    assert rc == 2
    assert "usage: pcgraph" in out


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(QUICKSTART), "--epohcs", "2"])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ---- broken specs: exit 2, one message on stderr, no traceback -------------------------------

@pytest.mark.parametrize("verb", ["run", "check", "show"])
def test_broken_spec_exits_2_with_a_located_message(capsys, broken, verb):
    rc, out, err = run_cli(capsys, verb, broken)
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    assert err == f"pcgraph {verb}: error: {broken}:12:17: {BROKEN_MESSAGE}\n"


@pytest.mark.parametrize("verb", ["run", "check", "show"])
def test_missing_spec_file(capsys, tmp_path, verb):
    rc, out, err = run_cli(capsys, verb, tmp_path / "nope.yaml")
    assert rc == 2 and out == ""
    assert "cannot read the spec" in err and "nope.yaml" in err


@pytest.mark.parametrize("verb", ["run", "check", "show"])
def test_bad_set_is_reported(capsys, verb):
    rc, _, err = run_cli(capsys, verb, QUICKSTART, "--set", "model.edges[7].activation=tanh")
    assert rc == 2
    assert err.strip() == (f"pcgraph {verb}: error: --set model.edges[7].activation=tanh: "
                           "index 7 is out of range (the list has 2 items)")


@pytest.mark.parametrize("verb", ["run", "check", "show"])
def test_unknown_algorithm_option(capsys, verb):
    rc, _, err = run_cli(capsys, verb, QUICKSTART, "--algorithm", "zilch")
    assert rc == 2
    assert "unknown learning rule 'zilch'" in err and "known: " in err
    assert f"error: --algorithm zilch: unknown learning rule 'zilch'" in err   # the flag, not the spec's line


def test_unknown_dataset_via_run(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", QUICKSTART, "--set", "data.dataset=imagenet", "--out", tmp_path)
    assert rc == 2
    assert re.search(r"--set data\.dataset=imagenet: data\.dataset: unknown dataset 'imagenet' \(known: .*digits", err)


def test_unknown_optimizer_via_show(capsys):
    rc, _, err = run_cli(capsys, "show", QUICKSTART, "--set", "train.optimizer.name=adamz")
    assert rc == 2
    assert "train.optimizer.name: unknown optimizer 'adamz'" in err


def test_unknown_dtype(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", QUICKSTART, "--dtype", "float16", "--out", tmp_path)
    assert rc == 2
    assert "--dtype: unknown dtype 'float16' (known: float32, float64)" in err


def test_option_errors_do_not_point_into_the_spec_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", QUICKSTART, "--dtype", "float16", "--out", tmp_path)
    assert rc == 2
    assert err.strip() == "pcgraph run: error: --dtype: unknown dtype 'float16' (known: float32, float64)"


def test_cycle_with_an_exit_edge_is_reported(capsys, tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text(textwrap.dedent("""\
        model:
          nodes:
            - {name: x, shape: [4], role: input}
            - {name: a, shape: [4]}
            - {name: b, shape: [4]}
            - {name: y, shape: [4], role: output}
          edges:
            - {from: x, to: a}
            - {from: a, to: b}
            - {from: b, to: y}
            - {from: b, to: a}
        """))
    rc, _, err = run_cli(capsys, "show", path)
    assert rc == 2 and "a -> b -> a" in err


def test_no_traceback_reaches_stderr_in_a_subprocess(broken, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pcgraph.cli", "run", str(broken), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == f"pcgraph run: error: {broken}:12:17: {BROKEN_MESSAGE}\n"


# ---- show ---------------------------------------------------------------------------------------

def test_show_prints_graph_schedule_and_inference_plan(capsys):
    rc, out, err = run_cli(capsys, "show", QUICKSTART)
    assert rc == 0 and err == ""
    assert out.startswith(f"spec quickstart ({QUICKSTART})")
    assert "PCGraph(3 nodes, 2 edges)" in out
    assert "edge h->y: linear(tanh) +bias" in out
    assert "compiled graph: 3 nodes" in out
    assert "rule zil:" in out
    assert "inference plan: 2 steps" in out
    assert re.search(r"t=0: eps\[y\]\s+update\[h->y\]", out)
    assert re.search(r"t=1: eps\[h\]\s+update\[x->h\]", out)


def test_show_applies_overrides(capsys):
    rc, out, _ = run_cli(capsys, "show", QUICKSTART, "--algorithm", "il", "--set", "train.algorithm.T=5",
                         "--set", "model.edges[0].activation=sigmoid")
    assert rc == 0
    assert "edge x->h: linear(sigmoid) +bias" in out
    assert "rule il:" in out and "T=5" in out


# ---- run and resume ---------------------------------------------------------------------------

EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\d+)\s+train loss [\d.]+\s+test loss [\d.]+\s+test acc ([\d.]+)", re.M)


def final_accuracy(out: str) -> float:
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"final test accuracy: ([\d.]+)", last)
    assert m, f"last line is {last!r}"
    return float(m.group(1))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_then_resume(capsys, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, _ = run_cli(capsys, "run", QUICKSTART, "--epochs", 2, "--out", out_dir, "--no-progress")
    assert rc == 0
    assert out.startswith("quickstart: zil on digits")
    assert [m.group(1, 2) for m in EPOCH_LINE.finditer(out)] == [("1", "2"), ("2", "2")]
    acc2 = final_accuracy(out)
    assert (out_dir / "checkpoint.pt").is_file()
    assert (out_dir / "spec.yaml").is_file()
    metrics = read_metrics(out_dir / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"train_loss", "test_loss", "test_accuracy", "seconds", "steps"} <= set(m)
    assert metrics[-1]["test_accuracy"] == pytest.approx(acc2, abs=5e-5)

    rc, out, _ = run_cli(capsys, "run", QUICKSTART, "--epochs", 3, "--out", out_dir, "--no-progress", "--resume")
    assert rc == 0
    assert f"resumed from {out_dir / 'checkpoint.pt'} after epoch 2" in out
    assert [m.group(1, 2) for m in EPOCH_LINE.finditer(out)] == [("3", "3")]
    acc3 = final_accuracy(out)
    metrics = read_metrics(out_dir / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["test_accuracy"] == pytest.approx(acc3, abs=5e-5)

    # resuming continues exactly where an uninterrupted run would be
    straight = tmp_path / "straight"
    rc, _, _ = run_cli(capsys, "run", QUICKSTART, "--epochs", 3, "--out", straight, "--no-progress")
    assert rc == 0
    ref = read_metrics(straight / "metrics.jsonl")
    for a, b in zip(metrics, ref):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)


def test_resume_without_a_checkpoint(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", QUICKSTART, "--epochs", 1, "--out", tmp_path / "empty", "--resume",
                         "--no-progress")
    assert rc == 2
    assert "no checkpoint" in err and "Traceback" not in err


def test_resume_with_a_different_graph(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert run_cli(capsys, "run", QUICKSTART, "--epochs", 1, "--out", out_dir, "--no-progress")[0] == 0
    rc, _, err = run_cli(capsys, "run", QUICKSTART, "--epochs", 2, "--out", out_dir, "--no-progress", "--resume",
                         "--set", "model.nodes[1].shape=[32]")
    assert rc == 2
    assert "different model graph" in err


def test_run_default_epochs_reaches_90_percent(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folder: runs/<spec name>
    rc, out, _ = run_cli(capsys, "run", QUICKSTART, "--no-progress")
    assert rc == 0
    epochs = [int(m.group(1)) for m in EPOCH_LINE.finditer(out)]
    assert epochs == list(range(1, 16))  # train.epochs: 15 in the spec
    assert final_accuracy(out) >= 0.90
    metrics = read_metrics(tmp_path / "runs" / "quickstart" / "metrics.jsonl")
    assert len(metrics) == 15


def test_check_passes_on_quickstart(capsys):
    rc, out, _ = run_cli(capsys, "check", QUICKSTART, "--steps", 2)
    assert rc == 0
    assert "max divergence:" in out
    assert out.strip().splitlines()[-1].startswith("PASS")


@pytest.mark.parametrize("sets,code", [
    ([], 0),
    (["--set", "train.algorithm.gamma=0.5"], 1),
    (["--set", "train.algorithm.update_at=3"], 1),
    (["--algorithm", "fazil"], 0),
    (["--algorithm", "il"], 1),
])
def test_check_exit_code_follows_the_conditions(capsys, sets, code):
    rc, out, _ = run_cli(capsys, "check", QUICKSTART, "--steps", 3, "--dtype", "float64", *sets)
    assert rc == code, out
    div = float(re.search(r"max divergence: (\S+)", out).group(1))
    assert (div <= 1e-10) == (code == 0)
