"""Small float64 graphs and gradient comparisons shared by the tests."""

from __future__ import annotations

import copy

import torch

from pcgraph import Spec, compile_graph
from pcgraph.compile import PCNetwork
from pcgraph.rules import make_rule


def mlp_spec(hidden=(16, 16), act="sigmoid", bias=False, loss="mse", n_in=64, n_out=10,
             algorithm="zil", optimizer=None, dataset="digits", batch_size=16, seed=3) -> Spec:
    s = Spec(name="mlp", seed=seed)
    sizes = [n_in, *hidden, n_out]
    names = ["x"] + [f"h{i + 1}" for i in range(len(hidden))] + ["y"]
    for i, (n, k) in enumerate(zip(names, sizes)):
        s.add_node(n, [k], "input" if i == 0 else "output" if i == len(names) - 1 else "hidden")
    for a, b in zip(names, names[1:]):
        s.add_edge(a, b, "linear", act, bias)
    s.set_data(dataset=dataset, batch_size=batch_size)
    s.set_loss(loss)
    s.set_train(algorithm=algorithm, epochs=1, optimizer=optimizer or {"name": "sgd", "lr": 0.05})
    return s.validate()


def graph_spec(nodes, edges, loss="mse") -> Spec:
    """nodes: [(name, size, role)], edges: [(src, dst, kwargs)]."""
    s = Spec(name="g", seed=0)
    for name, size, role in nodes:
        s.add_node(name, [size], role)
    for src, dst, kw in edges:
        s.add_edge(src, dst, **kw)
    s.set_loss(loss)
    return s.validate()


def random_batch(cg, batch=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    inputs = {v: torch.randn(batch, *cg.graph.nodes[v].shape, generator=g, dtype=dtype) for v in cg.graph.inputs}
    targets = {}
    for o in cg.graph.outputs:
        shape = cg.graph.nodes[o].shape
        labels = torch.randint(0, shape[0], (batch,), generator=g)
        targets[o] = cg.losses[o].target(labels, shape, dtype)
    return inputs, targets


def grads(net, rule_name, settings, inputs, targets, seed=0, reduction="mean"):
    """One batch's parameter gradients under a rule, on a copy of ``net``."""
    net = copy.deepcopy(net)
    rule = make_rule(rule_name, net, settings, seed=seed, reduction=reduction)
    rule.compute_grads(inputs, targets)
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in net.named_parameters()}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    return err / scale if scale > 0 else err


def network(spec: Spec, seed=1, dtype=torch.float64) -> PCNetwork:
    return PCNetwork(compile_graph(spec.model, spec.loss), seed=seed, dtype=dtype)


def assert_same(a, b, path="") -> None:
    """Exact equality of nested state (tensors bitwise with their shape and dtype, bytes, ints and
    floats by value; a NaN float matches only a NaN float, as it does bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{k}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, path
    else:
        assert a == b, path


def run_launcher(argv: list, timeout: float = 240, **kw):
    """Run a process that may start others (``pcgraph run --nproc``): wait for it, and on a
    timeout stop it with SIGTERM (the elastic agent then stops its workers) before SIGKILL.
    Returns ``(returncode, stdout, stderr)``."""
    import subprocess

    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    finally:
        stop_process(launcher)
    return launcher.returncode, stdout, stderr


def stop_process(proc) -> None:
    """If ``proc`` still runs: SIGTERM (a launcher then stops its workers), and SIGKILL after 60 s."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def adding_yaml(name: str, epochs: int) -> str:
    """The adding problem (generated, nothing to import) as YAML: 50 training samples in batches
    of 16 (16, 16, 16, 2), a 12-16-1 zil network under Adam; each step takes a few milliseconds."""
    return f"""\
name: {name}
seed: 3
data: {{dataset: adding, batch_size: 16, test_batch_size: 25, options: {{length: 6, train_size: 50, test_size: 45}}}}
model:
  nodes:
    - {{name: x, shape: [12], role: input}}
    - {{name: h, shape: [16]}}
    - {{name: y, shape: [1], role: output}}
  edges:
    - {{from: x, to: h, op: linear, activation: identity, bias: true}}
    - {{from: h, to: y, op: linear, activation: tanh, bias: true}}
loss: mse
train:
  algorithm: zil
  epochs: {epochs}
  optimizer: {{name: adam, lr: 0.01}}
"""


def tiny_yaml(algorithm: str) -> str:
    """A 64-8-10 digits network as YAML (64 training and 64 test samples, one epoch)."""
    return f"""\
name: tiny
data: {{dataset: digits, batch_size: 32, train_subset: 64, test_subset: 64}}
model:
  nodes:
    - {{name: x, shape: [64], role: input}}
    - {{name: h, shape: [8]}}
    - {{name: y, shape: [10], role: output}}
  edges:
    - {{from: x, to: h}}
    - {{from: h, to: y}}
loss: mse
train: {{algorithm: {algorithm}, epochs: 1, optimizer: {{name: sgd, lr: 0.01}}}}
"""


def causal_cross_attention_spec() -> Spec:
    """x -> q (linear) and x -> kv (token_linear) -> causal two-head cross attention -> y (10 classes)."""
    s = Spec(name="att", seed=3)
    s.add_node("x", [6, 8], role="input").add_node("q", [5, 8]).add_node("kv", [6, 8])
    s.add_node("a", [5, 12]).add_node("y", [10], role="output")
    s.add_edge("x", "q", op="linear", activation="identity", bias=True)
    s.add_edge("x", "kv", op="token_linear", activation="tanh", bias=True)
    s.add_edge(["q", "kv"], "a", op="attention", activation=["identity", "tanh"], heads=2, causal=True, bias=True)
    s.add_edge("a", "y", op="linear", activation="tanh", bias=True)
    return s.set_loss("cross_entropy")
