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
#: per-source activations of multi-source edges (relu / leaky_relu: exact zeros and kinks)
MULTI_ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]
GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


@st.composite
def random_dags(draw, multi: bool = True):
    """Random DAGs: 1-2 inputs, 1-6 hidden nodes, 1-2 outputs; single-source ``linear``
    edges (skips, shared parameters) and, with ``multi``, multi-source ``mul`` (2-3
    sources of equal size or broadcasting a [1]-sized one) and ``concat`` (target size =
    the sum) edges whose sources may repeat a node or be inputs."""
    n_in = draw(st.integers(1, 2))
    n_hid = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 2))
    names = [f"i{k}" for k in range(n_in)] + [f"h{k}" for k in range(n_hid)] + [f"o{k}" for k in range(n_out)]
    role = {n: "input" if n[0] == "i" else "output" if n[0] == "o" else "hidden" for n in names}
    sizes: dict[str, int] = {}
    edges: dict[tuple[tuple[str, ...], str], dict] = {}

    def add(a, b):
        edges[((a,), b)] = {"op": "linear", "activation": draw(st.sampled_from(ACTS)), "bias": draw(st.booleans())}

    def add_multi(op, srcs, b):
        edges[(tuple(srcs), b)] = {"op": op, "activation": [draw(st.sampled_from(MULTI_ACTS)) for _ in srcs]}

    def mul_sources(earlier, size):
        """2-3 sources (repeats allowed) of size ``size`` or 1, one at least of ``size``."""
        full = [a for a in earlier if sizes[a] == size]
        ones = [a for a in earlier if sizes[a] == 1]
        if not full:
            return None
        srcs = [draw(st.sampled_from(full))]
        for _ in range(draw(st.integers(1, 2))):
            srcs.append(draw(st.sampled_from(full + ones)))
        return draw(st.permutations(srcs))

    for j, b in enumerate(names):
        earlier = [a for a in names[:j] if role[a] != "output"]
        if role[b] == "input":
            sizes[b] = draw(st.integers(1, 4))
            continue
        kind = draw(st.sampled_from(["linear", "linear", "mul", "concat"])) if multi else "linear"
        if kind == "concat":                                  # the target's size is the sum
            srcs = [draw(st.sampled_from(earlier)) for _ in range(draw(st.integers(2, 3)))]
            sizes[b] = sum(sizes[a] for a in srcs)
            add_multi("concat", srcs, b)
        else:
            sizes[b] = draw(st.integers(2 if role[b] == "output" else 1, 4))
            srcs = mul_sources(earlier, sizes[b]) if kind == "mul" else None
            if srcs is not None:
                add_multi("mul", srcs, b)
            else:
                add(draw(st.sampled_from(earlier)), b)        # every non-input has a parent
        for a in earlier:                                     # plus random extra (skip) edges
            if ((a,), b) not in edges and draw(st.integers(0, 3)) == 0:
                add(a, b)
        if multi and draw(st.integers(0, 3)) == 0:           # and sometimes an extra product
            srcs = mul_sources(earlier, sizes[b])
            if srcs is not None and (tuple(srcs), b) not in edges:
                add_multi("mul", srcs, b)
    for j, a in enumerate(names):                 # every input and hidden node reaches an output
        if role[a] != "output" and not any(a in srcs for srcs, _ in edges):
            add(a, draw(st.sampled_from([b for b in names[j + 1:] if role[b] != "input"])))
    if not any(kw["op"] == "linear" for kw in edges.values()):   # at least one parameter
        add(names[0], names[-1])
    # shared parameters between linear edges of equal shape
    by_shape: dict[tuple[int, int, bool], list] = {}
    for (srcs, b), kw in edges.items():
        if kw["op"] == "linear":
            by_shape.setdefault((sizes[srcs[0]], sizes[b], kw["bias"]), []).append(kw)
    for g_idx, group in enumerate(by_shape.values()):
        if len(group) > 1 and draw(st.booleans()):
            for kw in group[:draw(st.integers(2, len(group)))]:
                kw["param"] = f"shared{g_idx}"
    losses = {o: draw(st.sampled_from(["mse", "cross_entropy"])) for o in names if role[o] == "output"}
    nodes = [(n, sizes[n], role[n]) for n in names]
    return graph_spec(nodes, [(list(srcs) if len(srcs) > 1 else srcs[0], b, kw) for (srcs, b), kw in edges.items()],
                      loss=losses)


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


def features(spec) -> set[str]:
    """What a generated graph exercises (for the coverage test below)."""
    out = set()
    nodes = spec.model.nodes
    for e in spec.model.edges:
        if len(e.sources) > 1:
            out.add(e.op)
            if len(set(e.sources)) < len(e.sources):
                out.add(f"{e.op} repeated source")
            if any(nodes[s].role == "input" for s in e.sources):
                out.add(f"{e.op} from an input")
            if e.op == "mul" and len({nodes[s].shape for s in e.sources}) > 1:
                out.add("mul broadcast")
            out.update(f"act {a}" for a in e.activations)
        if e.param:
            out.add("shared")
    cg = compile_graph(spec.model, spec.loss)
    if cg.n_relays:
        out.add("relays")
    if any(len(e.sources) > 1 and "relayed_from" in e.meta for e in cg.edges):
        out.add("relayed multi-source")
    return out


def test_random_dags_cover_multi_source_edges():
    seen: dict[str, int] = {}

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(spec=random_dags())
    def collect(spec):
        for f in features(spec):
            seen[f] = seen.get(f, 0) + 1

    collect()
    for f in ("mul", "concat", "mul repeated source", "mul broadcast", "mul from an input", "concat from an input",
              "act relu", "act leaky_relu", "shared", "relays", "relayed multi-source"):
        assert seen.get(f, 0) > 0, (f, seen)


def exact_vs_bp(rule, spec, seed, opt, tol=1e-10):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    batches = [random_batch(cg, batch=4, seed=seed + k) for k in range(3)]
    cfg = {"name": opt, "lr": 0.05}
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    bp = train_steps(net, "bp", {}, batches, cfg)
    got = train_steps(net, rule, {}, batches, cfg)
    for k in bp:
        assert rel_diff(got[k] - start[k], bp[k] - start[k]) <= tol, (rule, k, spec.model)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_dags(), seed=st.integers(0, 2**16), opt=st.sampled_from(["sgd", "adam"]))
def test_zil_exact_on_random_dags(spec, seed, opt):
    exact_vs_bp("zil", spec, seed, opt)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_dags(), seed=st.integers(0, 2**16), opt=st.sampled_from(["sgd", "adam"]))
def test_fazil_exact_on_random_dags(spec, seed, opt):
    """Fa-Z-IL (wave trigger: no schedule, the full dynamics every step) is exact too."""
    exact_vs_bp("fazil", spec, seed, opt)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=random_dags(), seed=st.integers(0, 2**16))
def test_plan_equals_reference_on_random_dags(spec, seed):
    cg = compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=seed, dtype=torch.float64)
    inputs, targets = random_batch(cg, batch=3, seed=seed)
    for rule, s in [("zil", {"gamma": 0.6}), ("il", {"T": 5, "gamma": 0.3, "update_at": 3}),
                    ("zil", {"init_noise": 0.2}), ("fazil", {"trigger": "phi", "t_d": 2, "gamma": 0.8})]:
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
