"""Rules own parameters and buffers: a feedback-alignment-like Z-IL defined here (a
kernel hook, a fixed random buffer per linear edge, a trainable parameter) is trained
by the spec's optimizer or its own, checkpointed and resumed exactly; IL's RNG and
Fa-Z-IL's statistics survive the round trip too."""

from __future__ import annotations

import copy
import io
import shutil

import pytest
import torch
from torch import nn

from pcgraph import Experiment, Trainer
from pcgraph.compile import PCKernel
from pcgraph.rules import RULES, make_rule
from pcgraph.rules.zil import ZeroDivergenceIL
from helpers import assert_same, grads, mlp_spec, network, random_batch, rel_diff

FA_NAME = "test-feedback-alignment-zil"
FA_OWN_NAME = "test-feedback-alignment-zil-own-opt"
RULE_LR = 0.05


class FAKernel(PCKernel):
    """PC with the input part of every linear edge's VJP through a fixed random matrix
    ``B_i`` (the rule's buffer) instead of the weight: feedback alignment's messages."""

    def __init__(self, net, objective, gamma, rule):
        super().__init__(net, objective, gamma)
        object.__setattr__(self, "rule", rule)

    def edge_vjp(self, i, us, eps_c, wanted, want_params):
        B = self.rule.feedback(i)
        if B is None:
            return super().edge_vjp(i, us, eps_c, wanted, want_params)
        (u,) = us
        gin = [(eps_c.reshape(eps_c.shape[0], -1) @ B).reshape(u.shape) if wanted[0] else None]
        gp = self.cg.ops[i].vjp_params(self.net.edge_params(i), us, eps_c) if want_params else None
        return gin, gp


class FeedbackAlignmentZIL(ZeroDivergenceIL):
    """Z-IL's schedule with feedback alignment's messages. Owns one buffer ``B_i`` per
    linear edge (the weight's shape, fixed) and a trainable per-output ``gain`` that
    tracks each output's per-sample loss (its gradient is ``gain - loss_o``)."""

    name = FA_NAME

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        cg = net.compiled
        gen = torch.Generator().manual_seed(seed + 101)
        self.fb_edges = []
        for i, e in enumerate(cg.edges):
            if e.op == "linear":
                w = net.edge_params(i)["weight"]
                B = (torch.rand(w.shape, generator=gen, dtype=w.dtype) * 2 - 1) / w.shape[1] ** 0.5
                self.register_buffer(f"B{i}", B.to(w.device))
                self.fb_edges.append(i)
        self.outputs = list(cg.graph.outputs)
        self.gain = nn.Parameter(torch.zeros(len(self.outputs), dtype=net.dtype, device=net.device))
        self.kernel = FAKernel(net, self.objective, self.settings.gamma, self)

    def feedback(self, i):
        return getattr(self, f"B{i}") if i in self.fb_edges else None

    def compute_grads(self, inputs, targets):
        info = super().compute_grads(inputs, targets)
        batch = next(iter(inputs.values())).shape[0]
        with torch.no_grad():
            per_out = torch.stack([
                torch.as_tensor(self.objective.per_sample(
                    float(self.objective.value({o: info.outputs[o]}, {o: targets[o]})), batch), dtype=self.gain.dtype)
                for o in self.outputs]).to(self.gain.device)
            g = self.gain.detach() - per_out
            self.gain.grad = g if self.gain.grad is None else self.gain.grad + g
        return info


class FeedbackAlignmentOwnOptimizer(FeedbackAlignmentZIL):
    name = FA_OWN_NAME

    def optimizer_config(self):
        return {"name": "sgd", "lr": RULE_LR, "momentum": 0.9}


# registered once per process (a rerun in the same interpreter must not register twice)
if FA_NAME not in RULES:
    RULES.register(FA_NAME)(FeedbackAlignmentZIL)
if FA_OWN_NAME not in RULES:
    RULES.register(FA_OWN_NAME)(FeedbackAlignmentOwnOptimizer)


def digits_spec(algorithm, hidden=(16, 12), optimizer=None, steps=3):
    spec = mlp_spec(hidden, act="tanh", bias=True, algorithm=algorithm, batch_size=16,
                    optimizer=optimizer or {"name": "adam", "lr": 0.01})
    spec.set_data(train_subset=96, test_subset=32)
    spec.set_train(max_steps_per_epoch=steps, epochs=2)
    return spec.validate()


def build(spec):
    return Experiment.build(spec, dtype="float64")


def snapshot(exp) -> dict:
    """Everything that determines the continuation of training."""
    return {"net": copy.deepcopy(exp.net.state_dict()), "rule": copy.deepcopy(exp.rule.state_dict()),
            "opt": copy.deepcopy(exp.optimizer.state_dict()),
            "rule_opt": copy.deepcopy(exp.rule_optimizer.state_dict()) if exp.rule_optimizer else None}


def batches(exp, n):
    out = []
    for inputs, targets, _ in exp.batches.train():
        out.append((inputs, targets))
        if len(out) == n:
            return out
    return out


# ---- (i) / (ii): the rule's parameters are trained ----------------------------------------

def test_rule_parameter_joins_the_spec_optimizer():
    exp = build(digits_spec(FA_NAME))
    rule = exp.rule
    assert type(rule).__name__ == "FeedbackAlignmentZIL"
    assert rule.trainable() == [rule.gain] and exp.rule_optimizer is None
    groups = exp.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["params"] == [rule.gain]
    assert not any(p is rule.gain for p in groups[0]["params"])
    names = set(rule.state_dict())
    assert "gain" in names and {f"B{i}" for i in rule.fb_edges} <= names
    assert all(not n.startswith("net") for n in names)           # the network is not the rule's state
    buffers = {f"B{i}": getattr(rule, f"B{i}").clone() for i in rule.fb_edges}
    g0 = rule.gain.detach().clone()
    for inputs, targets in batches(exp, 3):
        exp.step(inputs, targets)
    assert not torch.equal(rule.gain.detach(), g0)
    assert rule.gain.grad is not None
    for name, B in buffers.items():
        assert torch.equal(getattr(rule, name), B)                # buffers are not trained


def test_rule_with_its_own_optimizer():
    exp = build(digits_spec(FA_OWN_NAME))
    rule = exp.rule
    assert exp.rule_optimizer is not None and exp.rule_optimizer is not exp.optimizer
    assert isinstance(exp.rule_optimizer, torch.optim.SGD)
    assert exp.rule_optimizer.param_groups[0]["params"] == [rule.gain]
    assert exp.rule_optimizer.param_groups[0]["lr"] == RULE_LR
    assert len(exp.optimizer.param_groups) == 1
    assert not any(p is rule.gain for p in exp.optimizer.param_groups[0]["params"])
    assert exp.optimizers == [exp.optimizer, exp.rule_optimizer]
    # first step of SGD (momentum buffer = grad): gain <- gain - lr * (gain - loss)
    (inputs, targets), = batches(exp, 1)
    g0 = rule.gain.detach().clone()
    loss = exp.step(inputs, targets)
    expected = g0 - RULE_LR * (g0 - loss)
    assert torch.allclose(rule.gain.detach(), expected, rtol=0, atol=1e-12)
    assert exp.rule_optimizer.state_dict()["state"]                 # momentum buffer exists


# ---- (iii): checkpoints hold the rule's state; resume continues identically ----------

@pytest.mark.parametrize("name", [FA_NAME, FA_OWN_NAME])
def test_resume_restores_rule_state_and_continues_identically(tmp_path, name):
    spec = digits_spec(name)
    quiet = {"progress": False, "log": lambda _: None}

    full = build(spec)
    full_history = Trainer(full, out=tmp_path / "full", **quiet).fit(2)

    first = build(spec)
    Trainer(first, out=tmp_path / "split", **quiet).fit(1)
    after_one = snapshot(first)

    fresh = build(spec)
    with torch.no_grad():                       # make sure resuming is what restores them
        fresh.rule.gain.fill_(123.0)
        for i in fresh.rule.fb_edges:
            getattr(fresh.rule, f"B{i}").zero_()
    trainer = Trainer(fresh, out=tmp_path / "split", **quiet)
    trainer.resume()
    assert trainer.start_epoch == 1
    assert_same(snapshot(fresh), after_one)
    if fresh.rule_optimizer is not None:
        assert fresh.rule_optimizer.state_dict()["state"]
    trainer.fit(2)
    assert_same(snapshot(fresh), snapshot(full))
    assert not torch.equal(fresh.rule.gain.detach(), after_one["rule"]["gain"])   # it kept training
    assert [r["train_loss"] for r in trainer.history] == [r["train_loss"] for r in full_history]


# ---- (iv): the FA variant is a different rule, but not at the output layer -----------------

def test_feedback_alignment_differs_from_zil_except_at_the_output_layer():
    spec = mlp_spec((12, 10), act="tanh", bias=True)
    net = network(spec)
    inputs, targets = random_batch(net.compiled, batch=8)
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {}, inputs, targets)
    fa = grads(net, FA_NAME, {}, inputs, targets)
    for k in bp:
        assert rel_diff(zil[k], bp[k]) <= 1e-10
    for k in ("params.h2_to_y.weight", "params.h2_to_y.bias"):   # driven by eps_y alone
        assert torch.equal(fa[k], zil[k]), k
    for k in ("params.h1_to_h2.weight", "params.x_to_h1.weight", "params.x_to_h1.bias"):
        assert rel_diff(fa[k], zil[k]) > 1e-2, k
    # ... and the difference is the feedback matrices: with B = W it is Z-IL again
    net2 = copy.deepcopy(net)
    rule = make_rule(FA_NAME, net2)
    with torch.no_grad():
        for i in rule.fb_edges:
            getattr(rule, f"B{i}").copy_(net2.edge_params(i)["weight"])
    rule.compute_grads(inputs, targets)
    for k, p in net2.named_parameters():
        assert rel_diff(p.grad, zil[k]) <= 1e-12, k


def test_feedback_alignment_reference_equals_plan():
    """The kernel hook configures the reference interpreter too."""
    net = network(mlp_spec((12, 10), act="tanh", bias=True))
    inputs, targets = random_batch(net.compiled, batch=6)
    for s in ({}, {"gamma": 0.5}, {"init_noise": 0.1}):
        fast = grads(net, FA_NAME, s, inputs, targets)
        ref = grads(net, FA_NAME, {**s, "reference": True}, inputs, targets)
        for k in ref:
            assert rel_diff(fast[k], ref[k]) <= 1e-12, (s, k)


# ---- built-in rules' own state -------------------------------------------------------

def test_il_rng_state_is_restored_on_resume(tmp_path):
    spec = digits_spec({"name": "il", "T": 4, "gamma": 0.3, "init_noise": 0.1})
    quiet = {"progress": False, "log": lambda _: None}
    assert "_extra_state" in build(spec).rule.state_dict()

    full = build(spec)
    Trainer(full, out=tmp_path / "full", **quiet).fit(2)

    first = build(spec)
    Trainer(first, out=tmp_path / "split", **quiet).fit(1)
    state_after_one = first.rule.generator.get_state()
    shutil.copytree(tmp_path / "split", tmp_path / "split2")

    fresh = build(spec)
    assert not torch.equal(fresh.rule.generator.get_state(), state_after_one)   # the noise was drawn
    trainer = Trainer(fresh, out=tmp_path / "split", **quiet)
    trainer.resume()
    assert torch.equal(fresh.rule.generator.get_state(), state_after_one)
    trainer.fit(2)
    assert_same(snapshot(fresh), snapshot(full))

    # without the generator's state the continuation differs (the test can tell)
    other = build(spec)
    t2 = Trainer(other, out=tmp_path / "split2", **quiet)
    t2.resume()
    assert t2.start_epoch == 1
    other.rule.generator.manual_seed(12345)
    t2.fit(2)
    assert not torch.equal(other.net.state_dict()["params.x_to_h1.weight"],
                           full.net.state_dict()["params.x_to_h1.weight"])


def test_fazil_stats_survive_a_state_dict_round_trip(tmp_path):
    net = network(mlp_spec((12, 10, 8), act="relu", bias=True))
    rule = make_rule("fazil", net, {"trigger": "phi"})
    for seed in range(3):
        rule.compute_grads(*random_batch(net.compiled, batch=6, seed=seed))
    st = vars(rule.stats).copy()
    assert st["false_fires"] > 0 and st["judged"] > st["detected"] > 0

    buf = io.BytesIO()
    torch.save(rule.state_dict(), buf)
    buf.seek(0)
    other = make_rule("fazil", network(mlp_spec((12, 10, 8), act="relu", bias=True)), {"trigger": "phi"})
    assert vars(other.stats) != st
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert vars(other.stats) == st
    assert other.stats.success_rate == rule.stats.success_rate < 1.0
    # and they keep counting from there
    other.compute_grads(*random_batch(other.net.compiled, batch=6, seed=9))
    assert other.stats.false_fires > st["false_fires"]

    # through a checkpoint
    spec = digits_spec({"name": "fazil", "trigger": "phi", "t_d": 2}, steps=2)
    spec.set_train(optimizer={"name": "sgd", "lr": 0.05})
    quiet = {"progress": False, "log": lambda _: None}
    exp = build(spec)
    Trainer(exp, out=tmp_path, **quiet).fit(1)
    saved = vars(exp.rule.stats).copy()
    assert saved["expected"] > 0
    fresh = build(spec)
    Trainer(fresh, out=tmp_path, **quiet).resume()
    assert vars(fresh.rule.stats) == saved
