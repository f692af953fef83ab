"""The PC kernel is the one definition of the dynamics: the reference interpreter and the
compiled plan share it and nothing else, a kernel hook changes both paths alike, and the
seeds' conditions (C1, C3) act on multi-source graphs (``mul``, ``concat``) as on MLPs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pcgraph.compile as compile_pkg
from pcgraph.compile import PCKernel, build_plan, feedforward, run_plan, run_reference
from pcgraph.rules.zil import ZeroDivergenceIL
from helpers import graph_spec, grads, network, random_batch, rel_diff

COMPILE = Path(compile_pkg.__file__).resolve().parent


def imports(path: Path) -> list[tuple[int, str]]:
    """``(level, module)`` for every import in a file (``import a.b`` -> ``(0, 'a.b')``,
    ``from ..x import y`` -> ``(2, 'x')``), wherever it sits (functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


# ---- (a) the reference interpreter shares only the kernel -------------------------------

def test_reference_interpreter_imports_only_the_kernel():
    found = imports(COMPILE / "interpreter.py")
    assert (1, "kernel") in found
    for level, module in found:
        if level == 0:
            assert module.split(".")[0] in ("torch", "typing", "__future__"), module
        else:
            assert (level, module) == (1, "kernel"), (level, module)
    text = (COMPILE / "interpreter.py").read_text()
    for name in ("executor", "run_plan", "build_plan", "InferencePlan", "_Values"):
        assert name not in text, name


def test_fast_path_does_not_import_the_interpreter():
    for level, module in imports(COMPILE / "executor.py"):
        assert "interpreter" not in module, module


# ---- a graph with mul (3 sources, one broadcast from [1]) and concat, and relays ---------

def lin(act, bias=True):
    return {"op": "linear", "activation": act, "bias": bias}


def multi_source_spec():
    nodes = [("x", 5, "input"), ("h1", 6, "hidden"), ("h2", 4, "hidden"), ("g", 4, "hidden"),
             ("s", 1, "hidden"), ("m", 4, "hidden"), ("c", 10, "hidden"), ("h3", 5, "hidden"),
             ("y", 3, "output")]
    edges = [("x", "h1", lin("identity")), ("h1", "h2", lin("tanh")), ("x", "g", lin("identity")),
             ("h1", "s", lin("sigmoid")),
             (["h2", "g", "s"], "m", {"op": "mul", "activation": ["tanh", "sigmoid", "identity"]}),
             (["m", "h1"], "c", {"op": "concat", "activation": ["leaky_relu", "tanh"]}),
             ("c", "h3", lin("tanh")), ("h3", "y", lin("tanh")), ("x", "y", lin("identity", False))]
    return graph_spec(nodes, edges, loss="cross_entropy")


@pytest.fixture(scope="module")
def setup():
    net = network(multi_source_spec())
    cg = net.compiled
    assert cg.n_relays > 0 and {e.op for e in cg.edges} >= {"mul", "concat", "linear"}
    inputs, targets = random_batch(cg, batch=6)
    return net, inputs, targets


def layer(cg, key: str) -> int:
    """The depth of the node a parameter group's edges feed (one depth per group here)."""
    depths = {cg.depth[cg.edges[i].dst] for i in cg.param_edges[key]}
    assert len(depths) == 1, (key, depths)
    return depths.pop()


# ---- (b) a kernel hook configures both paths ------------------------------------------------

class DoubledMessages(PCKernel):
    """Every message to a source twice as large."""

    def message(self, i, k, g, x, fx):
        return 2.0 * super().message(i, k, g, x, fx)


def updates_of(kernel_cls, net, update_times, T, gamma, inputs, targets):
    """The same kernel class through the fast path and through the reference interpreter."""
    cg = net.compiled
    kernel = kernel_cls(net, cg.objective("mean"), gamma)
    fast = run_plan(kernel, build_plan(cg, update_times, c1=True), feedforward(kernel, inputs), targets).updates
    ref = run_reference(kernel_cls(net, cg.objective("mean"), gamma), update_times, inputs, targets, T)[2]
    return fast, ref


def flat(updates: dict, net) -> dict:
    """``params.<key>.<name>`` -> update (zero where a path took none: known-zero errors)."""
    out = {}
    for k, p in net.named_parameters():
        _, key, name = k.split(".")
        out[k] = updates.get(key, {}).get(name, torch.zeros_like(p))
    return out


SCHEDULES = {   # (update times, gamma): Z-IL's wave, and IL updating every edge at t = T = 5
    "zil": lambda cg: ([cg.depth[e.dst] if cg.has_params(i) else None for i, e in enumerate(cg.edges)], 1.0),
    "il": lambda cg: ([5 if cg.has_params(i) else None for i in range(len(cg.edges))], 0.3),
}


@pytest.mark.parametrize("schedule", ["zil", "il"])
def test_message_hook_changes_plan_and_reference_alike(setup, schedule):
    net, inputs, targets = setup
    cg = net.compiled
    times, gamma = SCHEDULES[schedule](cg)
    T = max(t for t in times if t is not None)
    fast, ref = (flat(u, net) for u in updates_of(DoubledMessages, net, times, T, gamma, inputs, targets))
    base_fast, base_ref = (flat(u, net) for u in updates_of(PCKernel, net, times, T, gamma, inputs, targets))
    for k in fast:
        assert float(base_ref[k].abs().max()) > 0, k
        assert rel_diff(fast[k], ref[k]) <= 1e-12, k
        assert rel_diff(base_fast[k], base_ref[k]) <= 1e-12, k
        if schedule == "zil" and layer(cg, k.split(".")[1]) == 0:
            assert torch.equal(fast[k], base_fast[k]), k      # Z-IL's output layer reads no message
        else:
            assert rel_diff(fast[k], base_fast[k]) > 1e-2, k


def test_doubled_messages_scale_layer_l_by_two_to_the_l(setup):
    """Under C1-C3 the error at depth l is the sum of l doubled messages: 2**l times BP's
    delta. Through a rule whose ``Kernel`` is the subclass, on both paths."""
    net, inputs, targets = setup
    cg = net.compiled

    class Doubled(ZeroDivergenceIL):
        Kernel = DoubledMessages

    bp = grads(net, "bp", {}, inputs, targets)
    for reference in (False, True):
        rule = Doubled(net, Doubled.parse_settings({"reference": reference}))
        for p in net.parameters():
            p.grad = None
        rule.compute_grads(inputs, targets)
        for k, p in net.named_parameters():
            assert rel_diff(p.grad, 2.0 ** layer(cg, k.split(".")[1]) * bp[k]) <= 1e-10, (reference, k)
    for p in net.parameters():
        p.grad = None


# ---- (c) C3: gamma**l ---------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_gamma_scales_layer_l_by_gamma_power_l_with_mul_and_concat(setup, gamma):
    net, inputs, targets = setup
    cg = net.compiled
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {"gamma": gamma}, inputs, targets)
    seen = set()
    for k in bp:
        l = layer(cg, k.split(".")[1])
        seen.add(l)
        assert float(bp[k].abs().max()) > 0, k
        assert rel_diff(zil[k], gamma ** l * bp[k]) <= 1e-10, (k, l)
        if l > 0:
            assert rel_diff(zil[k], bp[k]) > 0.1, k
    assert seen == {0, 1, 4, 5}     # edges below the mul (4) and into h1, under the relays (5)


# ---- (d) C1 -------------------------------------------------------------------------------

def test_breaking_c1_diverges_on_a_multi_source_graph(setup):
    net, inputs, targets = setup
    bp = grads(net, "bp", {}, inputs, targets)
    div = {}
    for sigma in (0.0, 1e-3, 1e-1):
        zil = grads(net, "zil", {"init_noise": sigma}, inputs, targets)
        div[sigma] = max(rel_diff(zil[k], bp[k]) for k in bp)
        ref = grads(net, "zil", {"init_noise": sigma, "reference": True}, inputs, targets)
        assert max(rel_diff(zil[k], ref[k]) for k in bp) <= 1e-12      # same noise on both paths
    assert div[0.0] <= 1e-10
    assert 1e-4 < div[1e-3] < div[1e-1], div
