"""Exact Z-IL on arbitrary DAGs: random graphs (hypothesis) and the example graphs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcgraph import Spec, compile_graph
from pcgraph.compile import PCNetwork
from pcgraph.rules import make_rule
from pcgraph.train import check_against_bp
from helpers import graph_spec, grads, random_batch, rel_diff

ACTS = ["sigmoid", "tanh", "relu", "identity"]
GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


@st.composite
def random_dags(draw):
    n_in = draw(st.integers(1, 2))
    n_hid = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 2))
    names = [f"i{k}" for k in range(n_in)] + [f"h{k}" for k in range(n_hid)] + [f"o{k}" for k in range(n_out)]
    role = {n: "input" if n[0] == "i" else "output" if n[0] == "o" else "hidden" for n in names}
    sizes = {n: draw(st.integers(2, 4)) for n in names}
    edges: dict[tuple[str, str], dict] = {}

    def add(a, b):
        edges[(a, b)] = {"activation": draw(st.sampled_from(ACTS)), "bias": draw(st.booleans())}

    for j, b in enumerate(names):
        if role[b] == "input":
            continue
        earlier = [a for a in names[:j] if role[a] != "output"]
        add(draw(st.sampled_from(earlier)), b)          # every non-input has a parent
        for a in earlier:                                 # plus random extra (skip) edges
            if (a, b) not in edges and draw(st.integers(0, 3)) == 0:
                add(a, b)
    for j, a in enumerate(names):                 # every input and hidden node reaches an output
        if role[a] != "output" and not any(e[0] == a for e in edges):
            add(a, draw(st.sampled_from([b for b in names[j + 1:] if role[b] != "input"])))
    # shared parameters between edges of equal shape
    by_shape: dict[tuple[int, int], list] = {}
    for (a, b), kw in edges.items():
        by_shape.setdefault((sizes[a], sizes[b], kw["bias"]), []).append(kw)
    for g_idx, group in enumerate(by_shape.values()):
        if len(group) > 1 and draw(st.booleans()):
            for kw in group[:draw(st.integers(2, len(group)))]:
                kw["param"] = f"shared{g_idx}"
    losses = {o: draw(st.sampled_from(["mse", "cross_entropy"])) for o in names if role[o] == "output"}
    nodes = [(n, sizes[n], role[n]) for n in names]
    return graph_spec(nodes, [(a, b, kw) for (a, b), kw in edges.items()], loss=losses)


def train_steps(net, rule, settings, batches, opt_cfg):
    from pcgraph.train import make_optimizer

    net = copy.deepcopy(net)
    r = make_rule(rule, net, settings)
    opt = make_optimizer(opt_cfg, net.parameters())
    for inputs, targets in batches:
        opt.zero_grad(set_to_none=True)
        r.compute_grads(inputs, targets)
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_dags(), seed=st.integers(0, 2**16), opt=st.sampled_from(["sgd", "adam"]))
def test_zil_exact_on_random_dags(spec, seed, opt):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    batches = [random_batch(cg, batch=4, seed=seed + k) for k in range(3)]
    cfg = {"name": opt, "lr": 0.05}
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    bp = train_steps(net, "bp", {}, batches, cfg)
    zil = train_steps(net, "zil", {}, batches, cfg)
    for k in bp:
        assert rel_diff(zil[k] - start[k], bp[k] - start[k]) <= 1e-10, (k, spec.model)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_dags(), seed=st.integers(0, 2**16))
def test_plan_equals_reference_on_random_dags(spec, seed):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    inputs, targets = random_batch(cg, batch=3, seed=seed)
    for rule, s in [("zil", {"gamma": 0.6}), ("il", {"T": 5, "gamma": 0.3, "update_at": 3}),
                    ("zil", {"init_noise": 0.2})]:
        fast = grads(net, rule, s, inputs, targets)
        ref = grads(net, rule, {**s, "reference": True}, inputs, targets)
        for k in ref:
            assert rel_diff(fast[k], ref[k]) <= 1e-12, (rule, s, k)


@pytest.mark.parametrize("name", ["residual_mlp", "diamond", "two_heads"])
def test_example_dags_are_exact(name):
    spec = Spec.load(GRAPHS / f"{name}.yaml")
    report = check_against_bp(spec, steps=3, dtype="float64")
    assert report.max_divergence <= 1e-10
    assert all(p.bp_update > 0 for p in report.params)


@pytest.mark.parametrize("name", ["residual_mlp", "diamond", "two_heads"])
def test_relays_are_what_makes_dags_exact(name):
    """Without balancing (update at the longest distance) the skips break exactness."""
    spec = Spec.load(GRAPHS / f"{name}.yaml")
    cg = compile_graph(spec.model, spec.loss, balance_paths=False)
    net = PCNetwork(cg, seed=0, dtype=torch.float64)
    inputs, targets = random_batch(cg, batch=8)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {}, inputs, targets)
    assert max(rel_diff(zil[k], bp[k]) for k in bp) > 1e-3
    balanced = compile_graph(spec.model, spec.loss)
    assert balanced.n_relays > 0
    relays = [n for n, v in balanced.to_networkx().nodes(data=True) if v["kind"] == "relay"]
    assert len(relays) == balanced.n_relays
    net_b = PCNetwork(balanced, seed=0, dtype=torch.float64)
    assert sum(p.numel() for p in net_b.parameters()) == sum(p.numel() for p in net.parameters())


def test_shared_parameter_sums_updates_over_edges():
    spec = Spec.load(GRAPHS / "residual_mlp.yaml")
    cg = compile_graph(spec.model, spec.loss)
    assert len(cg.param_edges["W_rec"]) == 2
    assert {cg.depth[cg.edges[i].dst] for i in cg.param_edges["W_rec"]} == {1, 2}
