"""The faster executor's paths compute the same numbers as the paths they replace.

- the kernel's dense-``linear`` evaluation (no reshapes) equals the ``linear`` op's, bitwise;
- the output error from the loss value's own log-softmax equals a fresh one, bitwise, with
  exactly 0 on unlabelled samples; the counted value equals ``cross_entropy``;
- ``run_plan(..., scale=s)`` (the batch reduction folded into the parameter VJPs, shared
  groups scaled once at the end) equals ``s`` times the unscaled updates;
- Fa-Z-IL's event-driven path equals its full dynamics (updates and statistics), and is
  Z-IL's computation to the bit (float32 too); ``phi`` keeps the full dynamics.

No timing here: ``pcgraph bench`` measures speed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.compile import PCKernel, build_plan, feedforward, run_plan
from pcgraph.ops.losses import IGNORE, CrossEntropy, Objective
from pcgraph.rules import make_rule
from helpers import graph_spec, mlp_spec, network, random_batch, rel_diff

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def lin(act, bias=True):
    return {"op": "linear", "activation": act, "bias": bias}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_linear_path_equals_the_op_bitwise(dtype, bias):
    net = network(mlp_spec((7, 5), act="tanh", bias=bias), dtype=dtype)
    cg = net.compiled
    k = PCKernel(net, cg.objective("mean"))
    assert all(k.dense)
    g = torch.Generator().manual_seed(0)
    for i, op in enumerate(cg.ops):
        u = torch.randn(6, *op.in_shapes[0], generator=g, dtype=dtype)
        eps = torch.randn(6, *op.out_shape, generator=g, dtype=dtype)
        params = net.edge_params(i)
        k.memo = {}
        fast_mu = k._linearized(i, [u])
        fast_in, fast_p = k.edge_vjp(i, [u], eps, [True], True)
        k.memo = None                      # the reference's path: the op itself
        ref_in, ref_p = k.edge_vjp(i, [u], eps, [True], True)
        assert torch.equal(fast_mu, op.forward(params, u))
        assert torch.equal(fast_in[0], ref_in[0])
        assert fast_p.keys() == ref_p.keys()
        for n in ref_p:
            assert torch.equal(fast_p[n], ref_p[n]), n
        k.memo = {}
        assert k.edge_vjp(i, [u], eps, [False], False) == ([None], None)


def test_dense_path_only_for_vector_linear_edges():
    net = network(Spec.load(GRAPHS / "mnist_cnn.yaml"), dtype=torch.float32)
    k = PCKernel(net, net.compiled.objective("mean"))
    for i, op in enumerate(net.compiled.ops):
        assert k.dense[i] == (op.name == "linear" and len(op.in_shapes[0]) == 1 and len(op.out_shape) == 1)
    assert not all(k.dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_error_reuses_the_values_log_softmax(dtype):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(9, 10, generator=g, dtype=dtype) * 4
    labels = torch.randint(0, 10, (9,), generator=g)
    ce = CrossEntropy()
    onehot = torch.nn.functional.one_hot(labels, 10).to(dtype)
    want = onehot - torch.softmax(mu, 1)
    fresh = ce.error(mu, labels)                        # no value taken: its own log-softmax
    loss, n = ce.value_count(mu, labels)
    assert n == 9 and torch.equal(loss, torch.nn.functional.cross_entropy(mu, labels))
    assert ce._last is not None and ce._last[0] is mu
    reused = ce.error(mu, labels)
    assert torch.equal(fresh, reused)
    assert rel_diff(reused, want) <= (1e-6 if dtype == torch.float32 else 1e-14)
    # the same numbers autograd gives (-dl/dmu of the summed loss)
    m = mu.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(m, labels, reduction="sum").backward()
    assert torch.equal(reused, -m.grad)
    # another tensor, or the same one changed in place: recomputed
    other = mu * 0.5
    assert torch.equal(ce.error(other, labels), CrossEntropy().error(other, labels))
    mu.mul_(2)
    assert torch.equal(ce.error(mu, labels), CrossEntropy().error(mu.clone(), labels))


def test_cross_entropy_unlabelled_rows_are_exactly_zero_and_not_counted():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, IGNORE, 3, 0, IGNORE, 2])
    ce = CrossEntropy()
    loss, n = ce.value_count(mu, labels)
    assert n == 4
    assert torch.equal(loss, torch.nn.functional.cross_entropy(mu, labels, ignore_index=IGNORE))
    e = ce.error(mu, labels)
    assert bool((e[[1, 4]] == 0).all()) and bool((e[[0, 2, 3, 5]] != 0).all())
    obj = Objective({"y": ce})
    obj.value({"y": mu}, {"y": labels})
    assert obj.labelled == 4 and obj.scale(6) == 1 / 4
    obj.value({"y": mu}, {"y": labels.clamp(min=0)})
    assert obj.labelled is None


SPECS = {
    "mlp": lambda: mlp_spec((9, 8, 7), act="tanh", bias=True, loss="cross_entropy"),
    "multi": lambda: graph_spec(
        [("x", 6, "input"), ("h1", 8, "hidden"), ("h2", 5, "hidden"), ("a", 5, "hidden"),
         ("c", 5, "hidden"), ("y", 4, "output")],
        [("x", "h1", lin("identity")), ("h1", "h2", lin("tanh")), ("x", "a", lin("identity")),
         (["a", "h2"], "c", {"op": "mul", "activation": ["identity", "tanh"]}),
         ("c", "y", lin("tanh")), ("h1", "y", lin("sigmoid"))], loss="cross_entropy"),
    "rnn": lambda: Spec.load(GRAPHS / "seq_mnist_rnn.yaml"),
    "cnn": lambda: Spec.load(GRAPHS / "mnist_cnn.yaml"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_scale_folded_into_the_vjps(name):
    net = network(SPECS[name]())
    cg = net.compiled
    inputs, targets = random_batch(cg, batch=4)
    times = [cg.depth[e.dst] if cg.has_params(i) else None for i, e in enumerate(cg.edges)]
    plan = build_plan(cg, times, c1=True)
    k = PCKernel(net, cg.objective("mean"))
    plain = run_plan(k, plan, feedforward(k, inputs), targets).updates
    s = -1 / 3
    folded = run_plan(k, plan, feedforward(k, inputs), targets, scale=s).updates
    assert plain.keys() == folded.keys()
    for key in plain:
        for n in plain[key]:
            assert rel_diff(folded[key][n], s * plain[key][n]) <= 1e-14, (key, n)


def fazil_grads(net, settings, inputs, targets, full=False):
    net = copy.deepcopy(net)
    rule = make_rule("fazil", net, settings)
    if full:
        rule.use_full_dynamics()
    rule.compute_grads(inputs, targets)
    return {k: p.grad.clone() for k, p in net.named_parameters()}, rule


@pytest.mark.parametrize("name", ["mlp", "multi", "rnn", "diamond", "residual_mlp"])
def test_fazil_event_driven_equals_full_dynamics(name):
    spec = SPECS[name]() if name in SPECS else Spec.load(GRAPHS / f"{name}.yaml")
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=5)
    fast, r_fast = fazil_grads(net, {}, inputs, targets)
    full, r_full = fazil_grads(net, {}, inputs, targets, full=True)
    assert r_fast.event_driven and not r_full.event_driven
    assert r_fast.plan.work(net.compiled) < r_full.plan.work(net.compiled)
    for key in full:
        assert rel_diff(fast[key], full[key]) <= 1e-12, key
    assert vars(r_fast.stats) == vars(r_full.stats)
    assert r_fast.stats.expected > 0


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_fazil_is_zil_to_the_bit_in_float32(name):
    net = network(SPECS[name](), dtype=torch.float32)
    inputs, targets = random_batch(net.compiled, batch=5, dtype=torch.float32)
    got, rule = fazil_grads(net, {}, inputs, targets)
    net2 = copy.deepcopy(net)
    make_rule("zil", net2, {}).compute_grads(inputs, targets)
    for k, p in net2.named_parameters():
        assert torch.equal(got[k], p.grad), k


def test_fazil_keeps_the_full_dynamics_where_it_must():
    net = network(SPECS["mlp"]())
    assert make_rule("fazil", copy.deepcopy(net), {}).event_driven
    for settings in ({"trigger": "phi"}, {"gamma": 0.5}, {"predict_steps": 2}, {"reference": True}):
        rule = make_rule("fazil", copy.deepcopy(net), settings)
        assert not rule.event_driven and rule.plan.full, settings


def test_branch_free_count_equals_count_nonzero():
    from pcgraph.rules.fazil import _count_nonzero
    g = torch.Generator().manual_seed(0)
    ts = [torch.relu(torch.randn(8, 4, 6, 6, generator=g)), torch.randn(5, 3, generator=g), torch.zeros(4),
          torch.tensor([-0.0, 1e-45, float("inf"), -float("inf")]),
          torch.tensor([0.0, 5e-324, 1e300], dtype=torch.float64)]
    want = sum(int(torch.count_nonzero(t)) for t in ts)
    assert _count_nonzero(ts) == want and _count_nonzero([]) == 0
    ts.append(torch.tensor([float("nan"), 0.0, 2.0]))                # a NaN counts, as eps != 0 does
    assert _count_nonzero(ts) == want + 2
