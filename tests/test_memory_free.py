"""The executor's ``release`` mode (``run_plan(..., release=True)``; ``zil``'s training step
turns it on): every value, ``f(x)`` cache, prediction, error, move and linearization is
dropped right after the plan's last read of it, and a Z-IL wave reads a hidden value after
the feed-forward pass through its ``f(x)`` alone.

- the updates (and ``p.grad``) are bit-identical with and without it, on the graphs of
  ``graphs/`` and on plans that break Z-IL's conditions (noise, ``gamma != 1``, IL's steps,
  FA's and DFA's kernels);
- it does release: the peak working memory of a ``zil`` update on the CNN stays within a
  bound of plain torch autograd's, measured the same way (``pcgraph.bench.peak_bytes``).
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.bench import SpecModule, _loss_fn, peak_bytes
from pcgraph.compile import feedforward, run_plan
from pcgraph.ops.graph_conv import graph_ops
from pcgraph.rules import make_rule
from pcgraph.rules.il import InferenceLearning
from helpers import mlp_spec, network, random_batch

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def _setup(name: str, batch: int = 4, dtype=torch.float32, seed: int = 1):
    spec = Spec.load(GRAPHS / f"{name}.yaml") if isinstance(name, str) else name
    net = network(spec, dtype=dtype)
    if graph_ops(net.compiled):         # a graph network: karate's graph, one row per vertex
        from pcgraph.data import load_dataset
        graph = load_dataset("karate").graph
        net.set_graph(graph)
        batch = graph.num_nodes
    net.begin_step(0)                   # (dropout: one mask, the same for every run below)
    inputs, targets = random_batch(net.compiled, batch=batch, seed=seed, dtype=dtype)
    return net, inputs, targets


def _grads(net, rule_name, settings, inputs, targets, release: bool, reduction="mean"):
    net = copy.deepcopy(net)
    rule = make_rule(rule_name, net, settings, seed=5, reduction=reduction)
    rule.kernel.release = release           # (the step below is il's: it leaves the flag alone)
    InferenceLearning.compute_grads(rule, inputs, targets)
    return {k: p.grad for k, p in net.named_parameters() if p.grad is not None}


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _plan_run(rule, inputs, targets, release: bool, scale=None):
    k = rule.kernel
    state = feedforward(k, inputs)
    if rule.settings.init_noise:
        gen = torch.Generator().manual_seed(11)
        state.perturb(rule.settings.init_noise, gen)
    return run_plan(k, rule.plan, state, targets, scale=scale, release=release)


GRAPH_NAMES = ["mnist_mlp", "mnist_cnn", "residual_mlp", "seq_mnist_rnn", "transformer_block", "cora_gcn"]


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_zil_step_is_bit_identical_with_release(name):
    net, inputs, targets = _setup(name)
    _assert_bitwise(_grads(net, "zil", {}, inputs, targets, release=True),
                    _grads(net, "zil", {}, inputs, targets, release=False))


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_zil_compute_grads_releases_and_restores(name):
    """The rule's own step turns release on for its run only (other callers of the kernel,
    such as ``pcgraph check`` or a test reading ``errors``, see every quantity)."""
    net, inputs, targets = _setup(name)
    a = copy.deepcopy(net)
    rule = make_rule("zil", a, {}, seed=5)
    rule.compute_grads(inputs, targets)
    assert not getattr(rule.kernel, "release", False)
    want = _grads(net, "zil", {}, inputs, targets, release=False)
    _assert_bitwise({k: p.grad for k, p in a.named_parameters() if p.grad is not None}, want)


@pytest.mark.parametrize("name", ["mnist_mlp_wide", "mnist_cnn", "seq_mnist_rnn", "transformer_block"])
@pytest.mark.parametrize("scaled", [False, True])
def test_run_plan_updates_equal_and_something_is_released(name, scaled):
    net, inputs, targets = _setup(name, dtype=torch.float64)
    rule = make_rule("zil", net, {}, seed=5)
    scale = rule.grad_scale(4) if scaled else None
    full = _plan_run(rule, inputs, targets, release=False, scale=scale)
    lean = _plan_run(rule, inputs, targets, release=True, scale=scale)
    _assert_bitwise({(k, n): g for k, grp in lean.updates.items() for n, g in grp.items()},
                    {(k, n): g for k, grp in full.updates.items() for n, g in grp.items()})
    assert len(lean.errors) < len(full.errors)          # errors and values were dropped
    assert len(lean.values) < len(full.values)
    assert rule.kernel.memo is None


SPECS_SMALL = {
    "mlp": lambda: mlp_spec((9, 7, 6), act="tanh", bias=True, loss="mse", n_in=12, n_out=5),
    "relu": lambda: mlp_spec((9, 7), act="relu", bias=True, loss="cross_entropy", n_in=12, n_out=5),
    "residual": lambda: Spec.load(GRAPHS / "residual_mlp.yaml"),
    "concat": lambda: Spec.load(GRAPHS / "concat_branches.yaml"),
}

VARIANTS = [   # (rule, settings): Z-IL's conditions broken one by one, IL's plans, FA / DFA kernels
    ("zil", {}),
    ("zil", {"init_noise": 0.1}),
    ("zil", {"gamma": 0.5}),
    ("zil", {"T": 5, "update_at": 3}),
    ("il", {"T": 4, "gamma": 1.0}),
    ("il", {"T": 6, "gamma": 0.1, "update_at": 4}),
    ("il", {"T": 6, "gamma": 1.0, "update_at": "depth", "init_noise": 0.05}),
    ("fa", {}),
    ("dfa", {}),
]


@pytest.mark.parametrize("spec", list(SPECS_SMALL))
@pytest.mark.parametrize("rule_name,settings", VARIANTS, ids=[f"{r}{s}" for r, s in VARIANTS])
def test_release_is_bit_identical_beyond_zil(spec, rule_name, settings):
    net, inputs, targets = _setup(SPECS_SMALL[spec](), batch=5, dtype=torch.float64)
    rule = make_rule(rule_name, net, settings, seed=5)
    if rule.plan is None:
        pytest.skip("order-free: the energy engine")
    full = _plan_run(rule, inputs, targets, release=False, scale=-0.25)
    lean = _plan_run(rule, inputs, targets, release=True, scale=-0.25)
    _assert_bitwise({(k, n): g for k, grp in lean.updates.items() for n, g in grp.items()},
                    {(k, n): g for k, grp in full.updates.items() for n, g in grp.items()})
    # and the rule's whole step (its own noise draws, write_grads), release on vs off
    _assert_bitwise(_grads(net, rule_name, settings, inputs, targets, release=True),
                    _grads(net, rule_name, settings, inputs, targets, release=False))


@pytest.mark.parametrize("spec", list(SPECS_SMALL))
@pytest.mark.parametrize("how", ["shifted", "copied"])
def test_release_with_a_start_off_the_plans_assumption(spec, how):
    """Z-IL's plan (built for C1) run from values that are not the predictions' own tensors:
    a move is then not known to be exact from the start (``x_v is mu_v`` fails), so its value
    and prediction are kept for the error after it (the executor's ``torch.where``)."""
    net, inputs, targets = _setup(SPECS_SMALL[spec](), batch=5, dtype=torch.float64)
    rule = make_rule("zil", net, {}, seed=5)
    runs = []
    for release in (False, True):
        k = rule.kernel
        state = feedforward(k, inputs)
        for v in list(state.x):
            if net.compiled.role(v) == "hidden":
                state.set(v, state.x[v] + 1e-3 if how == "shifted" else state.x[v].clone())
        runs.append(run_plan(k, rule.plan, state, targets, release=release))
    _assert_bitwise({(k, n): g for k, grp in runs[1].updates.items() for n, g in grp.items()},
                    {(k, n): g for k, grp in runs[0].updates.items() for n, g in grp.items()})


def test_relu_message_from_its_output_is_bitwise():
    """The release path sends relu's message from ``f(x)`` (the pre-activation is gone):
    ``threshold_backward`` masks the same elements, NaN and signed zeros included."""
    from pcgraph.ops.activations import ReLU
    act = ReLU()
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0, float("nan"), float("-inf"), float("inf")])
    g = torch.arange(1.0, 9.0)
    fx = act.f(x)
    assert torch.equal(act.backward(x, fx, g), act.backward(fx, fx, g))


# ---- the peak working memory -------------------------------------------------------------------

def _peak_ratio(name: str, batch: int, release: bool = True, rule_name: str = "zil") -> float:
    """Peak working memory of one ``rule_name`` update (zero_grad, gradients, Adam step) over plain
    torch autograd's on the spec as an ``nn.Module`` (``pcgraph bench``'s ``torch``), each
    after two warm-up updates, measured by ``pcgraph.bench.peak_bytes``."""
    spec = Spec.load(GRAPHS / f"{name}.yaml")
    net, inputs, targets = _setup(spec, batch=batch, seed=3)
    cg = net.compiled

    model = SpecModule(copy.deepcopy(net))
    opt_t = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = _loss_fn(cg.objective("mean"), list(cg.source.outputs))
    (inp,) = cg.source.inputs

    def torch_step():
        opt_t.zero_grad(set_to_none=True)
        loss(model(inputs[inp]), targets).backward()
        opt_t.step()

    pc = copy.deepcopy(net)
    rule = make_rule(rule_name, pc, {}, seed=0)
    opt_z = torch.optim.Adam(pc.parameters(), lr=1e-3)
    compute = rule.compute_grads if release else (lambda i, t: InferenceLearning.compute_grads(rule, i, t))

    def zil_step():
        opt_z.zero_grad(set_to_none=True)
        compute(inputs, targets)
        opt_z.step()

    for _ in range(2):
        torch_step()
        zil_step()
    cpu = torch.device("cpu")
    # the median of three measurements each: the profiler's records of one update move by up
    # to 15% from one measurement to the next on this machine (0.88-1.15 on the wide MLP)
    return (statistics.median(peak_bytes(zil_step, cpu) for _ in range(3))
            / statistics.median(peak_bytes(torch_step, cpu) for _ in range(3)))


def test_zil_peak_memory_on_the_cnn_is_torchs():
    """Measured (batch 64, float32): 1.00x torch with release, 2.0x without (before it:
    the whole forward state lived until the end of the step)."""
    ratio = _peak_ratio("mnist_cnn", 64)
    assert ratio <= 1.1, f"zil's peak working memory is {ratio:.2f}x torch's on the CNN"
    assert _peak_ratio("mnist_cnn", 64, release=False) > 1.5     # (the guard measures something)


def test_zil_peak_memory_on_the_wide_mlp_is_torchs():
    """Measured (batch 1024, float32): 1.00x torch with release, 1.35x without."""
    ratio = _peak_ratio("mnist_mlp_wide", 1024)
    assert ratio <= 1.1, f"zil's peak working memory is {ratio:.2f}x torch's on the wide MLP"


@pytest.mark.parametrize("name,batch", [("mnist_cnn", 64), ("mnist_mlp_wide", 1024)])
def test_fazil_peak_memory_is_near_torchs(name, batch):
    """Fa-Z-IL's event-driven step runs Z-IL's plan with the same release. Measured (float32):
    1.12x torch on the CNN (2.00x before it released; the rest is the integer buffer its
    count of the first convolution's error takes), 1.01x on the wide MLP at batch 1024
    (1.59x before). The issue's bound for Z-IL, 1.2x, holds for it too."""
    ratio = _peak_ratio(name, batch, rule_name="fazil")
    assert ratio <= 1.2, f"fazil's peak working memory is {ratio:.2f}x torch's on {name}"


def test_zil_peak_memory_on_the_rnn_is_torchs():
    """An unrolled RNN's shared weights stack their contributions into three products, one per
    third of the steps. Measured (batch 64, float32): 1.00x torch (1.94x when all 28 steps'
    errors and inputs were stacked into one product at the end)."""
    ratio = _peak_ratio("seq_mnist_rnn", 64)
    assert ratio <= 1.2, f"zil's peak working memory is {ratio:.2f}x torch's on the RNN"


def test_stacked_updates_are_taken_in_parts():
    """The stack is emptied into the updates as it goes: with one part per contribution the
    numbers are those of per-step products, with one part those of one product (float64)."""
    import pcgraph.compile.executor as ex
    spec = Spec.load(GRAPHS / "seq_mnist_rnn.yaml")
    net, inputs, targets = _setup(spec, batch=8, dtype=torch.float64, seed=3)
    got = {}
    for parts in (1, 3, 1000):
        ex._STACK_PARTS = parts
        try:
            got[parts] = _grads(net, "zil", {}, inputs, targets, release=True)
        finally:
            ex._STACK_PARTS = 3
    for parts in (1, 1000):
        for k in got[3]:
            torch.testing.assert_close(got[parts][k], got[3][k], rtol=1e-12, atol=1e-14)
    # (the parts are real: the shared weights' sums are taken in another order each time)
    shared = "params.h_Wh.weight"
    assert not torch.equal(got[1][shared], got[3][shared]) and not torch.equal(got[1][shared], got[1000][shared])
