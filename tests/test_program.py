"""The compiled step as a traced program (pcgraph.compile.program): bit for bit the executor's
numbers on every spec in graphs/, close to the reference interpreter's, free of host syncs,
printable, and usable by the trainer (``train.program``)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.compile import run_reference
from pcgraph.compile.program import StepProgram, example_batch, format_program
from pcgraph.errors import SpecError
from pcgraph.ops.graph_conv import graph_ops
from pcgraph.rules import make_rule
from pcgraph.train import Experiment

from helpers import assert_same, mlp_spec
from test_energy import SMALL, random_graph

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "graphs").glob("*.yaml"))
B = 4


def _net(path: Path, dtype="float64"):
    spec = Spec.load(path, overrides=SMALL.get(path.stem, []))
    exp = Experiment.build(spec, device="cpu", dtype=dtype, with_data=False)
    net = exp.net
    if graph_ops(net.compiled):
        net.set_graph(random_graph(B, 11))
    net.begin_step(3)               # dropout: this step's masks (arguments of the program)
    return spec, net


def _rules(net) -> list[tuple[str, dict]]:
    cg = net.compiled
    out = [("il", {"T": 3, "gamma": 0.3}), ("pc", {"T": 2, "optimizer": {"name": "sgd", "lr": 0.2}}),
           ("pc", {"T": 3, "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.5}}),
           ("pc", {"T": 2, "optimizer": {"name": "adam", "lr": 0.05}})]
    if cg.ordered:
        out += [("zil", {}), ("il", {"T": 4, "gamma": 1.0, "update_at": 2})]
    return out


def _case_ids():
    return [p.stem for p in SPECS]


@pytest.mark.parametrize("path", SPECS, ids=_case_ids())
def test_program_is_the_executor_bit_for_bit_on_every_spec(path):
    spec, net = _net(path)
    inputs, targets = example_batch(net, net.compiled.objective("mean"), B, seed=1)
    if spec.clamp is not None:       # a generative spec: the roles' clamps are not its training clamps
        pytest.skip("clamped by a clamp: section (the energy engine's general loop, no program yet)")
    ran = 0
    for name, settings in _rules(net):
        rule = make_rule(name, net, settings, seed=0)
        prog = rule.program(inputs, targets)
        if prog is None:        # only steps that draw noise inside an op (gat_conv's attention dropout)
            assert "RNG" in rule.program_refusal_reason, rule.program_refusal_reason
            continue
        assert prog.ops() > 0
        eager = rule.functional_step(inputs, targets)
        assert_same(prog(inputs, targets), eager, f"{path.stem}/{name}")
        ran += 1
    assert ran or not net.compiled.ordered or path.stem == "cora_gat", "no rule traced on an ordered graph"


@pytest.mark.parametrize("name", ["mnist_mlp", "residual_mlp", "mnist_cnn", "transformer_block", "seq_mnist_rnn",
                                  "cora_gcn", "concat_branches"])
def test_program_against_the_reference_interpreter(name):
    """The program's updates are the reference interpreter's (every quantity at every step,
    no plan, no caches), in float64."""
    _, net = _net(ROOT / "graphs" / f"{name}.yaml")
    inputs, targets = example_batch(net, net.compiled.objective("mean"), B, seed=2)
    for settings in ({"T": 3, "gamma": 0.3}, {"T": 4, "gamma": 1.0, "update_at": 2}):
        rule = make_rule("il", net, settings, seed=0)
        outputs, updates, _ = StepProgram(rule, inputs, targets)(inputs, targets)
        ref = run_reference(rule.kernel, rule.update_times, inputs, targets, rule.T, 0.0, None)[2]
        scale = rule.grad_scale(B)
        for key, group in ref.items():
            for n, g in group.items():
                want = g * scale
                got = updates.get(key, {}).get(n)
                if got is None:         # the plan skips an update whose error is known to be 0
                    assert not want.any(), (name, settings, key, n)
                    continue
                err = float((got - want).abs().max()) / max(1e-30, float(want.abs().max()))
                assert err < 1e-10, (name, settings, key, n, err)


def test_zil_program_of_the_wide_mlp_is_backprops_pass():
    """Z-IL's program is the backward pass: one forward, then per layer one matrix product for
    the message and one for the update; il's runs T steps."""
    spec = Spec.load(ROOT / "graphs" / "mnist_mlp_wide.yaml")
    exp = Experiment.build(spec, with_data=False)
    inputs, targets = example_batch(exp.net, exp.rule.objective, 8)
    zil = make_rule("zil", exp.net)
    prog = StepProgram(zil, inputs, targets)
    code = prog.code()
    assert code.count("aten.addmm") == 4 + 4          # 4 predictions, 4 weight updates
    assert code.count("aten.mm.") == 3                 # messages to h3, h2, h1 (none to the input)
    for t, edge in enumerate(["h3->y", "h2->h3", "h1->h2", "x->h1"]):
        assert f"# t={t}: edge {edge}: VJP" in code
    assert "def forward(self, x_to_h1_bias, x_to_h1_weight" in code and "input_x" in code and "target_y" in code
    il = make_rule("il", exp.net, {"T": 20, "gamma": 0.1})
    il_code = StepProgram(il, inputs, targets).code()
    assert "# t=20:" in il_code and il_code.count("aten.tanh.default") == 3 + 19 * 3   # f(x) once per move


def test_no_host_sync_inside_the_step():
    """The step reads no tensor's value on the host: tracing proves it (make_fx fails on
    _local_scalar_dense), and counting the Python-level reads while the eager step runs
    confirms it (the loss, computed after the step, is the trainer's one sync)."""
    counts = {"n": 0}
    names = ["item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def counting(n):
        def f(self, *a, **k):
            counts["n"] += 1
            counts.setdefault(n, 0)
            counts[n] += 1
            return saved[n](self, *a, **k)
        return f

    cases = []
    for stem in ["mnist_mlp", "mnist_cnn", "residual_mlp", "transformer_block", "seq_mnist_rnn", "cora_gcn"]:
        _, net = _net(ROOT / "graphs" / f"{stem}.yaml")
        inputs, targets = example_batch(net, net.compiled.objective("mean"), B)
        for name, settings in [("zil", {}), ("il", {"T": 3, "gamma": 0.5})]:
            cases.append((stem, make_rule(name, net, settings), inputs, targets))
    try:
        for n in names:
            setattr(torch.Tensor, n, counting(n))
        for stem, rule, inputs, targets in cases:
            counts.clear()
            counts["n"] = 0
            with torch.no_grad():
                rule.functional_step(inputs, targets)
            assert counts["n"] == 0, (stem, rule.name, counts)
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
    for stem, rule, inputs, targets in cases:        # and make_fx agrees
        StepProgram(rule, inputs, targets)


def test_a_host_sync_refuses_the_program_with_its_reason():
    spec = mlp_spec(dataset="digits")
    exp = Experiment.build(spec, with_data=False)
    rule = make_rule("zil", exp.net)
    inputs, targets = example_batch(exp.net, rule.objective, 4)
    original = rule.functional_step

    def syncing(i, t):
        out = original(i, t)
        if float(out[0]["y"].sum()) > 1e9:       # a data-dependent branch
            pass
        return out

    rule.functional_step = syncing
    assert rule.program(inputs, targets) is None
    assert "reads a tensor's value on the host" in rule.program_refusal_reason


def test_refusals_name_the_reason():
    spec = mlp_spec()
    exp = Experiment.build(spec, with_data=False)
    net = exp.net
    inputs, targets = example_batch(net, exp.rule.objective, 4)
    noisy = make_rule("il", net, {"T": 2, "init_noise": 0.1})
    assert noisy.program(inputs, targets) is None and "init_noise" in noisy.program_refusal_reason
    bp = make_rule("bp", net)
    assert bp.program(inputs, targets) is None and "no functional step" in bp.program_refusal_reason
    nudged = make_rule("pc", net, {"T": 2, "nudge": "centered", "beta": 0.1})
    assert nudged.program(inputs, targets) is None and "nudging" in nudged.program_refusal_reason
    tol = make_rule("pc", net, {"T": 2, "tol": 1e-3})
    assert tol.program(inputs, targets) is None and "tol" in tol.program_refusal_reason
    mom = make_rule("pc", net, {"T": 2, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}})
    assert mom.program(inputs, targets) is not None      # the engine's loop with torch.optim, traced
    gat = Spec.load(ROOT / "graphs" / "cora_gat.yaml")
    gexp = Experiment.build(gat, with_data=False)
    if any(getattr(op, "needs_step", False) for op in gexp.compiled.ops if op.name == "gat_conv"):
        gexp.net.set_graph(random_graph(B, 3))
        gi, gt = example_batch(gexp.net, gexp.rule.objective, B)
        z = make_rule("zil", gexp.net)
        assert z.program(gi, gt) is None and "RNG" in z.program_refusal_reason


def _train(spec: Spec, steps: int):
    exp = Experiment.build(spec)
    losses = []
    for k, (inputs, targets, _) in enumerate(exp.batches.train()):
        if k == steps:
            break
        losses.append((exp.step(inputs, targets), exp.last_energy))
    return losses, {k: v.clone() for k, v in exp.net.state_dict().items()}


@pytest.mark.parametrize("algorithm", ["zil", {"name": "il", "T": 5, "gamma": 0.2},
                                       {"name": "pc", "T": 4, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.6}},
                                       {"name": "pc", "T": 3, "optimizer": {"name": "adam", "lr": 0.02}}])
def test_training_with_the_program_is_bit_identical(algorithm):
    base = mlp_spec(dataset="digits", batch_size=30, algorithm="zil")
    eager = copy.deepcopy(base)
    eager.train.algorithm = type(base.train.algorithm).from_value(algorithm)
    programmed = copy.deepcopy(eager)
    programmed.train.program = "fx"
    # 61 batches of 30 and a shorter last one: two batch signatures, two programs
    a = _train(eager, 8)
    b = _train(programmed, 8)
    assert_same(a, b)


def test_dropout_masks_are_arguments_of_the_program():
    """cora_gcn has dropout: the program takes each step's masks, drawn as the eager step draws
    them, so training through the program gives the eager run's weights bit for bit."""
    spec = Spec.load(ROOT / "graphs" / "cora_gcn.yaml")
    _, net = _net(ROOT / "graphs" / "cora_gcn.yaml")
    inputs, targets = example_batch(net, net.compiled.objective("mean"), B)
    rule = make_rule("zil", net)
    prog = rule.program(inputs, targets)
    assert prog is not None and "mask_" in prog.code()
    for step in (0, 1):
        net.begin_step(step)
        assert_same(prog(inputs, targets), rule.functional_step(inputs, targets))
    net.begin_step(0)
    m0 = prog._masks(net.dtype, net.device)
    net.begin_step(1)
    m1 = prog._masks(net.dtype, net.device)
    assert not torch.equal(m0[0], m1[0])            # a fresh mask per step
    net.begin_step(None)                            # no step: the identity (ones)
    assert all(bool((m == 1).all()) for m in prog._masks(net.dtype, net.device))
    del spec


def test_show_program_prints_the_wide_mlp_under_zil_and_il():
    for alg, marker in [("zil", "# t=3: edge x->h1: VJP (update)"), ("il", "# t=20:")]:
        out = subprocess.run([sys.executable, "-m", "pcgraph", "show", "graphs/mnist_mlp_wide.yaml", "--program",
                              "--algorithm", alg, "--batch", "16"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("# spec mnist-mlp-wide: one training step of rule " + alg)
        assert marker in out.stdout and "def forward(self, x_to_h1_bias" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pcgraph", "show", "graphs/mnist_mlp_wide.yaml", "--program",
                          "--algorithm", "bp"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no functional step" in bad.stderr and "Traceback" not in bad.stderr


def test_train_program_setting_is_checked():
    with pytest.raises(SpecError, match="did you mean 'fx'"):
        Spec.from_dict({**mlp_spec().to_dict(), "train": {"algorithm": "zil", "program": "fxx"}})
    s = Spec.from_dict({**mlp_spec().to_dict(), "train": {"algorithm": "zil", "program": "fx"}})
    assert s.train.program == "fx" and s.to_dict()["train"]["program"] == "fx"


def test_format_program_header():
    spec = mlp_spec()
    exp = Experiment.build(spec, with_data=False)
    inputs, targets = example_batch(exp.net, exp.rule.objective, 4)
    text = format_program(StepProgram(exp.rule, inputs, targets), "title")
    assert text.splitlines()[0] == "# title"
    assert "returns: prediction y, update" in text


def test_a_step_that_writes_to_a_captured_tensor_is_refused():
    """A tensor from outside the step (a cache) written in place by the step would carry its
    value from one run of the program to the next: refused."""
    spec = mlp_spec()
    exp = Experiment.build(spec, with_data=False)
    rule = make_rule("zil", exp.net)
    inputs, targets = example_batch(exp.net, rule.objective, 4)
    counter = torch.zeros(())
    original = rule.functional_step

    def counting(i, t):
        counter.add_(1)
        return original(i, t)

    rule.functional_step = counting
    assert rule.program(inputs, targets) is None
    assert "writes in place" in rule.program_refusal_reason


def test_a_closed_pipe_ends_the_output_quietly():
    """``pcgraph show ... --program | head``: no traceback when the reader goes away."""
    # (T = 200: a program of ~500 KB, well over what a pipe buffers)
    p = subprocess.Popen([sys.executable, "-m", "pcgraph", "show", "graphs/mnist_mlp_wide.yaml", "--program",
                          "--algorithm", "il", "--set", "train.algorithm.T=200", "--batch", "4"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err
