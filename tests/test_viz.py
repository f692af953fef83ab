"""pcgraph.viz: graph drawings (png/svg/dot), the error wave, run curves, the CLI verbs."""

from __future__ import annotations

import argparse
import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pathlib import Path  # noqa: E402

from pcgraph import Experiment, Spec, Trainer  # noqa: E402
from pcgraph.errors import PCGraphError  # noqa: E402
from pcgraph.viz import draw_compiled, draw_wave, plot_runs, to_dot, wave_data  # noqa: E402
from pcgraph.viz.cli import COMMANDS, add_parsers  # noqa: E402

DIGITS_SPECS = ["quickstart", "residual_mlp", "diamond", "gated_mlp", "concat_branches", "two_heads"]
MNIST_SPECS = ["transformer_block", "seq_mnist_rnn"]      # compiled without data


def compiled(name: str):
    return Experiment.build(Spec.load(f"graphs/{name}.yaml"), with_data=False).compiled


@pytest.mark.parametrize("name", DIGITS_SPECS + MNIST_SPECS)
def test_viz_writes_png_svg_dot(name, tmp_path):
    cg = compiled(name)
    for ext in ("png", "svg", "dot"):
        path = draw_compiled(cg, tmp_path / f"g.{ext}")
        assert path.stat().st_size > 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "g.svg").read_text()[:2000]
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and "rankdir=LR" in dot
    for n in cg.graph.nodes:
        assert f'"{n}" [label=' in dot
    ranks = re.findall(r"\{ rank=same; ([^}]*)\}  // depth (\d+)", dot)
    assert sorted(int(d) for _, d in ranks) == list(range(len(cg.levels)))
    for members, d in ranks:
        names = {m.strip().strip('"') for m in members.split(";") if m.strip()}
        assert names == set(cg.levels[int(d)])


def test_dot_marks_relays_factors_and_update_steps():
    dot = to_dot(compiled("residual_mlp"))
    assert re.search(r'"h1~1" \[label="h1~1\\n\[48\]\\nt=3", style="dashed', dot)
    assert "(W_rec)" in dot and "t=4" in dot
    gated = to_dot(compiled("gated_mlp"))
    assert "shape=point" in gated and "mul(tanh(a), \u03c3(b))" in gated     # activations on the sources


def test_viz_raw_draws_the_source_graph(tmp_path):
    cg = compiled("residual_mlp")
    dot = to_dot(cg, raw=True)
    assert "~" not in dot                      # no relays in the graph as written
    assert '"h1" [label="h1\\n[48]\\nt=4"' in dot   # longest distance to the output
    draw_compiled(cg, tmp_path / "raw.png", raw=True)


def test_viz_rejects_unknown_format(tmp_path):
    with pytest.raises(PCGraphError, match="unknown picture format"):
        draw_compiled(compiled("quickstart"), tmp_path / "g.txt")


def test_wave_zil_is_exact_at_depth_and_il_smears(tmp_path):
    spec = Spec.load("graphs/residual_mlp.yaml")
    exp = Experiment.build(spec, with_data=True)
    batch = next(iter(exp.batches.train()))
    data = wave_data(exp, batch)
    zil, il = data["rules"]["zil"], data["rules"]["il"]
    assert data["T_rules"] == {"zil": max(data["depth"]), "il": 20}
    assert zil.shape == il.shape == (len(data["nodes"]), 21)
    assert data["depth"] == sorted(data["depth"]) and data["roles"][0] == "output"
    for r, d in enumerate(data["depth"]):
        assert np.all(zil[r, :d] == 0), data["nodes"][r]        # exactly zero before the wave
        assert zil[r, d] > 0, data["nodes"][r]                   # BP's delta at t = depth
        assert np.all(np.isnan(zil[r, data["T_rules"]["zil"] + 1:]))   # Z-IL stops at its last update
        # IL (gamma = 0.1): the same front under C1, but the error arrives ~gamma**depth smaller
        # and keeps changing afterwards
        if d >= 1:
            assert il[r, d] < 0.5 * zil[r, d]
            assert il[r, d] != il[r, d + 1]
    # with IL's initial noise (C1 broken) every error is non-zero before the wave
    noisy = wave_data(exp, batch, rules={"il": {"T": 5, "gamma": 0.1, "init_noise": 0.1}})["rules"]["il"]
    assert np.all(noisy[:, 0] > 0)
    path = draw_wave(data, tmp_path / "wave.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_wave_quickstart(tmp_path):
    data = wave_data(Spec.load("graphs/quickstart.yaml"))
    zil = data["rules"]["zil"]
    assert data["nodes"] == ["y", "h"]
    assert zil[1, 0] == 0 and zil[1, 1] > 0 and zil[0, 0] > 0
    assert data["rules"]["il"][1, 2] > 0


def run_dir(tmp_path, name, algorithm):
    spec = Spec.load("graphs/quickstart.yaml", overrides=[f"train.algorithm.name={algorithm}",
                                                           "data.train_subset=256", "data.test_subset=128"])
    exp = Experiment.build(spec)
    out = tmp_path / name
    Trainer(exp, out=out, progress=False, log=lambda s: None).fit(2)
    return out


def test_plot_runs(tmp_path):
    a, b = run_dir(tmp_path, "zil_run", "zil"), run_dir(tmp_path, "bp_run", "bp")
    path = plot_runs([a, b], tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    from pcgraph.viz import load_run

    run = load_run(a)
    assert run["algorithm"] == "zil" and len(run["records"]) == 2
    # a regression run (NaN accuracy) is drawn without its accuracy
    lines = (b / "metrics.jsonl").read_text().splitlines()
    (b / "metrics.jsonl").write_text("\n".join(re.sub(r'"test_accuracy": [0-9.e-]+', '"test_accuracy": NaN', ln)
                                               for ln in lines) + "\n")
    assert math.isnan(load_run(b)["records"][0]["test_accuracy"])
    plot_runs([b], tmp_path / "regression.svg")
    with pytest.raises(PCGraphError, match="metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")


def test_tensorboard_logger(tmp_path):
    from pcgraph.viz import TensorBoardLogger

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(PCGraphError, match="tensorboard"):
            TensorBoardLogger(tmp_path)
        return
    with TensorBoardLogger(tmp_path) as tb:
        tb.log({"epoch": 1, "train_loss": 0.5, "test_accuracy": float("nan")})
    assert any(tmp_path.iterdir())


def cli(*argv):
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="verb"))
    args = p.parse_args(list(argv))
    return COMMANDS[args.verb](args)


def test_cli_verbs(tmp_path, capsys):
    assert cli("viz", "graphs/residual_mlp.yaml", "-o", str(tmp_path / "g.dot"), "--raw") == 0
    assert "~" not in (tmp_path / "g.dot").read_text()
    assert cli("viz", "graphs/diamond.yaml", "-o", str(tmp_path / "g.png"), "--algorithm", "il",
               "--set", "train.algorithm.gamma=0.5") == 0
    assert cli("wave", "graphs/quickstart.yaml", "-o", str(tmp_path / "w.png"), "--batch", "8") == 0
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(PCGraphError):
        cli("viz", "graphs/diamond.yaml", "-o", str(tmp_path / "g.bmp"))
    with pytest.raises(PCGraphError):
        cli("wave", "graphs/quickstart.yaml", "-o", str(tmp_path / "w.png"), "--batch", "0")


@pytest.mark.parametrize("name", ["gated_mlp", "residual_mlp", "concat_branches"])
def test_viz_wraps_deep_graphs_into_bands(name, tmp_path):
    # edges (one or several sources) between bands become labelled stubs
    path = draw_compiled(compiled(name), tmp_path / "bands.png", wrap=2)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert cli("viz", f"graphs/{name}.yaml", "-o", str(tmp_path / "b.svg"), "--wrap", "3") == 0


def test_run_with_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from pcgraph.cli import main

    out = tmp_path / "run"
    assert main(["run", str(Path(__file__).resolve().parents[1] / "graphs" / "quickstart.yaml"), "--epochs", "1", "--out", str(out), "--no-progress",
                 "--tensorboard", "--set", "data.train_subset=200"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
