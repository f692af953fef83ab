"""Unrolled recurrent networks: the `unroll` construct, exactness of Z-IL / Fa-Z-IL vs BPTT."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcgraph import Spec, compile_graph
from pcgraph.compile import PCNetwork
from pcgraph.errors import PCGraphError
from helpers import grads, random_batch, rel_diff


def rnn_spec(T=5, cell="rnn", hidden=6, d=3, steps=None, readout="last", bias=True, act="tanh",
             n_out=4, extra_edge=False) -> Spec:
    s = Spec(name="rnn", seed=0)
    s.add_node("s", [T, d], "input")
    ro = {"to": "y", "shape": [n_out], "activation": "tanh", "bias": True, "steps": readout}
    s.add_unroll("h", steps or T, "s", [hidden], cell=cell, activation=act, bias=bias, readout=ro)
    if extra_edge:          # a user edge reading an unrolled node: h_1 also feeds a second head
        s.add_node("y0", [n_out], "output")
        s.add_edge("h1", "y0", activation="sigmoid")
    s.set_loss("cross_entropy")
    return s.validate()


def check_exact(spec, rules=("zil", "fazil"), seed=0, batch=4):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    inputs, targets = random_batch(cg, batch=batch, seed=seed)
    bp = grads(net, "bp", {}, inputs, targets)
    assert all(float(g.abs().max()) > 0 for g in bp.values()), "a parameter got no BP gradient"
    for rule in rules:
        got = grads(net, rule, {}, inputs, targets)
        for k in bp:
            assert rel_diff(got[k], bp[k]) <= 1e-10, (rule, k)
    return cg


@pytest.mark.parametrize("T", [1, 2, 5, 28])
def test_rnn_is_bptt(T):
    cg = check_exact(rnn_spec(T, hidden=5, d=3))
    # W_x on every step, W_h on steps 2..T: one shared group each, summed over the steps
    assert len(cg.param_edges["h_Wx"]) == T
    assert len(cg.param_edges.get("h_Wh", [])) == T - 1


@pytest.mark.parametrize("T", [1, 2, 5])
def test_gru_is_bptt(T):
    cg = check_exact(rnn_spec(T, cell="gru", hidden=4, d=3))
    assert len(cg.param_edges["h_Wz"]) == T and len(cg.param_edges.get("h_Un", [])) == T - 1


def test_many_to_many_and_user_edges():
    spec = rnn_spec(4, readout="all", extra_edge=True)
    assert spec.model.outputs == ["y1", "y2", "y3", "y4", "y0"]    # declaration order
    cg = check_exact(spec)
    assert len(cg.param_edges["y_W"]) == 4          # one readout shared by the steps
    check_exact(rnn_spec(5, cell="gru", readout=[2, 5]))


def test_the_input_slices_are_derived_and_need_no_relays():
    cg = compile_graph(rnn_spec(6).model, "cross_entropy")
    assert cg.derived == {f"h_x{k}" for k in range(1, 7)}
    assert cg.n_relays == 0                        # the plain RNN is a balanced chain
    gru = compile_graph(rnn_spec(3, cell="gru").model, "cross_entropy")
    assert not any(n.startswith("h_x") for n in gru.graph.nodes if "~" in n)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 9), cell=st.sampled_from(["rnn", "gru"]), hidden=st.integers(1, 5), d=st.integers(1, 3),
       act=st.sampled_from(["tanh", "sigmoid", "relu"]), readout=st.sampled_from(["last", "all"]),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_random_unrolled_networks_are_exact(T, cell, hidden, d, act, readout, bias, seed):
    act = act if cell == "rnn" else "tanh"      # a GRU's activations are fixed (another one is refused)
    check_exact(rnn_spec(T, cell=cell, hidden=hidden, d=d, act=act, readout=readout, bias=bias), seed=seed)


def test_unroll_round_trips_compactly(tmp_path):
    spec = rnn_spec(5, cell="gru", readout="all")
    d = spec.to_dict()
    assert [n["name"] for n in d["model"]["nodes"]] == ["s"]           # the cell is not written out
    assert d["model"]["unroll"][0]["cell"] == "gru" and d["model"]["unroll"][0]["steps"] == 5
    back = Spec.from_dict(copy.deepcopy(d))
    assert back == spec and list(back.model.nodes) == list(spec.model.nodes)
    path = tmp_path / "rnn.yaml"
    spec.save(path)
    assert Spec.load(path) == spec
    shorter = Spec.load(path, overrides=["model.unroll[0].steps=3"])
    assert shorter.model.outputs == ["y1", "y2", "y3"]


def test_networkx_shows_the_unrolled_graph():
    g = rnn_spec(3).model.to_networkx()
    values = {n for n, a in g.nodes(data=True) if a["kind"] != "factor"}
    assert {"h1", "h2", "h3", "h_x1", "y"} <= values
    assert g.nodes["h2->h3#7"]["param"] == "h_Wh" and g.nodes["s->h_x3#5"]["op"] == "select"


@pytest.mark.parametrize("mutate, where, message", [
    (lambda u: u.update(input="nope"), "model.unroll[0].input", "is not a node"),
    (lambda u: u.update(steps=40), "model.unroll[0].input", "T >= steps"),
    (lambda u: u.update(cell="lstm"), "model.unroll[0].cell", "expected 'rnn' or 'gru'"),
    (lambda u: u.update(steps="5"), "model.unroll[0].steps", "expected int"),
    (lambda u: u.update(shape=[]), "model.unroll[0].shape", "hidden state's shape"),
    (lambda u: u.update(colour=1), "model.unroll[0].colour", "unknown key"),
    (lambda u: u["readout"].update(steps=[9]), "model.unroll[0].readout.steps", "must lie in 1..5"),
    (lambda u: u.update(name=""), "model.unroll[0].name", "needs a 'name'"),
])
def test_unroll_errors_are_located(mutate, where, message):
    d = rnn_spec(5).to_dict()
    mutate(d["model"]["unroll"][0])
    with pytest.raises(PCGraphError) as info:
        Spec.from_dict(d)
    assert info.value.where.startswith(where), str(info.value)
    assert message in str(info.value)


def test_unroll_error_in_a_yaml_file_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  nodes:\n    - {name: s, shape: [4, 2], role: input}\n  unroll:\n"
                    "    - {name: h, steps: 4, input: s, shape: [3], cell: lstm}\n")
    with pytest.raises(PCGraphError) as info:
        Spec.load(path)
    assert str(info.value).startswith(f"{path}:5:") and "model.unroll[0].cell" in str(info.value)
