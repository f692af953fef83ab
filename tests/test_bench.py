"""``pcgraph bench``: runs on a tiny spec and writes the documented JSON; the torch baselines
compute the spec's function; optimizer ``foreach`` / ``fused`` are accepted and checked."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from pcgraph import Spec
from pcgraph.bench import BenchConfig, SpecModule, native_model, parse_methods, run_bench
from pcgraph.cli import main
from pcgraph.errors import SpecError
from pcgraph.rules import make_rule
from pcgraph.train import Experiment, make_optimizer

from helpers import causal_cross_attention_spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "graphs" / "quickstart.yaml")
FAST = ["--rounds", "2", "--batch", "8", "--steps", "2", "--warmup", "1", "--no-memory"]


def _one_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bench_verb_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    algs = "torch,torch_nn,bp,zil,fazil,il,torch@fused,zil@foreach"
    assert main(["bench", QUICKSTART, "--algorithms", algs, "--rounds", "2", "--batch", "8", "--steps", "2",
                 "--warmup", "1", "--il-T", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "x torch" in text and "1 thread(s)" in text and "zil@foreach" in text
    d = json.loads(out.read_text())
    assert set(d["results"]) == set(algs.split(","))
    for alg, r in d["results"].items():
        assert r["ms"] > 0 and len(r["iqr"]) == 2 and r["iqr"][0] <= r["ratio"] <= r["iqr"][1], alg
        assert len(r["ratios"]) == 2 and r["peak_mb"] is not None and r["peak_mb"] >= 0
    assert d["results"]["torch"]["ratio"] == 1.0
    m = d["machine"]
    assert m["threads"] == 1 and m["device"] == "cpu" and m["dtype"] == "float32" and m["torch"] == torch.__version__
    assert d["batch"] == 8 and d["rounds"] == 2 and d["steps_per_round"] == 2 and d["reference"] == "torch"


@pytest.mark.parametrize("argv, where", [
    (["--algorithms", "torch,nope"], "--algorithms"),
    (["--algorithms", "zil@turbo"], "--algorithms"),
    (["--algorithms", "zil,zil"], "--algorithms"),
    (["--rounds", "0"], "--rounds"),
    (["--batch", "-3"], "--batch"),
    (["--dtype", "float16x"], "--dtype"),
    (["--json", "/no/such/folder/b.json"], "--json"),
    (["--algorithms", "torch_nn", "--set", "model.edges[0].to=h", "--threads", "0"], "--threads"),
])
def test_bench_bad_arguments_are_one_located_error(capsys, argv, where):
    err = _one_error(capsys, ["bench", QUICKSTART, *FAST, *argv])
    assert where in err


def test_torch_nn_refuses_a_dag(capsys):
    err = _one_error(capsys, ["bench", str(ROOT / "graphs" / "residual_mlp.yaml"), *FAST,
                              "--algorithms", "torch,torch_nn"])
    assert "--algorithms" in err and "chain" in err


def test_optimizer_variant_needs_the_implementation(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text(Path(QUICKSTART).read_text().replace("{name: adam, lr: 0.003}", "{name: rmsprop, lr: 0.003}"))
    err = _one_error(capsys, ["bench", str(f), *FAST, "--algorithms", "torch,zil@fused"])
    assert "--algorithms" in err and "rmsprop has no fused implementation" in err


@pytest.mark.parametrize("spec", ["residual_mlp.yaml", "gated_mlp.yaml", "seq_mnist_rnn.yaml",
                                  "transformer_block.yaml", "causal cross attention"])
def test_spec_module_is_the_spec_and_its_gradients_are_bp(spec):
    """The torch baseline computes pcgraph's function, and autograd through it gives BP's
    gradients (shared parameters, skips, SDPA attention), in float64."""
    s = causal_cross_attention_spec() if " " in spec else Spec.load(ROOT / "graphs" / spec)
    exp = Experiment.build(s, dtype="float64", with_data=False)
    cg = exp.compiled
    g = torch.Generator().manual_seed(0)
    inp, outs = cg.graph.inputs[0], cg.graph.outputs
    x = torch.rand(5, *cg.graph.nodes[inp].shape, generator=g, dtype=torch.float64)
    targets = {o: cg.losses[o].target(torch.randint(0, 10, (5,), generator=g), cg.graph.nodes[o].shape,
                                      torch.float64) for o in outs}
    model = SpecModule(exp.net)
    y = model(x) if len(outs) == 1 else model({inp: x})
    y = {outs[0]: y} if len(outs) == 1 else y
    want = exp.net({inp: x})
    for o in outs:
        assert torch.allclose(y[o], want[o], atol=1e-12, rtol=0)
    cg.objective(s.train.reduction).value(y, targets).backward()
    rule = make_rule("bp", exp.net, {}, reduction=s.train.reduction)
    rule.compute_grads({inp: x}, targets)
    for key, grp in exp.net.params.items():
        for n, p in grp.items():
            assert torch.allclose(model.params[key][n].grad, p.grad, atol=1e-12, rtol=1e-10), (key, n)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_torch_nn_is_the_spec(dtype, tol):
    for spec in ("mnist_mlp_wide.yaml", "seq_mnist_rnn.yaml", "seq_mnist_gru.yaml", "mnist_cnn.yaml"):
        s = Spec.load(ROOT / "graphs" / spec)
        exp = Experiment.build(s, dtype=dtype, with_data=False)
        cg = exp.compiled
        inp, out = cg.graph.inputs[0], cg.graph.outputs[0]
        x = torch.rand(3, *cg.graph.nodes[inp].shape, generator=torch.Generator().manual_seed(1)).to(exp.net.dtype)
        with torch.no_grad():
            assert torch.allclose(native_model(s, exp.net)(x), exp.net({inp: x})[out], atol=tol, rtol=0), spec


def test_compile_failure_is_reported_not_fatal(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(torch, "compile", broken)
    spec = Spec.load(QUICKSTART)
    rep = run_bench(spec, BenchConfig(algorithms="torch,zil", batch=8, rounds=2, steps=1, warmup=1,
                                      compile=True, memory=False))
    assert set(rep.results) == {"torch", "zil"}
    assert "no compiler here" in rep.errors["torch@compile"] and "second line" not in rep.errors["torch@compile"]
    assert "bp@compile" in rep.errors
    assert "not timed" in rep.format()


def test_parse_methods():
    assert parse_methods("torch, zil@fused+compile") == [("torch", "torch", ()),
                                                          ("zil@fused+compile", "zil", ("fused", "compile"))]
    with pytest.raises(SpecError):
        parse_methods("zil@fused+foreach")


# ---- optimizer implementations -------------------------------------------------------------------

TINY = textwrap.dedent("""\
    name: tiny
    data: {dataset: digits, batch_size: 32, train_subset: 64, test_subset: 64}
    model:
      nodes:
        - {name: x, shape: [64], role: input}
        - {name: y, shape: [10], role: output}
      edges:
        - {from: x, to: y, bias: true}
    loss: mse
    train: {algorithm: zil, epochs: 1, optimizer: OPT}
    """)


@pytest.mark.parametrize("opt", ["{name: adam, lr: 0.01, fused: true}", "{name: adam, lr: 0.01, foreach: true}",
                                 "{name: adamw, lr: 0.01, fused: false, foreach: true}",
                                 "{name: sgd, lr: 0.01, fused: true}", "{name: nadam, lr: 0.01, foreach: null}"])
def test_foreach_and_fused_are_accepted(tmp_path, opt):
    f = tmp_path / "o.yaml"
    f.write_text(TINY.replace("OPT", opt))
    assert main(["run", str(f), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    exp = Experiment.build(Spec.load(f), with_data=False)
    for key in ("fused", "foreach"):
        if f"{key}: true" in opt:
            assert exp.optimizer.defaults[key] is True


@pytest.mark.parametrize("opt, where, words", [
    ('{name: adam, lr: 0.01, fused: "yes"}', "train.optimizer.fused", "true, false or null"),
    ("{name: adam, lr: 0.01, foreach: 1}", "train.optimizer.foreach", "true, false or null"),
    ("{name: rmsprop, lr: 0.01, fused: true}", "train.optimizer.fused", "adam"),
    ("{name: adam, lr: 0.01, fused: true, foreach: true}", "train.optimizer.fused", "choose one"),
])
def test_bad_foreach_or_fused_is_a_located_error(tmp_path, capsys, opt, where, words):
    f = tmp_path / "o.yaml"
    f.write_text(TINY.replace("OPT", opt))
    err = _one_error(capsys, ["show", str(f)])
    assert f"{f}:10:" in err and where in err and words in err


def test_make_optimizer_fused_matches_default():
    """fused / foreach Adam take the same steps as the default loop (to float rounding)."""
    results = []
    for extra in ({}, {"foreach": True}, {"fused": True}):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 50, dtype=torch.float64))
        opt = make_optimizer({"name": "adam", "lr": 0.1, **extra}, [p])
        for k in range(5):
            p.grad = torch.sin(p.detach() * (k + 1))
            opt.step()
        results.append(p.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-14) and torch.allclose(results[0], results[2], atol=1e-12)


def test_bench_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for flag in ("--algorithms", "--batch", "--threads", "--rounds", "--device", "--dtype", "--compile", "--json"):
        assert flag in out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torch_loss_is_the_rules_objective(reduction):
    from pcgraph.bench import _loss_fn

    s = Spec.load(QUICKSTART)
    s.train.reduction = reduction
    cg = Experiment.build(s, with_data=False).compiled
    obj = cg.objective(reduction)
    mu = torch.randn(6, 10)
    t = {"y": torch.randint(0, 10, (6,))}
    assert torch.equal(_loss_fn(obj, ["y"])(mu, t), obj.value({"y": mu}, t))
