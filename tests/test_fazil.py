"""Fa-Z-IL: no update schedule, trigger-gated learning.

The ``wave`` trigger (default) is exact wherever Z-IL is, including where an error is
exactly 0 when the wave passes (relu units that are off, a node whose children are all
inactive, tanh/sigmoid saturated to f' = 0 in float32, a zero factor of a ``mul``).
Song's ``phi`` trigger misfires there, and the statistics count it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.ops import get_activation
from pcgraph.rules import make_rule
from pcgraph.train import check_against_bp
from helpers import graph_spec, grads, mlp_spec, network, random_batch, rel_diff

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def fazil(net, settings, inputs, targets):
    net = copy.deepcopy(net)
    rule = make_rule("fazil", net, settings)
    rule.compute_grads(inputs, targets)
    return {k: p.grad.clone() for k, p in net.named_parameters()}, rule


@pytest.mark.parametrize("hidden", [(12,), (12, 10), (12, 10, 8)])
@pytest.mark.parametrize("t_d", [4, 5, 8])
def test_fazil_equals_zil_on_seed_mlps(hidden, t_d):
    net = network(mlp_spec(hidden, act="sigmoid"))
    inputs, targets = random_batch(net.compiled, batch=8)
    zil = grads(net, "zil", {}, inputs, targets)
    got, rule = fazil(net, {"t_d": t_d}, inputs, targets)
    for k in zil:
        assert rel_diff(got[k], zil[k]) <= 1e-10, k
    assert rule.stats.success_rate == 1.0 and rule.stats.false_fires == 0


@pytest.mark.parametrize("name", ["residual_mlp", "diamond", "two_heads"])
def test_fazil_matches_bp_on_example_dags(name):
    spec = Spec.load(GRAPHS / f"{name}.yaml", overrides=["train.algorithm=fazil"])
    assert check_against_bp(spec, steps=2, dtype="float64").max_divergence <= 1e-10


def test_short_window_misfires_and_diverges():
    """tanh without bias: deep errors sit at exactly 0 until the input's wave arrives, so a
    window shorter than the graph's height mistakes the wave for feedback."""
    net = network(mlp_spec((12, 10, 8), act="tanh", bias=False))
    inputs, targets = random_batch(net.compiled, batch=8)
    zil = grads(net, "zil", {}, inputs, targets)
    rates = {}
    for t_d in (1, 2, 3, 4):
        got, rule = fazil(net, {"t_d": t_d, "trigger": "phi"}, inputs, targets)
        rates[t_d] = rule.stats.success_rate
        worst = max(rel_diff(got[k], zil[k]) for k in zil)
        if t_d < 4:
            assert rule.stats.false_fires > 0 and worst > 1e-3
        else:
            assert rule.stats.false_fires == 0 and worst <= 1e-10
    assert rates[1] < rates[2] < rates[3] < rates[4] == 1.0


def test_fazil_depends_on_c3():
    net = network(mlp_spec((12, 10), act="sigmoid"))
    inputs, targets = random_batch(net.compiled, batch=8)
    zil = grads(net, "zil", {}, inputs, targets)
    got, _ = fazil(net, {"gamma": 0.5, "predict_steps": 60}, inputs, targets)
    assert max(rel_diff(got[k], zil[k]) for k in zil) > 1e-3


# ---- relu / leaky_relu: units with f' = 0 at the wave ----------------------------------

def worst(a, b):
    return max(rel_diff(a[k], b[k]) for k in b)


def with_activation(spec: Spec, act: str) -> Spec:
    """``spec`` with every edge out of a hidden node reading it through ``act``."""
    spec = copy.deepcopy(spec)
    for e in spec.model.edges:
        if spec.model.nodes[e.sources[0]].role == "hidden":
            e.activation = act
    return spec


def inactive_units(net, inputs, act="relu"):
    """Per node read through ``act``: how many (sample, unit) values have f'(x) = 0."""
    cg = net.compiled
    x = net.values(inputs)
    a = get_activation(act)
    out = {}
    for i, e in enumerate(cg.edges):
        for k, src in enumerate(e.sources):
            if cg.acts[i][k].name == act and cg.role(src) == "hidden":
                out[src] = int((a.df(x[src], a.f(x[src])) == 0).sum())
    return out


def relu_cases():
    mlp = mlp_spec((12, 10, 8), act="relu", bias=True)
    return [("mlp", mlp)] + [(name, with_activation(Spec.load(GRAPHS / f"{name}.yaml"), "relu"))
                             for name in ("residual_mlp", "diamond", "two_heads")]


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("name,spec", relu_cases(), ids=[n for n, _ in relu_cases()])
def test_fazil_exact_with_relu(name, spec, act):
    """Hidden nodes feed their children through relu / leaky_relu, on the MLP and on the
    example DAGs (skips, relays, a shared parameter, two heads)."""
    spec = with_activation(spec, act)
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=8)
    if act == "relu":   # the data really has units that are off at the wave
        dead = inactive_units(net, inputs)
        assert dead and all(n > 0 for n in dead.values()), dead
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {}, inputs, targets)
    assert worst(zil, bp) <= 1e-10
    got, rule = fazil(net, {}, inputs, targets)
    assert worst(got, bp) <= 1e-10 and worst(got, zil) <= 1e-10
    assert rule.stats.false_fires == 0 and rule.stats.success_rate == 1.0
    assert rule.stats.judged == rule.stats.expected > 0
    phi, rule = fazil(net, {"trigger": "phi"}, inputs, targets)
    if act == "relu":   # an off unit's error is 0 at the wave and turns non-zero later
        assert rule.stats.false_fires > 0 and rule.stats.success_rate < 1.0
        assert rule.stats.judged > rule.stats.expected
        assert worst(phi, bp) > 1e-3
    else:               # leaky_relu: f' > 0 everywhere, nothing rests at 0 at the wave
        assert rule.stats.false_fires == 0 and worst(phi, bp) <= 1e-10


@pytest.mark.parametrize("name", ["residual_mlp", "diamond"])
def test_fazil_matches_bp_with_relu_over_steps(name):
    spec = with_activation(Spec.load(GRAPHS / f"{name}.yaml", overrides=["train.algorithm=fazil"]), "relu")
    assert check_against_bp(spec, steps=2, dtype="float64").max_divergence <= 1e-10


# ---- zero feedback ---------------------------------------------------------------------

def lin(act, bias=True):
    return {"op": "linear", "activation": act, "bias": bias}


def sliced(batch: dict, idx) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def check_wave_exact_phi_misfires(net, inputs, targets, min_phi_div=1e-3, tol=1e-10):
    """Wave: equals Z-IL (and keeps doing so when the dynamics run longer); phi:
    misfires, the statistics say so, and its updates are not Z-IL's."""
    zil = grads(net, "zil", {}, inputs, targets)
    got, rule = fazil(net, {}, inputs, targets)
    assert worst(got, zil) <= tol
    assert rule.stats.false_fires == 0 and rule.stats.success_rate == 1.0
    longer, rule = fazil(net, {"T": rule.T + 3}, inputs, targets)
    assert worst(longer, zil) <= tol and rule.stats.false_fires == 0
    phi, rule = fazil(net, {"trigger": "phi"}, inputs, targets)
    st = rule.stats
    assert st.false_fires > 0 and st.success_rate < 1.0 and st.judged > st.detected, st
    assert worst(phi, zil) > min_phi_div
    return st


def test_zero_feedback_when_all_children_are_inactive():
    """(a) For sample 0 every unit of c is off (c -> y through relu: pre-activations set
    negative by c's bias), so q (c's parent) receives exactly zero feedback; q's own
    parent p keeps moving (the skip p -> y feeds it), so q's error turns non-zero after
    the wave: phi fires there, the wave does not."""
    nodes = [("x", 6, "input"), ("p0", 8, "hidden"), ("p", 8, "hidden"), ("q", 6, "hidden"),
             ("c", 5, "hidden"), ("y", 4, "output")]
    edges = [("x", "p0", lin("identity")), ("p0", "p", lin("tanh")), ("p", "q", lin("tanh")),
             ("q", "c", lin("tanh")), ("c", "y", lin("relu")), ("p", "y", lin("tanh"))]
    net = network(graph_spec(nodes, edges), seed=2)
    inputs, targets = random_batch(net.compiled, batch=6, seed=1)
    with torch.no_grad():
        net.params["q_to_c"]["weight"].mul_(8)
        pre = net.values(inputs)["c"] - net.params["q_to_c"]["bias"]
        net.params["q_to_c"]["bias"].copy_(-pre[0] - 0.1)
        c = net.values(inputs)["c"]
    assert bool((c[0] < 0).all()) and bool((c[1:] > 0).any())
    # q's feedback for sample 0 is exactly zero: BP's gradient w.r.t. q's incoming weights
    one = sliced(inputs, slice(0, 1)), sliced(targets, slice(0, 1))
    bp0 = grads(net, "bp", {}, *one)
    assert float(bp0["params.p_to_q.weight"].abs().max()) == 0.0
    assert float(bp0["params.p0_to_p.weight"].abs().max()) > 0.0
    # sample 0 alone: only the zero-feedback nodes (q, and c behind it) can misfire
    st = check_wave_exact_phi_misfires(net, *one)
    assert st.false_fires == 6 + 5
    check_wave_exact_phi_misfires(net, inputs, targets)
    assert worst(grads(net, "fazil", {}, inputs, targets), grads(net, "bp", {}, inputs, targets)) <= 1e-10


@pytest.mark.parametrize("act,bias", [("tanh", 12.0), ("sigmoid", 20.0)])
def test_zero_feedback_from_float32_saturation(act, bias):
    """(b) Four units of h3 saturated so far that f' = 1 - tanh^2 (sigmoid: s (1 - s))
    rounds to exactly 0 in float32 (not in float64): their error is 0 at the wave and
    turns non-zero when h2 moves. Fa-Z-IL (wave) equals Z-IL to float32 rounding."""
    spec = mlp_spec((10, 10, 8, 8), act=act, bias=True, n_in=8, n_out=4)
    net = network(spec, seed=4, dtype=torch.float32)
    inputs, targets = random_batch(net.compiled, batch=8, seed=2, dtype=torch.float32)
    with torch.no_grad():
        net.params["h2_to_h3"]["weight"][:4].mul_(3)
        signs = torch.tensor([1.0, -1.0, 1.0, -1.0]) if act == "tanh" else torch.ones(4)
        net.params["h2_to_h3"]["bias"][:4] = bias * signs
        h3 = net.values(inputs)["h3"]
    f = get_activation(act)
    d32 = f.df(h3, f.f(h3))
    d64 = f.df(h3.double(), f.f(h3.double()))
    assert int((d32 == 0).sum()) == 4 * 8 and bool((d32[:, 4:] != 0).all())
    assert bool((d64 != 0).all())           # it is float32's rounding, not the model
    st = check_wave_exact_phi_misfires(net, inputs, targets, min_phi_div=1e-2, tol=1e-6)
    assert st.false_fires >= 4 * 8


def test_zero_feedback_from_a_zero_factor_of_mul():
    """(c) c = a * tanh(b) with a's units 0 and 1 exactly 0 (zero weight rows and bias):
    b's feedback there is exactly 0 because of the op, while f'(b) = 1 - tanh(b)^2 > 0.
    b's parent h2 moves after the wave, so phi misfires on those units of b."""
    nodes = [("x", 6, "input"), ("h1", 8, "hidden"), ("h2", 8, "hidden"), ("a", 5, "hidden"),
             ("b", 5, "hidden"), ("c", 5, "hidden"), ("y", 4, "output")]
    edges = [("x", "h1", lin("identity")), ("h1", "h2", lin("tanh")), ("h2", "b", lin("tanh")),
             ("x", "a", lin("identity")), (["a", "b"], "c", {"op": "mul", "activation": ["identity", "tanh"]}),
             ("c", "y", lin("tanh"))]
    net = network(graph_spec(nodes, edges), seed=2)
    with torch.no_grad():
        net.params["x_to_a"]["weight"][:2] = 0
        net.params["x_to_a"]["bias"][:2] = 0
    inputs, targets = random_batch(net.compiled, batch=6, seed=1)
    with torch.no_grad():
        x = net.values(inputs)
    assert bool((x["a"][:, :2] == 0).all()) and bool((x["a"][:, 2:] != 0).all())
    assert bool((1 - torch.tanh(x["b"]) ** 2 > 0).all())
    bp = grads(net, "bp", {}, inputs, targets)
    assert float(bp["params.h2_to_b.weight"][:2].abs().max()) == 0.0   # BP's delta of b is 0 there
    assert float(bp["params.h2_to_b.weight"][2:].abs().min()) > 0.0
    st = check_wave_exact_phi_misfires(net, inputs, targets)
    assert st.false_fires == 6 * 2                                     # b's units 0, 1 in every sample
    assert worst(grads(net, "fazil", {}, inputs, targets), bp) <= 1e-10


# ---- reference interpreter and C3 -----------------------------------------------------------

@pytest.mark.parametrize("trigger", ["wave", "phi"])
@pytest.mark.parametrize("name", ["mlp", "diamond"])
def test_fazil_reference_equals_fast_path(name, trigger):
    spec = mlp_spec((12, 10, 8), act="relu", bias=True) if name == "mlp" else \
        with_activation(Spec.load(GRAPHS / "diamond.yaml"), "relu")
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=6)
    fast, r_fast = fazil(net, {"trigger": trigger, "t_d": 3}, inputs, targets)
    ref, r_ref = fazil(net, {"trigger": trigger, "t_d": 3, "reference": True}, inputs, targets)
    assert worst(fast, ref) <= 1e-12
    assert vars(r_fast.stats) == vars(r_ref.stats)


def test_fazil_depends_on_c3_on_a_dag():
    """gamma = 0.5: Fa-Z-IL runs its own dynamics with that step. After a long prediction
    phase (C1 holds to rounding) the wave gives Z-IL's gamma = 0.5 updates (gamma**l times
    BP's), not BP's; with the default short prediction phase C1 is broken as well."""
    spec = Spec.load(GRAPHS / "diamond.yaml")
    net = network(spec)
    cg = net.compiled
    inputs, targets = random_batch(cg, batch=6)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {}, inputs, targets)
    zil_half = grads(net, "zil", {"gamma": 0.5}, inputs, targets)
    got, _ = fazil(net, {"gamma": 0.5, "predict_steps": 80}, inputs, targets)
    assert worst(got, zil) > 1e-3
    assert worst(got, zil_half) <= 1e-10
    for i, e in enumerate(cg.edges):
        if cg.has_params(i):
            k = f"params.{e.key}.weight"
            assert rel_diff(got[k], 0.5 ** cg.depth[e.dst] * bp[k]) <= 1e-10, k
    short, _ = fazil(net, {"gamma": 0.5}, inputs, targets)
    assert worst(short, zil_half) > 1e-3 and worst(short, zil) > 1e-3
