"""Graph-network layers through torch-geometric (pcgraph/ops/graph_conv.py) and graph
datasets (pcgraph/data/graphs.py): the ops equal torch-geometric's layers and their VJPs
autograd's (float64); Z-IL and Fa-Z-IL equal BP on graphs of gcn/sage/gat edges (relays
included); an unlabelled vertex's error is exactly 0 and only labelled vertices count in the
reduction and the reported accuracy; the Planetoid data load from the offline root without
writing there; the CLI trains karate."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pcgraph import Experiment, Spec, Trainer
from pcgraph.cli import main
from pcgraph.data import load_dataset
from pcgraph.errors import DataError, PCGraphError
from pcgraph.ops.base import OPS
from pcgraph.ops.graph_conv import Graph, pyg_nn
from pcgraph.ops.losses import IGNORE, MSE, CrossEntropy, Objective
from pcgraph.train import check_against_bp

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
ROOT = os.environ.get("PCGRAPH_DATA")
HAVE_CORA = bool(ROOT) and (Path(ROOT) / "Planetoid" / "Cora" / "raw").is_dir()
HAVE_CITESEER = bool(ROOT) and (Path(ROOT) / "Planetoid" / "CiteSeer" / "raw").is_dir()
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _karate_graph() -> Graph:
    return load_dataset("karate").graph


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- the ops are torch-geometric's layers ------------------------------------------------------

def _unit_weights(layer):
    """``layer`` called with unit edge weights: GCNConv's ``improved`` (A + 2I) acts only when
    the edges have weights (without, torch-geometric's gcn_norm ignores it)."""
    plain = layer.forward
    layer.forward = lambda x, ei: plain(x, ei, torch.ones(ei.shape[1], dtype=x.dtype))
    return layer


LAYERS = [  # (op, options, target features, the torch-geometric layer it must equal)
    ("gcn_conv", {}, 5, lambda: pyg_nn().GCNConv(6, 5)),
    ("gcn_conv", {"improved": True}, 5, lambda: _unit_weights(pyg_nn().GCNConv(6, 5, improved=True))),
    ("sage_conv", {"aggr": "max"}, 5, lambda: pyg_nn().SAGEConv(6, 5, aggr="max")),
    ("gat_conv", {"heads": 3}, 12, lambda: pyg_nn().GATConv(6, 4, heads=3)),
    ("gat_conv", {"heads": 2, "concat": False}, 4, lambda: pyg_nn().GATConv(6, 4, heads=2, concat=False)),
]


@pytest.mark.parametrize("name,raw,out,layer", LAYERS, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(LAYERS)])
def test_op_equals_the_pyg_layer_and_its_vjps_autograd(name, raw, out, layer):
    """On karate's graph (34 vertices, float64): the op's forward is the torch-geometric
    layer's (GCNConv normalising on every call, the op once per graph), its torch.func VJPs
    are autograd's through that layer, and init_params is deterministic per generator."""
    g = _karate_graph()
    cls = OPS.get(name)
    op = cls([(6,)], (out,), True, cls.parse_options(raw, "t"))
    op.graph = g
    p0 = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    again = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    assert all(torch.equal(p0[k], again[k]) for k in p0)
    params = {k: v + 0.3 * _rand(v.shape, j) for j, (k, v) in enumerate(p0.items())}
    ref = layer().double()
    with torch.no_grad():
        for k, v in params.items():
            ref.get_parameter(op._pyg[k]).copy_(v)
    u = _rand((g.num_nodes, 6), 10)
    torch.testing.assert_close(op.forward(params, u), ref(u, g.edge_index), **TOL)

    gout = _rand((g.num_nodes, out), 11)
    us = u.clone().requires_grad_(True)
    want = torch.autograd.grad((ref(us, g.edge_index) * gout).sum(), [us, *ref.parameters()])
    gin, gp = op.vjp(params, [u], gout, [True], True)
    torch.testing.assert_close(gin[0], want[0], **TOL)
    names = [n for n, _ in ref.named_parameters()]
    for k, v in gp.items():
        torch.testing.assert_close(v, want[1 + names.index(op._pyg[k])], **TOL)


def test_graph_op_without_a_graph_or_with_the_wrong_rows_says_so():
    cls = OPS.get("gcn_conv")
    op = cls([(4,)], (3,))
    p = op.init_params(torch.Generator(), torch.float64, torch.device("cpu"))
    with pytest.raises(DataError, match="needs the graph structure"):
        op.forward(p, _rand((3, 4), 0))
    op.graph = Graph(torch.tensor([[0, 1], [1, 0]]), 2)
    with pytest.raises(DataError, match="got 3 rows but the bound graph has 2 vertices"):
        op.forward(p, _rand((3, 4), 0))
    with pytest.raises(DataError, match="outside"):
        Graph(torch.tensor([[0, 5], [1, 0]]), 2)


def test_gat_heads_must_divide_the_target_and_sources_are_vertex_features():
    cls = OPS.get("gat_conv")
    assert "multiple of heads" in cls.check_shapes([(4,)], (6,), cls.parse_options({"heads": 4}, "t"))
    assert cls.check_shapes([(4,)], (3,), cls.parse_options({"heads": 4, "concat": False}, "t")) is None
    assert "[F] node" in OPS.get("gcn_conv").check_shapes([(2, 4)], (3,), OPS.get("gcn_conv").Options())


# ---- Z-IL is BP on graph networks ----------------------------------------------------------------

def _karate_spec(algorithm="zil", optimizer=None, reduction="mean", skip=True) -> Spec:
    """gat (2 heads) -> sage -> gcn with a sage skip x -> y (y needs relays for it)."""
    s = Spec(name="karate-mix", seed=3)
    s.add_node("x", [34], "input").add_node("a", [8]).add_node("b", [6]).add_node("y", [4], "output")
    s.add_edge("x", "a", "gat_conv", "identity", True, heads=2)
    s.add_edge("a", "b", "sage_conv", "tanh", True)
    s.add_edge("b", "y", "gcn_conv", "elu", True)
    if skip:
        s.add_edge("x", "y", "sage_conv", "identity", False, aggr="max")
    s.set_data(dataset="karate")
    s.set_loss("cross_entropy")
    s.set_train(algorithm=algorithm, epochs=1, optimizer=optimizer or {"name": "sgd", "lr": 0.1},
                reduction=reduction)
    return s.validate()


@pytest.mark.parametrize("algorithm", ["zil", "fazil"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_zil_equals_bp_on_karate(algorithm, reduction):
    report = check_against_bp(_karate_spec(algorithm, reduction=reduction), steps=4, dtype="float64")
    assert len(report.params) == 11
    assert report.max_divergence <= 1e-12, report.format()
    assert all(p.bp_update > 1e-6 for p in report.params), report.format()


def test_relays_in_front_of_a_graph_op():
    from pcgraph import compile_graph

    spec = _karate_spec()
    cg = compile_graph(spec.model, spec.loss)
    assert cg.n_relays == 0    # x is an input: no relay; a deep hidden skip needs them:
    s = Spec(name="skip", seed=0)
    s.add_node("x", [34], "input").add_node("a", [8]).add_node("b", [8]).add_node("y", [4], "output")
    s.add_edge("x", "a", "gcn_conv", "identity", True).add_edge("a", "b", "gcn_conv", "relu", True)
    s.add_edge("b", "y", "gcn_conv", "identity", True).add_edge("a", "y", "gat_conv", "tanh", True, heads=2)
    s.set_data(dataset="karate").set_loss("cross_entropy")
    s.set_train(algorithm="zil", epochs=1, optimizer={"name": "sgd", "lr": 0.1})
    assert compile_graph(s.model, s.loss).n_relays == 1
    report = check_against_bp(s.validate(), steps=3, dtype="float64")
    assert report.max_divergence <= 1e-12, report.format()


def test_zil_gradient_equals_autograd_of_a_plain_pyg_model_on_the_train_mask():
    """An independent reference: a two-layer torch-geometric GCN written by hand, its loss
    the cross-entropy over the 4 labelled training vertices of karate only; Z-IL's gradient
    on the pcgraph spec (same weights) equals autograd's, float64."""
    s = Spec(name="gcn", seed=1)
    s.add_node("x", [34], "input").add_node("h", [16]).add_node("y", [4], "output")
    s.add_edge("x", "h", "gcn_conv", "identity", True).add_edge("h", "y", "gcn_conv", "relu", True)
    s.set_data(dataset="karate").set_loss("cross_entropy")
    s.set_train(algorithm="zil", epochs=1, optimizer={"name": "sgd", "lr": 0.1})
    exp = Experiment.build(s.validate(), dtype="float64")
    inputs, targets, _ = next(iter(exp.batches.train()))
    exp.rule.compute_grads(inputs, targets)

    data = load_dataset("karate")
    mask = data.train_y != IGNORE
    assert int(mask.sum()) == 4
    c1, c2 = pyg_nn().GCNConv(34, 16).double(), pyg_nn().GCNConv(16, 4).double()
    with torch.no_grad():
        for conv, key in ((c1, "x_to_h"), (c2, "h_to_y")):
            conv.lin.weight.copy_(exp.net.params[key]["lin_weight"])
            conv.bias.copy_(exp.net.params[key]["bias"])
    x = data.train_x.double()
    out = c2(F.relu(c1(x, data.graph.edge_index)), data.graph.edge_index)
    F.cross_entropy(out[mask], data.train_y[mask]).backward()
    for conv, key in ((c1, "x_to_h"), (c2, "h_to_y")):
        torch.testing.assert_close(exp.net.params[key]["lin_weight"].grad, conv.lin.weight.grad, **TOL)
        torch.testing.assert_close(exp.net.params[key]["bias"].grad, conv.bias.grad, **TOL)


# ---- masks: unlabelled vertices have no error and do not count ------------------------------------

def test_unlabelled_error_is_exactly_zero_and_the_reduction_counts_labelled_samples():
    mu = _rand((6, 3), 0)
    y = torch.tensor([2, IGNORE, 0, IGNORE, IGNORE, 1])
    lab = y != IGNORE
    ce = CrossEntropy()
    e = ce.error(mu, ce.target(y, (3,), torch.float64))
    assert torch.equal(e[~lab], torch.zeros(3, 3, dtype=torch.float64))
    assert not (e[lab] == 0).all(dim=1).any()
    # the same numbers as on the labelled rows alone
    assert torch.equal(e[lab], ce.error(mu[lab], y[lab]))
    mse = MSE()
    t = mse.target(y, (3,), torch.float64)
    assert t[~lab].isnan().all() and not t[lab].isnan().any()
    e = mse.error(mu, t)
    assert torch.equal(e[~lab], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(mse.value(mu, t), mse.value(mu[lab], t[lab]), rtol=0, atol=0)

    for reduction, scale in (("mean", 1 / 3), ("sum", 1.0)):
        for loss in (ce, mse):
            obj = Objective({"y": loss}, reduction)
            target = loss.target(y, (3,), torch.float64)
            v = obj.value({"y": mu}, {"y": target})
            assert obj.labelled == 3 and obj.scale(6) == scale
            ref = Objective({"y": loss}, reduction).value({"y": mu[lab]}, {"y": loss.target(y[lab], (3,),
                                                                                            torch.float64)})
            torch.testing.assert_close(v, ref, rtol=1e-15, atol=0)
            assert obj.per_sample(float(v), 6) == pytest.approx(float(ref) / (3 if reduction == "sum" else 1))
    # ordinary data: unchanged (every sample labelled)
    obj = Objective({"y": ce}, "mean")
    obj.value({"y": mu}, {"y": torch.tensor([0, 1, 2, 0, 1, 2])})
    assert obj.labelled is None and obj.scale(6) == 1 / 6


def test_evaluate_counts_only_the_test_vertices():
    exp = Experiment.build(_karate_spec(), dtype="float64")
    Trainer(exp, out=None, progress=False, log=lambda s: None).fit(3)
    rec = exp.evaluate()
    data = load_dataset("karate")
    with torch.no_grad():
        pred = exp.net({"x": data.test_x.double()})["y"].argmax(1)
    mask = data.test_y != IGNORE
    assert int(mask.sum()) == 30
    assert rec["test_accuracy"] == pytest.approx(float((pred[mask] == data.test_y[mask]).double().mean()))
    assert exp.batches.steps_per_epoch() == 1


def test_graph_subsets_keep_the_graph_and_the_first_labelled_vertices():
    full = load_dataset("karate")
    cut = load_dataset("karate", train_subset=2, test_subset=5)
    assert cut.train_x.shape == full.train_x.shape and cut.graph.num_nodes == 34
    assert int((cut.train_y != IGNORE).sum()) == 2 and int((cut.test_y != IGNORE).sum()) == 5
    first = (full.train_y != IGNORE).nonzero()[:2, 0]
    assert torch.equal(cut.train_y[first], full.train_y[first])


def test_a_graph_op_on_a_dataset_without_a_graph_is_a_located_error():
    s = Spec(name="bad", seed=0)
    s.add_node("x", [64], "input").add_node("y", [10], "output")
    s.add_edge("x", "y", "gcn_conv")
    s.set_data(dataset="digits").set_loss("cross_entropy")
    with pytest.raises(PCGraphError, match=r"model\.edges\[0\]\.op: op 'gcn_conv' needs a graph dataset"):
        Experiment.build(s.validate())


def test_an_mlp_on_a_graph_dataset_ignores_the_graph():
    """A graph dataset feeds any graph: an MLP baseline on karate trains on its 4 labelled vertices."""
    s = Spec(name="mlp", seed=0)
    s.add_node("x", [34], "input").add_node("y", [4], "output").add_edge("x", "y", "linear", bias=True)
    s.set_data(dataset="karate").set_loss("cross_entropy")
    s.set_train(algorithm="zil", epochs=1, optimizer={"name": "sgd", "lr": 0.1})
    report = check_against_bp(s.validate(), steps=2, dtype="float64")
    assert report.max_divergence <= 1e-12


# ---- datasets from the offline root --------------------------------------------------------------

@pytest.mark.skipif(not HAVE_CORA, reason="Planetoid/Cora/raw not found (set PCGRAPH_DATA)")
def test_cora_loads_offline_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in (Path(ROOT) / "Planetoid" / "Cora").iterdir())
    d = load_dataset("cora", ROOT)
    assert tuple(d.train_x.shape) == (2708, 1433) and d.num_classes == 7
    assert d.graph.num_nodes == 2708 and d.graph.num_edges == 10556
    assert int((d.train_y != IGNORE).sum()) == 140 and int((d.test_y != IGNORE).sum()) == 1000
    torch.testing.assert_close(d.train_x.sum(1)[d.train_x.sum(1) > 0], torch.ones(2708)[d.train_x.sum(1) > 0])
    assert not (tmp_path / "cache").exists()         # a root is read in place: nothing written, no processed/
    assert sorted(p.name for p in (Path(ROOT) / "Planetoid" / "Cora").iterdir()) == before   # root untouched
    val = load_dataset("cora", ROOT, options={"evaluate_on": "val", "normalize_features": False})
    assert int((val.test_y != IGNORE).sum()) == 500 and float(val.train_x.max()) == 1.0
    with pytest.raises(DataError, match="evaluate_on"):
        load_dataset("cora", ROOT, options={"evaluate_on": "train"})


@pytest.mark.skipif(not HAVE_CITESEER, reason="Planetoid/CiteSeer/raw not found (set PCGRAPH_DATA)")
def test_citeseer_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    d = load_dataset("citeseer", ROOT)
    assert tuple(d.train_x.shape) == (3327, 3703) and d.num_classes == 6
    assert int((d.train_y != IGNORE).sum()) == 120 and int((d.test_y != IGNORE).sum()) == 1000


def test_a_root_without_planetoid_files_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="Planetoid/Cora/raw"):
        load_dataset("cora", str(tmp_path))


@pytest.mark.skipif(not HAVE_CORA, reason="Planetoid/Cora/raw not found (set PCGRAPH_DATA)")
def test_cora_gcn_learns_in_a_few_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    exp = Experiment.build(Spec.load(GRAPHS / "cora_gcn.yaml"))
    history = Trainer(exp, out=None, progress=False, log=lambda s: None).fit(30)
    assert history[-1]["test_accuracy"] >= 0.7, history[-1]     # 0.82 after the spec's 200 epochs


# ---- the CLI ------------------------------------------------------------------------------------

def test_cli_runs_karate(tmp_path, capsys):
    rc = main(["run", str(GRAPHS / "karate_sage.yaml"), "--epochs", "40", "--no-progress", "--out",
               str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.strip().splitlines()[-1].startswith("final test accuracy")
    acc = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
    assert abs(acc * 30 - round(acc * 30)) < 1e-9, f"{acc} is not a count over the 30 test vertices"
    assert acc >= 0.6, out
    rc = main(["check", str(GRAPHS / "karate_sage.yaml"), "--algorithm", "zil", "--dtype", "float64",
               "--steps", "3"])
    assert rc == 0, capsys.readouterr().out


def test_deepcopy_keeps_the_graph_and_rebuilds_the_template():
    exp = Experiment.build(_karate_spec(), dtype="float64")
    twin = copy.deepcopy(exp.net)
    assert twin.graph is not None and twin.graph.num_nodes == 34 and twin.graph is not exp.net.graph
    inputs, _, _ = next(iter(exp.batches.train()))
    with torch.no_grad():
        torch.testing.assert_close(twin(inputs)["y"], exp.net(inputs)["y"], rtol=0, atol=0)
    exp.net.set_graph(None)
    assert exp.net.graph is None and twin.graph is not None


# ---- dropout: one mask per training step ---------------------------------------------------------

def _dropout_spec(algorithm="zil", optimizer=None) -> Spec:
    """karate: dropout on the input features and on elu(h), GAT attention dropout, a skip."""
    s = Spec(name="karate-dropout", seed=5)
    s.add_node("x", [34], "input").add_node("xd", [34]).add_node("h", [8]).add_node("hd", [8])
    s.add_node("y", [4], "output")
    s.add_edge("x", "xd", "dropout", p=0.3)
    s.add_edge("xd", "h", "gat_conv", "identity", True, heads=2, dropout=0.5)
    s.add_edge("h", "hd", "dropout", "elu", p=0.5)
    s.add_edge("hd", "y", "gcn_conv", "identity", True)
    s.add_edge("xd", "y", "sage_conv", "tanh", False)
    s.set_data(dataset="karate").set_loss("cross_entropy")
    s.set_train(algorithm=algorithm, epochs=1, optimizer=optimizer or {"name": "sgd", "lr": 0.1})
    return s.validate()


@pytest.mark.parametrize("algorithm", ["zil", "fazil"])
def test_zil_equals_bp_with_dropout(algorithm):
    report = check_against_bp(_dropout_spec(algorithm), steps=4, dtype="float64")
    assert report.max_divergence <= 1e-12, report.format()
    assert all(p.bp_update > 1e-6 for p in report.params), report.format()


def test_dropout_masks_are_fixed_within_a_step_new_each_step_and_off_outside():
    exp = Experiment.build(_dropout_spec(), dtype="float64")
    inputs, targets, _ = next(iter(exp.batches.train()))
    net = exp.net
    with torch.no_grad():
        plain = net.values(inputs)
        net.begin_step(0)
        a, again = net.values(inputs), net.values(inputs)
        net.begin_step(1)
        b = net.values(inputs)
        net.begin_step(None)
        off = net.values(inputs)
    assert torch.equal(a["y"], again["y"]) and not torch.equal(a["y"], b["y"])
    assert torch.equal(off["y"], plain["y"]) and not torch.equal(a["y"], plain["y"])
    dropped = a["xd"] == 0
    assert 0.2 < float(dropped[plain["x"] != 0].double().mean()) < 0.4      # p = 0.3 of the features
    torch.testing.assert_close(a["xd"][~dropped], plain["x"][~dropped] / 0.7, rtol=1e-15, atol=0)
    exp.step(inputs, targets)
    assert exp.steps_done == 1 and all(net.compiled.ops[i].step_seed is None
                                       for i in range(len(net.compiled.ops)) if hasattr(net.compiled.ops[i], "step_seed"))
    with torch.no_grad():       # after the step (evaluation): no dropout, deterministic
        out = net.values(inputs)
        assert torch.equal(out["xd"], out["x"]) and torch.equal(net.values(inputs)["y"], out["y"])


def test_dropout_resume_draws_the_masks_of_the_uninterrupted_run(tmp_path):
    spec = _dropout_spec(optimizer={"name": "adam", "lr": 0.01})
    whole = Experiment.build(spec, dtype="float64")
    Trainer(whole, out=None, progress=False, log=lambda s: None).fit(4)
    first = Experiment.build(spec, dtype="float64")
    Trainer(first, out=tmp_path, progress=False, log=lambda s: None).fit(2)
    again = Experiment.build(spec, dtype="float64")
    t = Trainer(again, out=tmp_path, progress=False, log=lambda s: None)
    t.resume()
    t.fit(4)
    assert again.steps_done == 4
    for k, v in whole.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[k], v, rtol=0, atol=0)


def test_dropout_p_must_be_a_probability():
    with pytest.raises(PCGraphError, match=r"p must be in \[0, 1\)"):
        OPS.get("dropout").parse_options({"p": 1.0}, "model.edges[0]")
    with pytest.raises(PCGraphError, match=r"dropout must be in \[0, 1\)"):
        OPS.get("gat_conv").parse_options({"dropout": -0.1}, "model.edges[0]")
