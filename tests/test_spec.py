"""Spec validation messages, ``--set`` overrides and round trips (builder, YAML, networkx).

Every broken spec must give one message that names its spec path (``model.edges[2].to``)
and what would be valid; loaded from a file, the message starts with ``file:line:col:``.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import networkx as nx
import pytest
import yaml

from pcgraph.errors import GraphError, PCGraphError, SpecError
from pcgraph.ir import PCGraph
from pcgraph.ops import ACTIVATIONS, LOSSES, OPS
from pcgraph.rules import RULES
from pcgraph.spec import AlgorithmSpec, DataSpec, Spec, TrainSpec, apply_overrides
from pcgraph.spec.schema import EDGE_KEYS, NODE_KEYS, TOP_KEYS
from pcgraph.train import OPTIMIZERS, Experiment

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
QUICKSTART = ROOT / "graphs" / "quickstart.yaml"

# A small valid spec, block style, so each key sits on its own line.
BASE = textwrap.dedent("""\
    name: base
    seed: 1
    data:
      dataset: digits
      batch_size: 8
    model:
      nodes:
        - name: x
          shape: [64]
          role: input
        - name: h
          shape: [32]
        - name: y
          shape: [10]
          role: output
      edges:
        - from: x
          to: h
        - from: h
          to: y
          activation: tanh
    loss: cross_entropy
    train:
      algorithm: zil
      epochs: 1
      optimizer: {name: sgd, lr: 0.1}
    """)


def base_dict() -> dict:
    return yaml.safe_load(BASE)


def spec_error(d: dict) -> PCGraphError:
    with pytest.raises(PCGraphError) as info:
        Spec.from_dict(d)
    return info.value


def file_error(tmp_path: Path, text: str, name: str = "spec.yaml") -> tuple[PCGraphError, Path]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PCGraphError) as info:
        Spec.load(path)
    return info.value, path


def pos(text: str, needle: str, nth: int = 0) -> str:
    """``line:col`` (1-based) of the ``nth`` occurrence of ``needle`` in ``text``."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return f"{line}:{col}"


def assert_one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


# ---- the base spec and the bundled graphs are valid ----------------------------------------

def test_base_spec_is_valid():
    spec = Spec.from_yaml(BASE)
    assert spec.model.inputs == ["x"] and spec.model.outputs == ["y"]
    assert spec.train.algorithm == AlgorithmSpec("zil", {})
    assert spec.data.batch_size == 8


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_bundled_graphs_validate(path):
    spec = Spec.load(path)
    assert spec.source == str(path)
    if spec.clamp is None:      # clamped by role: inputs and outputs
        assert spec.model.inputs and spec.model.outputs
    else:                       # clamped by its clamp section: every clamped node exists, queries named
        assert set(spec.clamp) <= set(spec.model.nodes) and spec.queries and spec.evaluate in spec.queries


# ---- unknown keys list the known keys -----------------------------------------------------

def test_unknown_top_level_key():
    d = base_dict()
    d["modle"] = {}
    err = spec_error(d)
    assert isinstance(err, SpecError)
    msg = assert_one_line(err)
    assert msg.startswith("modle: unknown key 'modle'")
    assert err.where == "modle"
    for k in TOP_KEYS:
        assert k in msg


def test_unknown_node_key():
    d = base_dict()
    d["model"]["nodes"][1]["size"] = 32
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.nodes[1].size"
    assert msg.startswith("model.nodes[1].size: unknown key 'size'")
    assert "known: " + ", ".join(NODE_KEYS) in msg


def test_unknown_data_key():
    d = base_dict()
    d["data"]["batchsize"] = 3
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "data.batchsize"
    assert "unknown key 'batchsize'" in msg
    for k in DataSpec.KEYS:
        assert k in msg


def test_unknown_train_key():
    d = base_dict()
    d["train"]["epoch"] = 3
    err = spec_error(d)
    assert err.where == "train.epoch"
    for k in TrainSpec.KEYS:
        assert k in str(err)


def test_unknown_model_key():
    d = base_dict()
    d["model"]["links"] = []
    err = spec_error(d)
    assert err.where == "model.links"
    assert "nodes" in str(err) and "edges" in str(err)


def test_unknown_edge_key_names_the_path():
    d = base_dict()
    d["model"]["edges"][1]["activaton"] = "tanh"
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.edges[1].activaton"
    assert "'activaton'" in msg


def test_unknown_edge_key_lists_the_edge_keys():
    d = base_dict()
    d["model"]["edges"][1]["activaton"] = "tanh"
    msg = str(spec_error(d))
    for k in EDGE_KEYS:
        assert k in msg, f"{k!r} not listed in: {msg}"


# ---- unknown names list the registered names ----------------------------------------------

def test_unknown_op():
    d = base_dict()
    d["model"]["edges"][1]["op"] = "conv9"
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.edges[1].op"
    assert "unknown op 'conv9'" in msg
    for name in OPS.names():
        assert name in msg


def test_unknown_activation():
    d = base_dict()
    d["model"]["edges"][0]["activation"] = "relu6"
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.edges[0].activation"
    assert "unknown activation 'relu6'" in msg
    for name in ACTIVATIONS.names():
        assert name in msg


def test_unknown_loss():
    d = base_dict()
    d["loss"] = "hinge"
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "loss"
    assert "unknown loss 'hinge'" in msg
    for name in LOSSES.names():
        assert name in msg


def test_unknown_loss_per_output():
    d = base_dict()
    d["loss"] = {"y": "hinge"}
    err = spec_error(d)
    assert err.where == "loss.y"


def test_loss_for_a_non_output():
    d = base_dict()
    d["loss"] = {"h": "mse"}
    err = spec_error(d)
    assert err.where == "loss.h"
    assert "outputs: y" in str(err)


def test_unknown_dataset_surfaces_from_experiment_build():
    d = base_dict()
    d["data"]["dataset"] = "imagenet"
    spec = Spec.from_dict(d)  # the name is resolved when data is loaded
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=True)
    msg = assert_one_line(info.value)
    assert msg.startswith("data.dataset: unknown dataset 'imagenet'")
    for name in ("digits", "mnist", "fashion_mnist"):
        assert name in msg


@pytest.mark.parametrize("algorithm, where", [
    ("sgdx", "train.algorithm"),
    ({"name": "sgdx", "T": 3}, "train.algorithm.name"),
])
def test_unknown_learning_rule(algorithm, where):
    d = base_dict()
    d["train"]["algorithm"] = algorithm
    spec = Spec.from_dict(d)
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=False)
    msg = assert_one_line(info.value)
    assert info.value.where == where
    assert "unknown learning rule 'sgdx'" in msg
    for name in RULES.names():
        assert name in msg


def test_unknown_rule_setting():
    d = base_dict()
    d["train"]["algorithm"] = {"name": "zil", "gama": 0.5}
    with pytest.raises(SpecError) as info:
        Experiment.build(Spec.from_dict(d), with_data=False)
    assert info.value.where == "train.algorithm.gama"
    assert "gamma" in str(info.value)


@pytest.mark.parametrize("optimizer", [{"name": "adamz", "lr": 0.1}, "adamz"])
def test_unknown_optimizer(optimizer):
    d = base_dict()
    d["train"]["optimizer"] = optimizer
    spec = Spec.from_dict(d)
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=False)
    msg = assert_one_line(info.value)
    assert info.value.where == "train.optimizer.name"
    assert "unknown optimizer 'adamz'" in msg
    for name in OPTIMIZERS.names():
        assert name in msg


def test_unknown_role():
    d = base_dict()
    d["model"]["nodes"][2]["role"] = "out"
    err = spec_error(d)
    assert err.where == "model.nodes[2].role"
    assert "input, hidden, output" in str(err)


# ---- graph errors ---------------------------------------------------------------------------

def three_edges(third: dict) -> dict:
    d = base_dict()
    d["model"]["edges"].append(third)
    return d


def test_dangling_edge_end():
    err = spec_error(three_edges({"from": "h", "to": "z"}))
    assert isinstance(err, GraphError)
    msg = assert_one_line(err)
    assert msg.startswith("model.edges[2].to: edge end 'z' is not a node")
    assert "known: x, h, y" in msg


def test_dangling_edge_start():
    err = spec_error(three_edges({"from": "q", "to": "y"}))
    assert err.where == "model.edges[2].from"
    assert "known: x, h, y" in str(err)


def cycle_dict(edges: list[tuple[str, str]], nodes=("x", "a", "b", "y")) -> dict:
    d = base_dict()
    roles = {"x": "input", "y": "output"}
    d["model"]["nodes"] = [{"name": n, "shape": [10] if n == "y" else [8] if n != "x" else [64],
                            **({"role": roles[n]} if n in roles else {})} for n in nodes]
    d["model"]["edges"] = [{"from": s, "to": t} for s, t in edges]
    return d


def rule_error(d: dict, algorithm: str = "zil") -> PCGraphError:
    """A cyclic graph is a valid spec; a rule that needs an order refuses it when built."""
    from pcgraph.errors import CompileError
    from pcgraph.train import Experiment

    d = {**d, "train": {**d.get("train", {}), "algorithm": algorithm}}
    spec = Spec.from_dict(d)
    with pytest.raises(CompileError) as info:
        Experiment.build(spec, with_data=False)
    return info.value


@pytest.mark.parametrize("algorithm", ["bp", "zil", "fazil", "fa", "dfa", "tp", "dtp", "sdtp", "ao_sdtp"])
def test_cycle_is_named_by_the_rules_that_need_an_order(algorithm):
    err = rule_error(cycle_dict([("x", "a"), ("a", "b"), ("b", "a"), ("b", "y")]), algorithm)
    msg = assert_one_line(err)
    assert "a -> b -> a" in msg and repr(algorithm) in msg and "il, pc, ipc" in msg
    assert err.where == "model.edges[2]"          # the edge that closes the cycle


@pytest.mark.parametrize("algorithm", ["il", "pc", "ipc"])
def test_cycle_is_accepted_by_the_energy_based_rules(algorithm):
    from pcgraph.train import Experiment

    d = cycle_dict([("x", "a"), ("a", "b"), ("b", "a"), ("b", "y")])
    d["train"] = {**d["train"], "algorithm": algorithm}
    exp = Experiment.build(Spec.from_dict(d), with_data=False)
    assert not exp.compiled.ordered and exp.compiled.cycle == ["a", "b", "a"]


def test_longer_cycle_is_named():
    d = cycle_dict([("x", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "y")],
                   nodes=("x", "a", "b", "c", "y"))
    msg = str(rule_error(d))
    assert "a -> b -> c -> a" in msg


def test_self_loop():
    err = spec_error(three_edges({"from": "h", "to": "h"}))
    assert err.where == "model.edges[2]"
    assert "self-loop" in str(err)


def test_cycle_with_an_exit_edge_declared_first():
    # b -> y is declared before b -> a, so the cycle search walks a -> b -> y (a sink).
    err = rule_error(cycle_dict([("x", "a"), ("a", "b"), ("b", "y"), ("b", "a")]))
    assert "a -> b -> a" in str(err) and err.where == "model.edges[3]"


def test_shape_mismatch_shows_both_shapes():
    d = base_dict()
    d["model"]["nodes"].insert(2, {"name": "g", "shape": [16]})
    d["model"]["edges"] = [{"from": "x", "to": "h"}, {"from": "h", "to": "g", "op": "identity"},
                           {"from": "g", "to": "y"}]
    err = spec_error(d)
    assert isinstance(err, GraphError)
    msg = assert_one_line(err)
    assert err.where == "model.edges[1]"
    assert "[32]" in msg and "[16]" in msg


def test_flatten_size_mismatch():
    d = base_dict()
    d["model"]["nodes"][0]["shape"] = [1, 8, 8]
    d["model"]["nodes"].insert(1, {"name": "f", "shape": [60]})
    d["model"]["edges"][0] = {"from": "f", "to": "h"}
    d["model"]["edges"].insert(0, {"from": "x", "to": "f", "op": "flatten"})
    err = spec_error(d)
    assert err.where == "model.edges[0]"
    assert "[1, 8, 8]" in str(err) and "[60]" in str(err)


def test_no_input():
    d = base_dict()
    d["model"]["nodes"][0]["role"] = "hidden"
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.nodes"
    assert "no input node" in msg and "role: input" in msg


def test_no_output():
    d = base_dict()
    del d["model"]["nodes"][2]["role"]
    err = spec_error(d)
    msg = assert_one_line(err)
    assert err.where == "model.nodes"
    assert "no output node" in msg and "role: output" in msg


def test_output_that_is_not_a_sink():
    d = base_dict()
    d["model"]["nodes"].append({"name": "z", "shape": [4]})
    d["model"]["edges"].append({"from": "y", "to": "z"})
    err = spec_error(d)
    msg = assert_one_line(err)
    assert msg.startswith("model.edges[2].from: output node 'y' is not a sink")


def test_edge_into_an_input():
    err = spec_error(three_edges({"from": "h", "to": "x"}))
    assert err.where == "model.edges[2].to"


def test_hidden_node_reaching_no_output():
    d = base_dict()
    d["model"]["nodes"].append({"name": "z", "shape": [4]})
    d["model"]["edges"].append({"from": "h", "to": "z"})
    err = spec_error(d)
    msg = assert_one_line(err)
    assert msg.startswith("model.nodes[3]: node 'z' reaches no output")


def test_hidden_node_without_inputs():
    d = base_dict()
    d["model"]["nodes"].append({"name": "z", "shape": [4]})
    d["model"]["edges"].append({"from": "z", "to": "y"})
    err = spec_error(d)
    assert err.where == "model.nodes[3]"
    assert "no incoming edge" in str(err)


def test_duplicate_node_name():
    d = base_dict()
    d["model"]["nodes"].append({"name": "h", "shape": [32]})
    err = spec_error(d)
    msg = assert_one_line(err)
    assert msg == "model.nodes[3].name: duplicate node name 'h'"


def test_duplicate_edge():
    err = spec_error(three_edges({"from": "h", "to": "y"}))
    assert err.where == "model.edges[2]"
    assert "edges[1]" in str(err)


def test_shared_param_with_mismatched_shapes():
    d = base_dict()
    d["model"]["nodes"].insert(2, {"name": "g", "shape": [16]})
    d["model"]["edges"] = [{"from": "x", "to": "h", "param": "W"}, {"from": "h", "to": "g", "param": "W"},
                           {"from": "g", "to": "y"}]
    err = spec_error(d)
    assert isinstance(err, GraphError)
    msg = assert_one_line(err)
    assert msg.startswith("model.edges[1].param: parameter 'W' is shared with edges[0]")
    assert "[32, 64]" in msg and "[16, 32]" in msg


def test_shared_param_with_matching_shapes_is_valid():
    d = base_dict()
    d["model"]["nodes"].insert(2, {"name": "g", "shape": [32]})
    d["model"]["nodes"].insert(3, {"name": "k", "shape": [32]})
    d["model"]["edges"] = [{"from": "x", "to": "h"}, {"from": "h", "to": "g", "param": "W"},
                           {"from": "g", "to": "k", "param": "W"}, {"from": "k", "to": "y"}]
    spec = Spec.from_dict(d)
    assert [e.key for e in spec.model.edges] == ["x_to_h", "W", "W", "k_to_y"]


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["data"].update(batch_size=0), "data.batch_size"),
    (lambda d: d["data"].update(batch_size="8"), "data.batch_size"),
    (lambda d: d["train"].update(epochs=True), "train.epochs"),
    (lambda d: d["train"].update(reduction="max"), "train.reduction"),
    (lambda d: d.update(seed="one"), "seed"),
    (lambda d: d["model"]["nodes"][1].update(shape=[0]), "model.nodes[1].shape"),
    (lambda d: d["model"]["edges"][0].update(bias="yes"), "model.edges[0].bias"),
    (lambda d: d["model"]["edges"][0].update(op="identity", bias=True), "model.edges[0].bias"),
    (lambda d: d["model"]["edges"][0].pop("to"), "model.edges[0]"),
])
def test_typed_values_name_their_path(mutate, where):
    d = base_dict()
    mutate(d)
    err = spec_error(d)
    assert err.where == where
    assert str(err).startswith(where + ": ")


def test_no_model_and_empty_spec():
    assert spec_error({"name": "x"}).where == "model"
    with pytest.raises(SpecError, match="empty"):
        Spec.from_dict(None)


# ---- errors from files start with file:line:col ---------------------------------------------

def with_line(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_file_location_unknown_top_key(tmp_path):
    text = BASE + "optimiser: adam\n"
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:27:1: optimiser: unknown key 'optimiser'")


def test_file_location_unknown_node_key(tmp_path):
    text = with_line(BASE, "      shape: [32]\n", "      size: [32]\n")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:12:7: model.nodes[1].size: unknown key 'size'")


def test_file_location_unknown_data_key(tmp_path):
    text = with_line(BASE, "  batch_size: 8\n", "  batchsize: 8\n")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:5:3: data.batchsize: unknown key")


def test_file_location_unknown_edge_key(tmp_path):
    text = with_line(BASE, "      activation: tanh\n", "      activaton: tanh\n")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:21:7: model.edges[1].activaton: ")


def test_file_location_unknown_activation(tmp_path):
    text = with_line(BASE, "      activation: tanh\n", "      activation: tahn\n")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:21:7: model.edges[1].activation: unknown activation 'tahn'")


def test_file_location_unknown_op_flow_style(tmp_path):
    text = with_line(BASE, "    - from: h\n      to: y\n", "    - {from: h, to: y, op: dense2}\n")
    text = text.replace("      activation: tanh\n", "")
    err, path = file_error(tmp_path, text)
    # the 'op' key inside the flow mapping
    assert str(err).startswith(f"{path}:{pos(text, 'op: dense2')}: model.edges[1].op: unknown op")


def test_file_location_dangling_edge(tmp_path):
    text = BASE.replace("loss:", "    - from: h\n      to: z\nloss:")
    err, path = file_error(tmp_path, text)
    assert pos(text, "to: z") == "23:7"
    assert str(err).startswith(f"{path}:23:7: model.edges[2].to: edge end 'z' is not a node (known: x, h, y)")


def test_file_location_duplicate_node(tmp_path):
    text = BASE.replace("  edges:", "    - name: h\n      shape: [4]\n  edges:")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:{pos(text, 'name: h', 1)}: model.nodes[3].name: duplicate")


def test_file_location_unknown_loss(tmp_path):
    text = with_line(BASE, "loss: cross_entropy\n", "loss: hinge\n")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:22:1: loss: unknown loss 'hinge'")


def test_file_location_output_not_sink(tmp_path):
    text = BASE.replace("  edges:", "    - name: z\n      shape: [3]\n  edges:")
    text = text.replace("loss:", "    - from: y\n      to: z\nloss:")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:{pos(text, 'from: y')}: model.edges[2].from: output node 'y'")


def test_file_location_shape_mismatch(tmp_path):
    text = with_line(BASE, "    - from: x\n      to: h\n", "    - {from: x, to: h, op: identity}\n")
    err, path = file_error(tmp_path, text)
    msg = str(err)
    assert msg.startswith(f"{path}:{pos(text, '{from: x')}: model.edges[0]: ")
    assert "[64]" in msg and "[32]" in msg


def test_file_location_hidden_reaches_no_output(tmp_path):
    text = BASE.replace("  edges:", "    - name: z\n      shape: [3]\n  edges:")
    text = text.replace("loss:", "    - from: h\n      to: z\nloss:")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:{pos(text, 'name: z')}: model.nodes[3]: node 'z' reaches no output")


def test_file_location_cycle(tmp_path):
    text = textwrap.dedent("""\
        model:
          nodes:
            - {name: x, shape: [4], role: input}
            - {name: a, shape: [4]}
            - {name: b, shape: [4]}
            - {name: y, shape: [4], role: output}
          edges:
            - {from: x, to: a}
            - {from: a, to: b}
            - {from: b, to: a}
            - {from: b, to: y}
        """)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = Spec.load(path)                      # a valid graph: only the order-needing rules refuse it
    from pcgraph.train import Experiment

    with pytest.raises(PCGraphError) as info:
        Experiment.build(spec, with_data=False)    # (bp, the default rule)
    assert str(info.value).startswith(f"{path}:10:7: model.edges[2]: rule 'bp' needs a feed-forward order, "
                                      "but the graph has a cycle: a -> b -> a")


def test_file_location_shared_param(tmp_path):
    text = textwrap.dedent("""\
        model:
          nodes:
            - {name: x, shape: [4], role: input}
            - {name: a, shape: [4]}
            - {name: y, shape: [2], role: output}
          edges:
            - {from: x, to: a, param: W}
            - {from: a, to: y, param: W}
        """)
    err, path = file_error(tmp_path, text)
    msg = str(err)
    assert msg.startswith(f"{path}:8:24: model.edges[1].param: parameter 'W'")
    assert "[4, 4]" in msg and "[2, 4]" in msg


def test_file_location_no_input(tmp_path):
    text = with_line(BASE, "      role: input\n", "")
    err, path = file_error(tmp_path, text)
    assert str(err).startswith(f"{path}:7:3: model.nodes: the graph has no input node")


def test_file_location_unknown_rule_from_experiment(tmp_path):
    text = with_line(BASE, "  algorithm: zil\n", "  algorithm: zilch\n")
    path = tmp_path / "rule.yaml"
    path.write_text(text)
    spec = Spec.load(path)
    with pytest.raises(SpecError) as info:
        Experiment.build(spec, with_data=False)
    assert str(info.value).startswith(f"{path}:24:3: train.algorithm: unknown learning rule 'zilch'")


def test_file_location_unknown_dataset_from_experiment(tmp_path):
    text = with_line(BASE, "  dataset: digits\n", "  dataset: digitz\n")
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        Experiment.build(Spec.load(path), with_data=True)
    assert str(info.value).startswith(f"{path}:4:3: data.dataset: unknown dataset 'digitz'")


def test_file_location_unknown_optimizer_from_experiment(tmp_path):
    text = with_line(BASE, "  optimizer: {name: sgd, lr: 0.1}\n", "  optimizer: {name: sgdd, lr: 0.1}\n")
    path = tmp_path / "opt.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        Experiment.build(Spec.load(path), with_data=False)
    assert pos(text, "name: sgdd") == "26:15"
    assert str(info.value).startswith(f"{path}:26:15: train.optimizer.name: unknown optimizer 'sgdd'")


def test_invalid_yaml_is_located(tmp_path):
    err, path = file_error(tmp_path, "model: {nodes: [x, y\n")
    assert isinstance(err, SpecError)
    assert str(err).startswith(f"{path}:2:1: invalid YAML")


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the spec"):
        Spec.load(tmp_path / "nope.yaml")


# ---- --set overrides ------------------------------------------------------------------------

def test_override_turns_a_rule_name_into_a_mapping():
    d = base_dict()
    out = apply_overrides(d, ["train.algorithm.gamma=0.5"])
    assert out["train"]["algorithm"] == {"name": "zil", "gamma": 0.5}
    assert d["train"]["algorithm"] == "zil"  # the input is not modified


def test_override_values_parse_as_yaml():
    out = apply_overrides(base_dict(), ["model.edges[1].activation=sigmoid", "data.batch_size=7",
                                        "data.root=/tmp/data", "train.optimizer.lr=0.001",
                                        "data.shuffle=false", "model.nodes[1].shape=[16]"])
    assert out["model"]["edges"][1]["activation"] == "sigmoid"
    assert out["data"]["batch_size"] == 7 and isinstance(out["data"]["batch_size"], int)
    assert out["data"]["root"] == "/tmp/data"
    assert out["train"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert out["data"]["shuffle"] is False
    assert out["model"]["nodes"][1]["shape"] == [16]


def test_scientific_notation_is_a_float(tmp_path):
    spec = Spec.from_yaml(BASE, overrides=["train.optimizer.lr=1e-3"])
    assert spec.train.optimizer["lr"] == pytest.approx(1e-3)
    path = tmp_path / "lr.yaml"
    path.write_text(BASE.replace("lr: 0.1", "lr: 1e-3"))
    exp = Experiment.build(Spec.load(path), with_data=False)
    assert exp.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_override_creates_missing_mappings():
    d = base_dict()
    del d["train"]
    out = apply_overrides(d, ["train.algorithm.name=il", "train.algorithm.T=5"])
    assert out["train"] == {"algorithm": {"name": "il", "T": 5}}


def test_spec_load_with_overrides():
    spec = Spec.load(QUICKSTART, overrides=["train.algorithm.gamma=0.5", "model.edges[1].activation=tanh",
                                            "model.edges[0].activation=sigmoid", "data.batch_size=7"])
    assert spec.train.algorithm == AlgorithmSpec("zil", {"gamma": 0.5})
    assert spec.train.algorithm.to_value() == {"name": "zil", "gamma": 0.5}
    assert spec.model.edges[0].activation == "sigmoid"
    assert spec.model.edges[1].activation == "tanh"
    assert spec.data.batch_size == 7 and type(spec.data.batch_size) is int


def test_with_overrides():
    spec = Spec.load(QUICKSTART)
    other = spec.with_overrides(["data.batch_size=7", "train.algorithm=il"])
    assert other.data.batch_size == 7 and other.train.algorithm.name == "il"
    assert spec.data.batch_size == 32  # unchanged


@pytest.mark.parametrize("item, where, words", [
    ("model.edges[5].activation=tanh", "--set model.edges[5].activation=tanh", "out of range"),
    ("model.edges[x].activation=tanh", "--set model.edges[x].activation=tanh", "cannot parse"),
    ("model..edges=1", "--set model..edges=1", "cannot parse"),
    ("model.edges.op=linear", "--set model.edges.op=linear", "not inside a mapping"),
    ("data.batch_size", "--set data.batch_size", "KEY=VALUE"),
])
def test_bad_override_paths(item, where, words):
    with pytest.raises(SpecError) as info:
        apply_overrides(base_dict(), [item])
    err = info.value
    assert err.where == where
    assert str(err).startswith(where + ": ")
    assert words in str(err)


def test_bad_override_through_spec_load():
    with pytest.raises(SpecError) as info:
        Spec.load(QUICKSTART, overrides=["model.edges[2].activation=tanh"])
    assert str(info.value) == ("--set model.edges[2].activation=tanh: index 2 is out of range "
                               "(the list has 2 items)")


def test_override_value_is_validated():
    with pytest.raises(SpecError) as info:
        Spec.load(QUICKSTART, overrides=["data.batch_size=seven"])
    assert info.value.where == "data.batch_size"
    assert "positive integer" in str(info.value)


# ---- builder API and round trips ------------------------------------------------------------

def built_spec() -> Spec:
    s = Spec(name="built", seed=11, description="a builder spec")
    s.add_node("x", [64], "input").add_node("h1", [32]).add_node("h2", [32]).add_node("y", [10], "output")
    s.add_edge("x", "h1", activation="identity", bias=True)
    s.add_edge("h1", "h2", "linear", "tanh", param="shared")
    s.add_edge("h2", "y", "linear", "sigmoid")
    s.set_data(dataset="digits", batch_size=16, train_subset=200, test_subset=50, shuffle=False)
    s.set_loss({"y": "cross_entropy"})
    s.set_train(algorithm={"name": "il", "T": 7}, epochs=3, optimizer={"name": "adam", "lr": 0.002},
                reduction="sum", max_steps_per_epoch=5)
    return s.validate()


def test_builder_sets_everything():
    s = built_spec()
    assert s.model.inputs == ["x"] and s.model.outputs == ["y"] and s.model.hidden == ["h1", "h2"]
    assert s.data == DataSpec("digits", 16, 1000, None, 200, 50, False)
    assert s.train.algorithm == AlgorithmSpec("il", {"T": 7})
    assert s.train.epochs == 3 and s.train.reduction == "sum" and s.train.max_steps_per_epoch == 5
    assert s.loss_for("y") == "cross_entropy"


def test_builder_rejects_bad_values():
    s = Spec()
    with pytest.raises(SpecError):
        s.set_data(batch_size=-1)
    with pytest.raises(SpecError):
        s.set_loss("hinge")
    with pytest.raises(SpecError):
        s.set_train(reduction="max")
    with pytest.raises(SpecError):
        s.add_edge("a", "b", op="nope")


def test_builder_yaml_round_trip(tmp_path):
    s = built_spec()
    path = tmp_path / "built.yaml"
    s.save(path)
    back = Spec.load(path)
    assert back == s
    assert back.description == "a builder spec"
    assert back.to_dict() == s.to_dict()
    assert back.source == str(path)


def test_equality_ignores_source_but_not_content():
    a = Spec.from_yaml(BASE, "one.yaml")
    b = Spec.from_yaml(BASE, "two.yaml")
    assert a == b
    c = Spec.from_yaml(BASE.replace("seed: 1", "seed: 2"))
    assert a != c
    d = Spec.from_yaml(BASE.replace("activation: tanh", "activation: sigmoid"))
    assert a != d


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_bundled_graph_yaml_round_trip(path):
    spec = Spec.load(path)
    text = spec.to_yaml()
    back = Spec.from_yaml(text)
    assert back == spec
    assert back.to_yaml() == text  # dumping is stable


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_bundled_graph_dict_round_trip(path):
    spec = Spec.load(path)
    assert Spec.from_dict(copy.deepcopy(spec.to_dict())) == spec


def test_networkx_round_trip_of_the_graph():
    spec = built_spec()
    g = spec.model.to_networkx()
    assert isinstance(g, nx.DiGraph)
    values = {n for n, a in g.nodes(data=True) if a["kind"] != "factor"}
    assert values == {"x", "h1", "h2", "y"}
    assert g.nodes["x"]["role"] == "input" and g.nodes["x"]["shape"] == [64] and g.nodes["x"]["kind"] == "value"
    assert g.nodes["h1"]["role"] == "hidden"
    attrs = g.nodes["h1->h2#1"]   # the edge h1 -> h2 is a factor node between them
    assert list(g.predecessors("h1->h2#1")) == ["h1"] and list(g.successors("h1->h2#1")) == ["h2"]
    assert g.edges["h1", "h1->h2#1"]["ports"] == [0]
    assert attrs["op"] == "linear" and attrs["activation"] == "tanh" and attrs["param"] == "shared"
    assert attrs["bias"] is False and attrs["edge_kind"] == "edge" and attrs["options"] == {} and attrs["index"] == 1
    assert g.nodes["x->h1#0"]["bias"] is True
    back = PCGraph.from_networkx(g)
    assert back == spec.model
    assert list(back.nodes) == list(spec.model.nodes)
    assert [e.label for e in back.edges] == [e.label for e in spec.model.edges]


def test_networkx_round_trip_keeps_edge_order_by_index():
    spec = Spec.load(QUICKSTART)
    g = spec.model.to_networkx()
    # rebuild with nodes and arcs inserted in reverse; 'index' restores the declared order
    h = nx.DiGraph()
    h.add_nodes_from(reversed(list(g.nodes(data=True))))
    h.add_edges_from(reversed(list(g.edges(data=True))))
    back = PCGraph.from_networkx(h)
    assert back.edges == spec.model.edges


def test_spec_networkx_round_trip():
    spec = Spec.load(QUICKSTART)
    g = spec.to_networkx()
    assert g.graph["name"] == "quickstart" and g.graph["seed"] == 7 and g.graph["loss"] == "cross_entropy"
    back = Spec.from_networkx(g)
    assert back == spec


def test_spec_from_a_plain_networkx_graph():
    g = nx.DiGraph()
    g.add_node("x", shape=[64], role="input")
    g.add_node("h", shape=[16])
    g.add_node("y", shape=[10], role="output")
    g.add_edge("x", "h", activation="identity", bias=True)
    g.add_edge("h", "y", activation="tanh")
    spec = Spec.from_networkx(g, name="nx", loss="cross_entropy", train={"algorithm": "zil"})
    assert spec.name == "nx" and spec.loss == "cross_entropy"
    assert [e.label for e in spec.model.edges] == ["x->h", "h->y"]
    assert spec.model.edges[0].bias is True and spec.model.edges[0].op == "linear"
    assert spec.model.edges[1].activation == "tanh"
    Experiment.build(spec, with_data=False)  # compiles


def test_spec_from_networkx_validates():
    g = nx.DiGraph()
    g.add_node("x", shape=[4], role="input")
    g.add_node("y", shape=[3])  # no output
    g.add_edge("x", "y")
    with pytest.raises(GraphError, match="no output node"):
        Spec.from_networkx(g)


def test_spec_networkx_round_trip_with_description():
    spec = built_spec()
    assert Spec.from_networkx(spec.to_networkx()) == spec


def test_empty_file_names_the_file(tmp_path):
    err, path = file_error(tmp_path, "# nothing here\n", "empty.yaml")
    assert str(path) in str(err)
