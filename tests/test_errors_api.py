"""The first hour of a new user, errors and API: unknown names suggest the closest known ones
(and list each implementation once, without aliases); a bad ``--set`` / ``--algorithm`` /
``--epochs`` names the option as typed, not the spec's line; abbreviated options are refused;
a GRU's ``activation`` and ``gcn_conv``'s ``improved`` do what they say (or are refused);
``PCNetwork`` takes a tensor for a one-input graph; no progress bars are drawn into pipes."""

from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import graph_spec, mlp_spec
from pcgraph import Experiment, Spec, compile_graph
from pcgraph.cli import _without_nproc, build_parser, main
from pcgraph.compile import PCNetwork
from pcgraph.errors import SpecError
from pcgraph.ops import ACTIVATIONS, LOSSES, OPS
from pcgraph.ops.graph_conv import Graph
from pcgraph.registry import Registry
from pcgraph.rules import RULES
from pcgraph.spec import apply_overrides
from pcgraph.spec.schema import select_algorithm
from pcgraph.train import OPTIMIZERS
from pcgraph.train.trainer import _progress

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "graphs" / "quickstart.yaml"

BASE = textwrap.dedent("""\
    name: base
    data: {dataset: digits, batch_size: 8}
    model:
      nodes:
        - {name: x, shape: [64], role: input}
        - {name: h, shape: [32]}
        - {name: y, shape: [10], role: output}
      edges:
        - {from: x, to: h}
        - {from: h, to: y, activation: tanh}
    loss: cross_entropy
    train:
      algorithm: zil
      epochs: 1
      optimizer: {name: sgd, lr: 0.1}
      presets:
        slow: {algorithm: {name: il, T: 50}, optimizer: {name: sgd, lr: 0.01}}
    """)


def one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def known_part(msg: str) -> list[str]:
    return msg.rsplit("(known: ", 1)[1].rstrip(")").split(", ")


# ---- 1. did you mean, canonical names once ----------------------------------------------------

def test_registry_suggests_and_lists_canonical_names_once():
    reg: Registry[int] = Registry("widget")
    reg.register("sprocket", "sprock", "spr")(1)
    reg.register("gear")(2)
    assert reg.names() == ["gear", "sprocket"] and list(reg) == ["gear", "sprocket"]
    assert reg.all_names() == ["gear", "spr", "sprock", "sprocket"]
    assert "sprock" in reg and reg.get("spr") == 1 and reg.canonical("sprock") == "sprocket"
    with pytest.raises(SpecError) as info:
        reg.get("sprocet", "parts.widget")
    err = info.value
    assert err.where == "parts.widget"
    assert one_line(err) == ("parts.widget: unknown widget 'sprocet': did you mean 'sprocket'? "
                             "(known: gear, sprocket)")
    with pytest.raises(SpecError) as info:        # nothing close: no suggestion
        reg.get("zzz")
    assert str(info.value) == "unknown widget 'zzz' (known: gear, sprocket)"
    with pytest.raises(SpecError) as info:        # not a string
        reg.get(3)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("registry, typo, want", [
    (OPS, "lineer", "linear"),
    (ACTIVATIONS, "tanhh", "tanh"),
    (ACTIVATIONS, "ReLU", "relu"),
    (LOSSES, "cross_entropi", "cross_entropy"),
    (RULES, "zill", "zil"),
    (OPTIMIZERS, "adamm", "adam"),
])
def test_every_registry_suggests(registry, typo, want):
    with pytest.raises(SpecError) as info:
        registry.get(typo, "here")
    msg = one_line(info.value)
    assert msg.startswith(f"here: unknown {registry.kind} {typo!r}: did you mean {want!r}")
    known = known_part(msg)
    assert known == registry.names() and len(known) == len(set(known))


def test_aliases_resolve_but_are_not_listed():
    assert "dense" in OPS and OPS.get("dense") is OPS.get("linear")
    with pytest.raises(SpecError) as info:
        OPS.get("conv9")
    known = known_part(str(info.value))
    for alias in ("dense", "gcn", "cat", "multiply", "view", "avgpool2d"):
        assert alias not in known
    assert "linear" in known and "gcn_conv" in known
    with pytest.raises(SpecError) as info:
        RULES.get("sgdx")
    known = known_part(str(info.value))
    assert "backprop" not in known and "z-il" not in known and "bp" in known and "zil" in known


def test_one_suggestion_per_implementation():
    msg = RULES.unknown("z_il")          # close to zil and to its alias z-il: one of them
    hint = msg.split("did you mean ", 1)[1].split("?")[0]
    assert not ("'zil'" in hint and "'z-il'" in hint)


def test_spec_and_dataset_names_suggest():
    d = Spec.load(QUICKSTART).to_dict()
    d["model"]["edges"][0]["activation"] = "sigmod"
    with pytest.raises(SpecError) as info:
        Spec.from_dict(d)
    assert info.value.where == "model.edges[0].activation"
    assert "did you mean 'sigmoid'?" in one_line(info.value)
    spec = mlp_spec(dataset="digit")
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=True)
    assert one_line(info.value).startswith("data.dataset: unknown dataset 'digit': did you mean 'digits'?")


# ---- 2. --set / --algorithm errors name the option ------------------------------------------------

@pytest.mark.parametrize("item, message", [
    ("train.algoritm.T=5", "unknown key 'algoritm': did you mean 'algorithm'? (known: algorithm, epochs,"),
    ("train.epoch=3", "unknown key 'epoch': did you mean 'epochs'?"),
    ("dta.batch_size=3", "unknown key 'dta': did you mean 'data'?"),
    ("data.batchsize=3", "unknown key 'batchsize': did you mean 'batch_size'"),
    ("model.nodes[1].shap=[3]", "unknown key 'shap': did you mean 'shape'?"),
    ("train.presets.slow.optimiser.lr=1", "unknown key 'optimiser': did you mean 'optimizer'?"),
])
def test_set_with_an_unknown_key_names_the_override(item, message):
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(BASE, "base.yaml", overrides=[item])
    err = info.value
    assert err.where == f"--set {item}" and err.location is None
    assert one_line(err).startswith(f"--set {item}: {message}")
    assert "base.yaml" not in str(err)


def test_set_of_free_mappings_is_not_refused():
    spec = Spec.from_yaml(BASE, overrides=["data.options.anything=1", "model.edges[0].bias=true",
                                           "train.algorithm.gamma=0.5", "train.scheduler.name=step",
                                           "train.scheduler.step_size=2"])
    assert spec.data.options == {"anything": 1} and spec.train.algorithm.settings == {"gamma": 0.5}


@pytest.mark.parametrize("item, where, words", [
    ("train.algorithm.gama=0.5", "train.algorithm.gama", "gamma"),
    ("model.edges[1].activation=tanhh", "model.edges[1].activation", "did you mean 'tanh'?"),
    ("data.batch_size=seven", "data.batch_size", "expected a positive integer"),
    ("train.optimizer.name=adamz", "train.optimizer.name", "did you mean 'adam'"),
    ("train.algorithm={name: il, T: -1}", "train.algorithm.T", ""),
])
def test_later_errors_at_an_overridden_path_name_the_override(tmp_path, item, where, words):
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    with pytest.raises(SpecError) as info:
        Experiment.build(Spec.load(path, overrides=["data.train_subset=8", item]), with_data=False)
    err = info.value
    assert err.where == where and err.location == f"--set {item}"
    assert one_line(err).startswith(f"--set {item}: {where}: ") and words in str(err)


def test_errors_elsewhere_keep_the_spec_line(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(BASE.replace("{from: h, to: y, activation: tanh}", "{from: h, to: y, activation: tanhh}"))
    with pytest.raises(SpecError) as info:
        Spec.load(path, overrides=["data.batch_size=4", "model.edges[0].activation=relu"])
    assert str(info.value).startswith(f"{path}:10:")       # the file's line, not an override
    # an override replacing a whole mapping drops the file's positions below it
    path.write_text(BASE)
    with pytest.raises(SpecError) as info:
        Spec.load(path, overrides=["train.presets={slow: {algorithm: il, lr: 1}}"])
    assert info.value.location == "--set train.presets={slow: {algorithm: il, lr: 1}}"


def test_with_overrides_names_the_override():
    spec = Spec.from_yaml(BASE, "base.yaml")
    with pytest.raises(SpecError) as info:
        spec.with_overrides(["data.batch_size=0"])
    assert str(info.value).startswith("--set data.batch_size=0: data.batch_size: ")
    assert spec.locations["data.batch_size"].startswith("base.yaml:")      # the spec's own map is untouched


def test_apply_overrides_relocates_only_what_it_sets():
    locs = {"train": "f:1:1", "train.algorithm": "f:2:3", "train.algorithm.T": "f:2:9", "data": "f:5:1"}
    apply_overrides({"train": {"algorithm": {"name": "il", "T": 3}}, "data": {}},
                    ["train.algorithm=zil", "data.root=/x", ("--epochs 2", "train.epochs=2")], locs)
    assert locs == {"train": "f:1:1", "train.algorithm": "--set train.algorithm=zil", "data": "f:5:1",
                    "data.root": "--set data.root=/x", "train.epochs": "--epochs 2"}


@pytest.mark.parametrize("label, start", [
    ("zill", "--algorithm zill: 'zill' is neither a learning rule (ao_sdtp, bp,"),
    ("slw", "--algorithm slw: 'slw' is neither a learning rule (ao_sdtp, bp,"),
])
def test_unknown_algorithm_names_the_option(label, start):
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(BASE, "base.yaml", algorithm=label)
    msg = one_line(info.value)
    assert msg.startswith(start) and "nor one of this spec's presets (slow)" in msg
    assert msg.endswith(f": did you mean {'zil' if label == 'zill' else 'slow'!r}?")
    assert "base.yaml" not in str(info.value)


def test_algorithm_relocates_to_the_option_or_the_preset():
    spec = Spec.from_yaml(BASE, "base.yaml", algorithm="il")
    assert spec.locations["train.algorithm"] == "--algorithm il"
    spec = Spec.from_yaml(BASE, "base.yaml", algorithm="slow")      # the preset's own lines
    assert spec.locations["train.algorithm"] == spec.locations["train.presets.slow.algorithm"]
    assert spec.locations["train.algorithm.T"] == spec.locations["train.presets.slow.algorithm.T"]
    spec = Spec.from_yaml(BASE, "base.yaml", algorithm="z-il")      # an alias of the spec's rule: kept
    assert spec.locations["train.algorithm"].startswith("base.yaml:")
    assert select_algorithm({"train": {"algorithm": {"name": "zil", "T": 4}}}, "z-il")["train"]["algorithm"] == \
        {"name": "zil", "T": 4}


def test_cli_set_algorithm_epochs_errors(capsys, tmp_path):
    rc = main(["show", str(QUICKSTART), "--set", "train.algoritm.T=5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pcgraph show: error: --set train.algoritm.T=5: unknown key 'algoritm': "
                                      "did you mean 'algorithm'? (known: ")
    rc = main(["show", str(QUICKSTART), "--algorithm", "fazill"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pcgraph show: error: --algorithm fazill: unknown learning rule 'fazill': "
                                      "did you mean 'fazil'")
    rc = main(["run", str(QUICKSTART), "--epochs", "0", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pcgraph run: error: --epochs 0: train.epochs: expected a positive integer")
    rc = main(["show", str(QUICKSTART), "--seed", "-1"])
    assert rc == 2 and capsys.readouterr().err.startswith("pcgraph show: error: --seed -1: seed: ")


# ---- 3. no abbreviated options -------------------------------------------------------------------

def _parsers(p: argparse.ArgumentParser):
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_parser_refuses_abbreviations():
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10
    assert all(not p.allow_abbrev for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


@pytest.mark.parametrize("argv", [
    ["run", str(QUICKSTART), "--epoch", "2"],
    ["check", str(QUICKSTART), "--step", "2"],
    ["run", str(QUICKSTART), "--nproc=2", "--no-prog"],
    ["infer", str(QUICKSTART), "--quer", "predict"],
])
def test_abbreviated_options_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_without_nproc():
    assert _without_nproc(["run", "s.yaml", "--nproc", "2", "--epochs", "1"]) == ["run", "s.yaml", "--epochs", "1"]
    assert _without_nproc(["run", "s.yaml", "--nproc=2", "--out", "d"]) == ["run", "s.yaml", "--out", "d"]


# ---- 4. GRU activation, gcn_conv improved ----------------------------------------------------------

GRU = textwrap.dedent("""\
    name: gru
    data: {dataset: adding, batch_size: 4}
    model:
      nodes:
        - {name: s, shape: [3, 2], role: input}
      unroll:
        - name: h
          steps: 3
          input: s
          shape: [4]
          cell: gru
          activation: ACT
          readout: {to: y, shape: [1]}
    loss: mse
    """)


def test_gru_refuses_an_activation_it_would_ignore():
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(GRU.replace("ACT", "relu"), "gru.yaml")
    err = info.value
    assert err.where == "model.unroll[0].activation" and err.location.startswith("gru.yaml:12:")
    assert "GRU" in one_line(err) and "sigmoid" in str(err) and "tanh" in str(err)
    spec = Spec.from_yaml(GRU.replace("ACT", "tanh"), "gru.yaml")          # the default: accepted
    assert spec.unrolls[0].cell == "gru"
    with pytest.raises(SpecError):
        Spec(name="g").add_node("s", [3, 2], "input").add_unroll("h", 3, "s", [4], cell="gru", activation="relu")
    Spec(name="r").add_node("s", [3, 2], "input").add_unroll("h", 3, "s", [4], cell="rnn", activation="relu")


def _gcn(improved: bool, **extra):
    cls = OPS.get("gcn_conv")
    return cls([(3,)], (2,), True, cls.parse_options({"improved": improved, **extra}, "model.edges[0]"))


@pytest.mark.parametrize("improved", [False, True])
def test_gcn_improved_normalises_a_plus_2i(improved):
    n = 4
    pairs = [(0, 1), (1, 2), (2, 3), (0, 2)]
    ei = torch.tensor([[a for a, b in pairs] + [b for a, b in pairs], [b for a, b in pairs] + [a for a, b in pairs]])
    op = _gcn(improved)
    op.graph = Graph(ei, n)
    p = op.init_params(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    p = {k: v + 0.1 for k, v in p.items()}
    u = torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = torch.zeros(n, n, dtype=torch.float64)
    for s, t in pairs:
        a[s, t] = a[t, s] = 1.0
    a_hat = a + (2.0 if improved else 1.0) * torch.eye(n, dtype=torch.float64)
    d = a_hat.sum(1).rsqrt()
    norm = d[:, None] * a_hat * d[None, :]
    want = norm @ u @ p["lin_weight"].T + p["bias"]
    torch.testing.assert_close(op.forward(p, u), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra, off", [({"normalize": False}, "normalize"), ({"add_self_loops": False},
                                                                             "add_self_loops")])
def test_gcn_improved_without_self_loops_is_refused(extra, off):
    with pytest.raises(SpecError) as info:
        _gcn(True, **extra)
    assert info.value.where == "model.edges[0].improved" and f"{off}: false" in one_line(info.value)
    _gcn(False, **extra)


# ---- 5. PCNetwork: tensor in, tensor out ------------------------------------------------------------

def test_network_takes_a_tensor_for_one_input():
    spec = mlp_spec(hidden=(5,), n_in=4, n_out=3)
    net = PCNetwork(compile_graph(spec.model, spec.loss), seed=0, dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    both = net({"x": x})
    assert isinstance(both, dict) and list(both) == ["y"]
    torch.testing.assert_close(both["y"], out)
    with pytest.raises(ValueError, match="miss 'x'"):
        net({"z": x})
    with pytest.raises(TypeError, match="dict of input tensors"):
        net([x])


def test_network_tensor_errors_and_several_outputs():
    two_in = graph_spec([("a", 3, "input"), ("b", 3, "input"), ("y", 2, "output")],
                        [("a", "y", {}), ("b", "y", {})])
    net = PCNetwork(compile_graph(two_in.model, two_in.loss), seed=0)
    with pytest.raises(TypeError) as info:
        net(torch.zeros(2, 3))
    assert "2 input nodes (a, b)" in str(info.value) and "'a': tensor" in str(info.value)
    two_out = graph_spec([("x", 3, "input"), ("y", 2, "output"), ("z", 2, "output")],
                         [("x", "y", {}), ("x", "z", {})])
    net = PCNetwork(compile_graph(two_out.model, two_out.loss), seed=0)
    out = net(torch.zeros(5, 3))
    assert isinstance(out, dict) and sorted(out) == ["y", "z"] and out["y"].shape == (5, 2)


# ---- 6. no bars into pipes ---------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_draws_only_on_a_terminal(monkeypatch):
    pipe = _Stream(False)
    monkeypatch.setattr("sys.stderr", pipe)
    assert _progress(10, "epoch 1/1", True) is None
    assert pipe.getvalue() == ""
    term = _Stream(True)
    monkeypatch.setattr("sys.stderr", term)
    bar = _progress(10, "epoch 1/1", True)
    assert bar is not None
    bar.update(1)
    bar.close()
    assert "epoch 1/1" in term.getvalue()
    assert _progress(10, "epoch 1/1", False) is None
