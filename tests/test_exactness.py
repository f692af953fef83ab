"""Z-IL reproduces autograd's BP exactly (float64); breaking a condition breaks it as
the seeds predict; the compiled plan equals the reference interpreter."""

from __future__ import annotations

import pytest
import torch

from pcgraph.train import check_against_bp
from helpers import grads, mlp_spec, network, random_batch, rel_diff


@pytest.mark.parametrize("hidden", [(20,), (20, 16), (20, 16, 12), (20, 16, 12, 8)])
@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.01}])
def test_zil_equals_autograd_on_mlps(hidden, optimizer):
    spec = mlp_spec(hidden, act="tanh", bias=True, optimizer=optimizer)
    report = check_against_bp(spec, steps=4, dtype="float64")
    assert len(report.params) == 2 * (len(hidden) + 1)
    for p in report.params:
        assert p.bp_update > 0, p.name
        assert p.max_rel <= 1e-10, (p.name, p.max_rel)


@pytest.mark.parametrize("loss,act", [("mse", "sigmoid"), ("cross_entropy", "relu")])
def test_zil_exact_with_losses_and_activations(loss, act):
    report = check_against_bp(mlp_spec((24, 12), act=act, loss=loss), steps=3, dtype="float64")
    assert report.max_divergence <= 1e-10


@pytest.mark.parametrize("gamma", [0.5, 0.1, 5.0])
def test_gamma_scales_layer_l_by_gamma_power_l(gamma):
    spec = mlp_spec((12, 10, 8), act="sigmoid", bias=True)
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=6)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {"gamma": gamma}, inputs, targets)
    depth = net.compiled.depth
    for e in net.compiled.edges:
        l = depth[e.dst]
        for name in ("weight", "bias"):
            k = f"params.{e.key}.{name}"
            assert rel_diff(zil[k], gamma ** l * bp[k]) <= 1e-10, (k, l)
            if l > 0:  # and it is *not* BP's update
                assert rel_diff(zil[k], bp[k]) > 0.01, k


@pytest.mark.parametrize("settings", [
    {"update_at": 0}, {"update_at": 1}, {"update_at": 3}, {"update_at": 16, "T": 16},
    {"init_noise": 0.1}, {"init_noise": 1e-3},
])
def test_breaking_c1_or_c2_diverges(settings):
    spec = mlp_spec((12, 10), act="sigmoid")
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=6)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", settings, inputs, targets)
    worst = max(rel_diff(zil[k], bp[k]) for k in bp)
    assert worst > 1e-4, worst


def test_il_defaults_approximate_but_do_not_equal_bp():
    spec = mlp_spec((12, 10), act="tanh")
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=6)
    bp = grads(net, "bp", {}, inputs, targets)
    il = grads(net, "il", {"T": 40, "gamma": 0.1}, inputs, targets)
    worst = max(rel_diff(il[k], bp[k]) for k in bp)
    assert 1e-6 < worst < 1.0
    cos = [torch.nn.functional.cosine_similarity(il[k].flatten(), bp[k].flatten(), 0) for k in bp]
    assert min(cos) > 0.5


SETTINGS = [
    ("zil", {}), ("zil", {"gamma": 0.5}), ("zil", {"init_noise": 0.3}),
    ("il", {"T": 7, "gamma": 0.2, "update_at": 5}), ("il", {"T": 4, "gamma": 0.3, "init_noise": 0.1}),
    ("il", {"T": 6, "gamma": 0.7, "update_at": "depth"}),
]


@pytest.mark.parametrize("rule,settings", SETTINGS)
def test_plan_equals_reference_interpreter_on_mlp(rule, settings):
    spec = mlp_spec((10, 9, 8), act="tanh", bias=True)
    net = network(spec)
    inputs, targets = random_batch(net.compiled)
    fast = grads(net, rule, settings, inputs, targets)
    ref = grads(net, rule, {**settings, "reference": True}, inputs, targets)
    for k in ref:
        assert rel_diff(fast[k], ref[k]) <= 1e-12, k


def test_zil_plan_is_a_wave():
    """Under C1-C3 step t moves exactly the nodes at depth t + 1: BP's cost."""
    spec = mlp_spec((10, 9, 8, 7))
    net = network(spec)
    from pcgraph.rules import make_rule

    rule = make_rule("zil", net)
    cg = net.compiled
    assert rule.plan.T == 4
    for step in rule.plan.steps:
        assert [a.node for a in step.advance] == ([n for n in cg.levels[step.t + 1] if cg.role(n) == "hidden"]
                                                   if step.t < rule.plan.T else [])
        assert all(cg.depth[cg.edges[i].dst] == step.t for i in step.updates)
        assert step.mu == []  # no prediction is recomputed: every parent is still feed-forward
    # each edge: one param VJP; each edge out of a hidden node: one feedback; no recomputed mu
    assert rule.plan.work(cg) == len(cg.edges) + (len(cg.edges) - 1)
    il = make_rule("il", net, {"T": 20})
    assert il.plan.work(cg) > 10 * rule.plan.work(cg)


def test_sum_reduction_is_exact_and_scales_by_batch():
    spec = mlp_spec((12,), act="sigmoid")
    spec.set_train(reduction="sum")
    report = check_against_bp(spec, steps=3, dtype="float64")
    assert report.max_divergence <= 1e-10
    net_sum, net_mean = network(spec), network(mlp_spec((12,), act="sigmoid"))
    inputs, targets = random_batch(net_sum.compiled, batch=6)
    g_sum = grads(net_sum, "zil", {}, inputs, targets, reduction="sum")
    g_mean = grads(net_mean, "zil", {}, inputs, targets)
    for k in g_sum:
        assert rel_diff(g_sum[k], 6 * g_mean[k]) <= 1e-12
