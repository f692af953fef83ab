"""`pcgraph ablate` on a tiny digits MLP: the expected shape, files, and the CLI."""

from __future__ import annotations

import csv

from pcgraph.cli import main
from pcgraph.studies import AblationConfig, run_ablation
from helpers import mlp_spec


def test_ablation_shape(tmp_path):
    spec = mlp_spec((16,), act="sigmoid", dataset="digits", batch_size=20,
                    optimizer={"name": "sgd", "lr": 0.05})
    cfg = AblationConfig(layers=[1, 2], epochs=1, train_subset=200, test_subset=200, fazil_batches=3)
    rows = run_ablation(spec, tmp_path, cfg, log=lambda s: None)
    by = {(r["hidden_layers"], r["condition"], str(r["value"])): r for r in rows}
    for layers in (1, 2):
        for cond, exact in (("C1", "0.0"), ("C2", "depth"), ("C3", "1.0")):
            values = {str(r["value"]) for r in rows if r["condition"] == cond and r["hidden_layers"] == layers}
            for v in values:
                w = by[(layers, cond, v)]["weight_divergence"]
                if v == exact:
                    assert w < 1e-12, (layers, cond, v, w)
                elif not (cond == "C2" and layers == 1 and v == "1"):   # t=1 is depth for 1 layer's h
                    assert w > 1e-9, (layers, cond, v, w)
        assert all(by[(layers, "fazil", str(t))]["detection_rate"] == 1.0 for t in (4, 8, 16))
    with open(tmp_path / "ablation.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    for cond in ("C1", "C2", "C3", "fazil"):
        assert (tmp_path / f"ablation_{cond}.png").stat().st_size > 1000


def test_ablate_cli(tmp_path, capsys):
    spec = mlp_spec((8,), act="sigmoid", dataset="digits", batch_size=20)
    path = tmp_path / "s.yaml"
    spec.save(path)
    rc = main(["ablate", str(path), "--out", str(tmp_path / "out"), "--layers", "1", "--epochs", "1",
               "--train-subset", "100", "--test-subset", "100", "--conditions", "C3,fazil",
               "--fazil-batches", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "C3: gamma" in out and "Fa-Z-IL: t_d" in out
    assert (tmp_path / "out" / "ablation.csv").exists()
