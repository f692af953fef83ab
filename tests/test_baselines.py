"""The Bartunov et al. (2018) baselines: FA, DFA, TP, DTP, SDTP, AO-SDTP.

FA and DFA are configurations of the PC kernel on Z-IL's schedule: checked against
autograd implementations of FA / DFA written here (custom ``autograd.Function``s whose
backward uses the fixed random matrices), and FA with ``B = W`` against BP. The target-
propagation family is checked formula by formula: the targets on an invertible linear
network with exact inverses, the forward and inverse updates against autograd on the
local losses (linear, conv and locally-connected layers), the schedules, the spec errors
for graphs a rule cannot serve, presets, and that every rule lowers the training loss.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import grads, graph_spec, mlp_spec, network, random_batch, rel_diff

from pcgraph import Experiment, Spec, Trainer
from pcgraph.errors import SpecError
from pcgraph.rules import make_rule
from pcgraph.spec.schema import select_algorithm

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def tanh_mlp(hidden=(7, 6, 5), loss="cross_entropy", bias=True):
    return mlp_spec(hidden=hidden, act="tanh", bias=bias, loss=loss, n_in=8, n_out=4)


def cnn_spec():
    """x [1, 8, 8] -conv 3x3-> c [3, 8, 8] -tanh, LC 3x3 stride 2-> l [4, 4, 4] -tanh, linear-> y [5]."""
    s = Spec(name="cnn", seed=0)
    s.add_node("x", [1, 8, 8], "input").add_node("c", [3], "hidden").add_node("l", [4], "hidden")
    s.add_node("y", [5], "output")
    s.add_edge("x", "c", "conv2d", "identity", True, kernel_size=3, padding=1)
    s.add_edge("c", "l", "locally_connected2d", "tanh", True, kernel_size=3, stride=2, padding=1)
    s.add_edge("l", "y", "linear", "tanh", True)
    s.set_loss("cross_entropy")
    return s.validate()


def all_grads(net):
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def max_rel(a, b):
    return max(rel_diff(a[k], b[k]) for k in b)


# ---- FA ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [tanh_mlp, cnn_spec], ids=["mlp", "conv+lc"])
def test_fa_with_feedback_equal_to_the_weights_is_bp(make):
    net = network(make())
    inputs, targets = random_batch(net.compiled, 6)
    bp = grads(net, "bp", {}, inputs, targets)
    fa_net = copy.deepcopy(net)
    rule = make_rule("fa", fa_net, {})
    for key, names in rule.fb_names.items():
        for n in names:
            rule.set_feedback(key, n, fa_net.params[key][n].detach())
    rule.compute_grads(inputs, targets)
    assert max_rel(all_grads(fa_net), bp) < 1e-12
    # with its own random feedback it is a different rule, except at the output layer
    fa = grads(net, "fa", {}, inputs, targets)
    last = [k for k in bp if k.startswith(f"params.{net.compiled.edges[-1].key}.")]
    assert all(rel_diff(fa[k], bp[k]) < 1e-12 for k in last)
    assert max(rel_diff(fa[k], bp[k]) for k in bp if k not in last) > 0.05


class _FALinear(torch.autograd.Function):
    """``u W^T + b`` whose backward sends ``g B`` (not ``g W``) to the input: FA by autograd."""

    @staticmethod
    def forward(ctx, u, W, b, B):
        ctx.save_for_backward(u, B)
        return u @ W.t() + b

    @staticmethod
    def backward(ctx, g):
        u, B = ctx.saved_tensors
        return g @ B, g.t() @ u, g.sum(0), None


def test_fa_is_feedback_alignment_by_autograd():
    net = network(tanh_mlp())
    inputs, targets = random_batch(net.compiled, 6)
    fa_net = copy.deepcopy(net)
    rule = make_rule("fa", fa_net, {})
    rule.compute_grads(inputs, targets)
    # autograd FA on a copy of the same weights and the rule's own B
    ref = copy.deepcopy(net)
    cg = ref.compiled
    h = inputs["x"]
    for i, e in enumerate(cg.edges):
        p = ref.params[e.key]
        B = getattr(rule, f"fb__{e.key}__weight")
        h = _FALinear.apply(cg.acts[i][0].f(h), p["weight"], p["bias"], B)
    loss = rule.objective.value({"y": h}, targets)
    loss.backward()
    assert max_rel(all_grads(fa_net), all_grads(ref)) < 1e-12


def test_fa_pc_relaxes_with_random_feedback_and_the_reference_agrees():
    net = network(tanh_mlp())
    inputs, targets = random_batch(net.compiled, 6)
    fa = grads(net, "fa", {}, inputs, targets)
    fa_ref = grads(net, "fa", {"reference": True}, inputs, targets)
    assert max_rel(fa_ref, fa) < 1e-12
    pc = grads(net, "fa", {"T": 20, "gamma": 0.1, "update_at": None}, inputs, targets)
    pc_ref = grads(net, "fa", {"T": 20, "gamma": 0.1, "update_at": None, "reference": True}, inputs, targets)
    assert max_rel(pc_ref, pc) < 1e-10
    assert max_rel(pc, fa) > 1e-3            # FA-PC is its own rule


# ---- DFA --------------------------------------------------------------------------------

def test_dfa_is_direct_feedback_alignment():
    net = network(tanh_mlp())
    inputs, targets = random_batch(net.compiled, 6)
    dnet = copy.deepcopy(net)
    rule = make_rule("dfa", dnet, {})
    rule.compute_grads(inputs, targets)
    # by hand: e = -dl/dy; delta_l = f'(x_l) * (e D_l) for every hidden layer
    cg = net.compiled
    with torch.no_grad():
        x = net.values(inputs)
    e = rule.objective.error("y", x["y"], targets["y"])
    want = {}
    for i, edge in enumerate(cg.edges):
        dst = edge.dst
        if dst == "y":
            delta = e
        else:
            out_edge = cg.out_edges(dst)[0][0]
            D = rule.projections(out_edge)[0]
            delta = (1 - torch.tanh(x[dst]) ** 2) * (e @ D)
        u = cg.acts[i][0].f(x[edge.sources[0]])
        scale = -rule.objective.scale(6)
        want[f"params.{edge.key}.weight"] = scale * delta.t() @ u
        want[f"params.{edge.key}.bias"] = scale * delta.sum(0)
    assert max_rel(all_grads(dnet), want) < 1e-12


def test_dfa_refuses_dynamics_other_than_the_wave():
    net = network(tanh_mlp())
    with pytest.raises(SpecError, match="unknown"):
        make_rule("dfa", net, {"T": 20})


# ---- the target-propagation family -----------------------------------------------------

def linear_chain(n=4, depth=3, loss="mse"):
    return mlp_spec(hidden=(n,) * (depth - 1), act="identity", bias=True, loss=loss, n_in=n, n_out=n)


def exact_inverses(rule, net):
    """``V = W^{-T}``, ``c = -b W^{-T}``: ``g(h) = h V + c`` inverts ``h W^T + b``."""
    with torch.no_grad():
        for layer in rule.inverse_layers():
            W, b = net.params[layer.key]["weight"], net.params[layer.key]["bias"]
            Vt = torch.linalg.inv(W).t()
            rule.inv[layer.key]["V_weight"].copy_(Vt)
            rule.inv[layer.key]["c"].copy_(-b @ Vt)


@pytest.mark.parametrize("name", ["dtp", "sdtp", "tp"])
def test_targets_with_exact_inverses_follow_the_formula(name):
    net = network(linear_chain(), seed=4)
    inputs, targets = random_batch(net.compiled, 5)
    targets = {"y": torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    rule = make_rule(name, net, {"alpha": 0.3} if name == "dtp" else {})
    exact_inverses(rule, net)
    hat = rule.targets(inputs, targets)
    x = net.values(inputs)
    W = {v: net.params[e.key]["weight"].detach() for e in net.compiled.edges for v in [e.dst]}
    y_hat = targets["y"]
    if name == "dtp":     # a gradient step of the mse loss through the last layer
        h2 = x["h2"] + 0.3 * (y_hat - x["y"]) @ W["y"]
    else:                 # through the exact inverse: the forward of h2^ gives the target
        h2 = x["h2"] + (y_hat - x["y"]) @ torch.linalg.inv(W["y"]).t()
    assert torch.allclose(hat["h2"], h2, atol=1e-10, rtol=0)
    # below, the difference correction with exact inverses: h1 + (h2^ - h2) W2^{-T}
    h1 = x["h1"] + (h2 - x["h2"]) @ torch.linalg.inv(W["h2"]).t()
    assert torch.allclose(hat["h1"], h1, atol=1e-10, rtol=0)
    if name != "dtp":
        fwd = (hat["h2"] @ net.params["h2_to_y"]["weight"].t() + net.params["h2_to_y"]["bias"]).detach()
        assert torch.allclose(fwd, y_hat, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["dtp", "sdtp", "ao_sdtp", "tp"])
@pytest.mark.parametrize("make", [tanh_mlp, cnn_spec], ids=["mlp", "conv+lc"])
def test_updates_are_the_gradients_of_the_local_losses(name, make):
    """Forward: 1/2||F_l(h_{l-1}) - h^_l||^2 per layer (task loss at the top); inverse:
    1/2||r - g_l(F_l(h~))||^2; both against autograd on the same tensors."""
    if name == "ao_sdtp" and make is cnn_spec:
        make = tanh_mlp
    net = network(make())
    inputs, targets = random_batch(net.compiled, 6)
    rule = make_rule(name, net, {"sigma": 0.2})
    gen_state = rule.generator.get_state()
    with torch.no_grad():
        hat = rule.targets(inputs, targets)
    rule.generator.set_state(gen_state)
    for p in list(net.parameters()) + list(rule.parameters()):
        p.grad = None
    rule.compute_grads(inputs, targets)
    got = {**{k: p.grad.clone() for k, p in net.named_parameters()},
           **{k: p.grad.clone() for k, p in rule.named_parameters()}}

    ref_net, ref_rule = copy.deepcopy(net), copy.deepcopy(rule)
    ref_rule.generator.set_state(gen_state)
    for p in list(ref_net.parameters()) + list(ref_rule.parameters()):
        p.grad = None
    L = len(rule.layers)
    with torch.no_grad():
        xs, hs = ref_rule.feedforward(inputs)
    B = xs[0].shape[0]
    total = 0
    for l, layer in enumerate(ref_rule.layers, start=1):
        x_l = ref_net.contribution(layer.edge, [hs[l - 1]])
        if l == L:
            total = total + ref_rule.objective.value({"y": x_l}, targets)
        else:
            total = total + 0.5 * ((ref_rule.act(l).f(x_l) - hat[layer.dst]) ** 2).sum() / B
    for layer in ref_rule.inverse_layers():
        l = ref_rule.layers.index(layer) + 1
        h_noisy = hs[l - 1] + 0.2 * torch.randn(hs[l - 1].shape, generator=ref_rule.generator, dtype=hs[l - 1].dtype)
        with torch.no_grad():
            y, extra = ref_rule.inverse_input(l, h_noisy)
        rec = _reference_inverse(ref_rule, l, y, hs[l - 1], extra)
        goal = h_noisy if ref_rule.inverse_loss == "noise_preserving" else hs[l - 1]
        total = total + 0.5 * ((rec - goal) ** 2).sum() / B
    total.backward()
    want = {**{k: p.grad for k, p in ref_net.named_parameters()},
            **{k: p.grad for k, p in ref_rule.named_parameters() if p.grad is not None}}
    assert set(want) == set(got)
    assert max_rel(got, want) < 1e-10


def _reference_inverse(rule, l, y, like, extra):
    """``g_l(y)`` by autograd alone: the transposed op as ``(dz/dx)^T y`` of a dummy forward
    ``z = op(x; V)`` (Bartunov's Appendix 5.4), differentiable in ``V``, ``c`` and ``V_aux``."""
    layer = rule.layers[l - 1]
    net = rule.net
    params = dict(net.edge_params(layer.edge))
    group = rule.inv[layer.key]
    for n in rule.weight_names(layer):
        params[n] = group[f"V_{n}"]
    dummy = torch.zeros_like(like, requires_grad=True)
    z = net.compiled.ops[layer.edge].forward(params, dummy)
    pre = torch.autograd.grad(z, dummy, y, create_graph=True)[0] + group["c"]
    if extra is not None:
        pre = pre + (extra @ group["V_aux"]).reshape(like.shape)
    return rule.act(l - 1).f(pre)


def test_alternating_schedule_trains_one_loss_per_epoch():
    net = network(tanh_mlp())
    inputs, targets = random_batch(net.compiled, 6)
    rule = make_rule("sdtp", net, {"schedule": "alternating"})
    for epoch, (fwd, inv) in [(1, (False, True)), (2, (True, False)), (3, (False, True))]:
        rule.start_epoch(epoch)
        for p in list(net.parameters()) + list(rule.parameters()):
            p.grad = None
        rule.compute_grads(inputs, targets)
        assert all((p.grad is not None) == fwd for p in net.parameters())
        assert all((p.grad is not None) == inv for p in rule.parameters())


@pytest.mark.parametrize("name", ["tp", "dtp", "sdtp", "ao_sdtp"])
def test_graphs_target_propagation_cannot_serve_are_refused_with_the_reason(name):
    residual = graph_spec([("x", 8, "input"), ("h1", 6, "hidden"), ("h2", 6, "hidden"), ("y", 4, "output")],
                          [("x", "h1", {}), ("h1", "h2", {"activation": "tanh"}),
                           ("h1", "y", {"activation": "tanh"}), ("h2", "y", {"activation": "tanh"})])
    with pytest.raises(SpecError, match="incoming edges.*chain of layers.*fa and dfa"):
        make_rule(name, network(residual), {})
    # fa and dfa train it
    net = network(residual)
    inputs, targets = random_batch(net.compiled, 4)
    for rule in ("fa", "dfa"):
        assert all(torch.isfinite(g).all() for g in grads(net, rule, {}, inputs, targets).values())


def test_a_broken_chain_is_a_clear_cli_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pcgraph.cli", "run", str(GRAPHS / "residual_mlp.yaml"),
                          "--algorithm", "dtp", "--epochs", "1", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "chain of layers" in out.stderr + out.stdout


# ---- presets and training ---------------------------------------------------------------

def test_presets_select_a_rule_its_settings_and_optimizer():
    spec = Spec.load(GRAPHS / "bartunov_mnist_fc.yaml", algorithm="dtp_alternating")
    assert spec.train.algorithm.name == "dtp"
    assert spec.train.algorithm.settings["schedule"] == "alternating"
    assert spec.train.optimizer["lr"] == pytest.approx(0.000308)
    # a plain rule name drops the settings of another rule, and keeps those of its own
    data = {"train": {"algorithm": {"name": "il", "T": 7}}}
    assert select_algorithm(data, "zil")["train"]["algorithm"] == "zil"
    assert select_algorithm(data, "il")["train"]["algorithm"] == {"name": "il", "T": 7}
    with pytest.raises(SpecError, match="train.presets.bad"):
        Spec.from_dict({**Spec.load(GRAPHS / "quickstart.yaml").to_dict(),
                        "train": {"presets": {"bad": {"algorithm": "bp", "lr": 1}}}})


@pytest.mark.parametrize("name", ["fa", "dfa", "tp", "dtp", "sdtp", "ao_sdtp"])
def test_every_rule_lowers_the_training_loss(name):
    spec = mlp_spec(hidden=(32, 32), act="tanh", bias=True, loss="cross_entropy", batch_size=32,
                    algorithm={"name": name}, optimizer={"name": "adam", "lr": 0.002})
    exp = Experiment.build(spec, dtype="float32")
    batches = list(exp.batches.train())
    losses = []
    for step in range(240):
        inputs, targets, _ = batches[step % len(batches)]
        losses.append(exp.step(inputs, targets))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.9 * first, (name, first, last)       # chance is ln 10 = 2.30


def test_rule_state_is_checkpointed_and_resumed(tmp_path):
    spec = mlp_spec(hidden=(16, 16), act="tanh", bias=True, loss="cross_entropy", batch_size=64,
                    algorithm={"name": "dtp", "schedule": "alternating"}, optimizer={"name": "adam", "lr": 0.002})
    spec = spec.set_train(max_steps_per_epoch=5)
    one = Trainer(Experiment.build(spec, dtype="float64"), out=tmp_path / "a", progress=False, log=lambda m: None)
    one.fit(epochs=3)
    two = Trainer(Experiment.build(spec, dtype="float64"), out=tmp_path / "b", progress=False, log=lambda m: None)
    two.fit(epochs=2)
    three = Trainer(Experiment.build(spec, dtype="float64"), out=tmp_path / "b", progress=False, log=lambda m: None)
    three.resume()
    three.fit(epochs=3)
    a = {**one.exp.net.state_dict(), **one.exp.rule.state_dict()}
    b = {**three.exp.net.state_dict(), **three.exp.rule.state_dict()}
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


def test_glorot_init_option():
    """``init: glorot_uniform`` (the paper's initialisation): weights within
    ``sqrt(6 / (fan_in + fan_out))``, biases 0; an unknown init is a located error."""
    s = Spec(name="g", seed=0)
    s.add_node("x", [1, 8, 8], "input").add_node("c", [4], "hidden").add_node("l", [3], "hidden")
    s.add_node("y", [5], "output")
    s.add_edge("x", "c", "conv2d", "identity", True, kernel_size=3, padding=1, init="glorot_uniform")
    s.add_edge("c", "l", "locally_connected2d", "tanh", True, kernel_size=3, stride=2, padding=1,
               init="glorot_uniform")
    s.add_edge("l", "y", "linear", "tanh", True, init="glorot_uniform")
    net = network(s.set_loss("cross_entropy").validate())
    fans = {"x_to_c": (9, 36), "c_to_l": (36, 27), "l_to_y": (48, 5)}
    for key, (fan_in, fan_out) in fans.items():
        bound = (6 / (fan_in + fan_out)) ** 0.5
        w = net.params[key]["weight"].detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.8 * bound
        assert float(net.params[key]["bias"].detach().abs().max()) == 0
    bad = mlp_spec().to_dict()
    bad["model"]["edges"][0]["init"] = "he"
    with pytest.raises(SpecError, match=r"unknown init 'he'.*glorot_uniform") as err:
        Spec.from_dict(bad)
    assert "edges[0]" in str(err.value) or "x->h1" in str(err.value)


def _have_mnist() -> bool:
    import os
    root = os.environ.get("PCGRAPH_DATA")
    return bool(root) and (Path(root) / "MNIST").is_dir()


@pytest.mark.mnist
@pytest.mark.skipif(not _have_mnist(), reason="MNIST files not found (set PCGRAPH_DATA)")
def test_the_bartunov_benchmark_writes_its_table_and_resumes(tmp_path):
    script = GRAPHS.parent / "benchmarks" / "bartunov.py"
    args = [sys.executable, str(script), "--nets", "mnist_fc", "--methods", "bp,sdtp", "--out", str(tmp_path),
            "--set", "data.train_subset=256", "--set", "data.test_subset=64", "--threads", "1"]
    first = subprocess.run([*args, "--epochs", "1"], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*args, "--epochs", "2"], capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert "epoch   1" not in second.stdout and "epoch   2" in second.stdout     # resumed, not redone
    table = (tmp_path / "table.md").read_text()
    assert "| bp |" in table and "| sdtp |" in table and "3.52" in table       # the paper's SDTP test error
    assert (tmp_path / "curves.png").stat().st_size > 1000
    import json
    results = json.loads((tmp_path / "results.json").read_text())
    assert [h["epoch"] for h in results["mnist_fc"]["sdtp"]] == [1, 2]


def test_an_unknown_label_lists_the_rules_and_the_specs_presets():
    with pytest.raises(SpecError, match=r"'nope' is neither a learning rule \(.*dtp.*\) nor one of this "
                                        r"spec's presets \(bp, zil, fa, .*ao_sdtp_alternating\)"):
        Spec.load(GRAPHS / "bartunov_mnist_fc.yaml", algorithm="nope")
