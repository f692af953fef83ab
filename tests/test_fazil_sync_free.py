"""Fa-Z-IL's step reads nothing back to the host beyond what Z-IL's does (the reported loss):
the wave's gate is a bit known from the graph, phi's a mask applied on the device (where the
kernel does not read it: ``read_gate``, on by default on a CPU only), and the detection counts
stay on the device until ``stats`` is read. The mask gives the numbers the read gate gives,
bit for bit."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.rules import make_rule
from pcgraph.rules.fazil import PhiKernel
from helpers import mlp_spec, network, random_batch

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


@contextlib.contextmanager
def host_reads():
    """Count the ways a tensor's value reaches Python (each one a sync on an accelerator)."""
    reads = []
    names = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def spy(name):
        def read(self, *a, **kw):
            reads.append(name)
            return saved[name](self, *a, **kw)
        return read

    equal = torch.equal
    try:
        for n in names:
            setattr(torch.Tensor, n, spy(n))
        torch.equal = lambda *a: reads.append("equal") or equal(*a)
        yield reads
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        torch.equal = equal


def small_rnn() -> Spec:
    return Spec.load(GRAPHS / "seq_mnist_rnn.yaml", overrides=["model.unroll[0].steps=5"])


SPECS = {
    "mlp": lambda: mlp_spec((12, 10), act="sigmoid"),
    "relu": lambda: mlp_spec((12, 10, 8), act="relu", bias=True),
    "rnn": small_rnn,
    "diamond": lambda: Spec.load(GRAPHS / "diamond.yaml"),
}


@pytest.mark.parametrize("settings", [{}, {"trigger": "phi"}, {"trigger": "phi", "gamma": 0.5}, {"gamma": 0.5}])
@pytest.mark.parametrize("name", ["mlp", "relu", "rnn", "diamond"])
def test_no_more_host_reads_than_zil(name, settings):
    net = network(SPECS[name](), dtype=torch.float32)
    inputs, targets = random_batch(net.compiled, batch=4, dtype=torch.float32)
    zil = make_rule("zil", copy.deepcopy(net), {})
    rule = make_rule("fazil", copy.deepcopy(net), settings)
    if settings.get("trigger") == "phi":
        assert rule.kernel.read_gate      # (on a CPU, by default: no sync to save, the skipped VJPs are)
        rule.kernel.read_gate = False     # the accelerators' mask
    for r in (zil, rule):         # (first calls build caches)
        r.compute_grads(inputs, targets)
    with host_reads() as want:
        zil.compute_grads(inputs, targets)
    with host_reads() as got:
        rule.compute_grads(inputs, targets)
    assert len(got) <= len(want), (got, want)
    with host_reads() as got:     # the counts come back when they are read
        rule.stats
    assert got


def bits(t):
    return None if t is None else t.view({4: torch.int32, 8: torch.int64}[t.element_size()]).clone()


def train(net, settings, batches, lr, read_gate):
    net = copy.deepcopy(net)
    rule = make_rule("fazil", net, settings)
    assert isinstance(rule.kernel, PhiKernel)
    rule.kernel.read_gate = read_gate
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    out = []
    for inputs, targets in batches:
        opt.zero_grad(set_to_none=True)
        loss = rule.compute_grads(inputs, targets).loss
        out.append((loss, [bits(p.grad) for p in net.parameters()]))
        opt.step()
    return out, [bits(p.detach()) for p in net.parameters()], vars(rule.stats).copy()


@pytest.mark.parametrize("name,settings,lr", [
    ("relu", {"trigger": "phi", "t_d": 2}, 0.1),
    ("relu", {"trigger": "phi", "gamma": 0.5}, 0.1),       # never fires: grads stay None
    ("mlp", {"trigger": "phi", "t_d": 1, "predict_steps": 2}, 1.0),
    ("diamond", {"trigger": "phi", "t_d": 1}, 1.0),
    ("relu", {"trigger": "phi", "t_d": 1}, 10.0),          # diverges: inf errors, where 0 * inf = NaN
])
def test_phi_device_mask_equals_the_read_gate_bit_for_bit(name, settings, lr):
    net = network(SPECS[name](), dtype=torch.float32)
    batches = [random_batch(net.compiled, batch=4, seed=s, dtype=torch.float32) for s in range(5)]
    got = train(net, settings, batches, lr, read_gate=False)
    want = train(net, settings, batches, lr, read_gate=True)     # the update skipped where none fires
    assert len(got[0]) == len(want[0])
    for (l1, g1), (l2, g2) in zip(got[0], want[0]):
        assert l1 == l2 or (l1 != l1 and l2 != l2)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            assert a is None or torch.equal(a, b)
    for a, b in zip(got[1], want[1]):
        assert torch.equal(a, b)
    assert got[2] == want[2]
    if "gamma" in settings:
        assert all(g is None for _, grads in got[0] for g in grads)


@pytest.mark.parametrize("name", ["relu", "rnn"])
def test_counts_over_many_steps_equal_the_full_dynamics(name):
    """The event-driven path's counts, summed on the device across more steps than one fold,
    equal the full dynamics' (counted there from the masks); the RNN's steps are counted on
    the buffer that stacks them for the shared weights' update."""
    net = network(SPECS[name](), dtype=torch.float32)
    fast = make_rule("fazil", copy.deepcopy(net), {})
    full = make_rule("fazil", copy.deepcopy(net), {})
    full.use_full_dynamics()
    assert fast.event_driven and not full.event_driven
    for seed in range(100 if name == "relu" else 10):
        batch = random_batch(net.compiled, batch=3, seed=seed, dtype=torch.float32)
        fast.compute_grads(*batch)
        full.compute_grads(*batch)
        if seed in (0, 50):
            assert vars(fast.stats) == vars(full.stats)
    assert vars(fast.stats) == vars(full.stats)
    if name == "relu":
        assert 0 < fast.stats.expected < 100 * 3 * (12 + 10 + 8 + 10)     # some errors are 0


def test_nonzero_count_is_exact():
    from pcgraph.rules.fazil import _count_nonzero, _nonzero
    special = [0.0, -0.0, 1e-45, 5e-324, float("inf"), -float("inf"), float("nan"), -1.0, 3e38]
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.tensor(special, dtype=torch.float64).to(dtype)
        assert int(_nonzero(x)) == int(torch.count_nonzero(x)), dtype
        y = torch.relu(torch.randn(3, 5, 7, dtype=torch.float64)).to(dtype)[:, ::2]     # not contiguous
        assert int(_nonzero(y)) == int(torch.count_nonzero(y)), dtype
    ts = [torch.relu(torch.randn(2, 2 ** 14)), *(torch.relu(torch.randn(4, 6)) for _ in range(7)),
          torch.tensor(special), torch.zeros(()), torch.tensor(2.0)]
    assert _count_nonzero(ts) == sum(int(torch.count_nonzero(t)) for t in ts)
