"""Fa-Z-IL: no update schedule, phi-gated learning; equals Z-IL once t_d is long enough."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pcgraph import Spec
from pcgraph.rules import make_rule
from pcgraph.train import check_against_bp
from helpers import grads, mlp_spec, network, random_batch, rel_diff

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
