"""Multi-source edges and typed op options in specs: YAML, builder, networkx, errors."""

from __future__ import annotations

import copy
import textwrap

import pytest

from pcgraph import Spec
from pcgraph.errors import PCGraphError
from pcgraph.ir import Edge, PCGraph
from pcgraph.train import Experiment

GATED = textwrap.dedent("""\
    name: gated
    model:
      nodes:
        - {name: x, shape: [6], role: input}
        - {name: a, shape: [4]}
        - {name: b, shape: [4]}
        - {name: g}
        - {name: j}
        - {name: y, shape: [3], role: output}
      edges:
        - {from: x, to: a}
        - {from: x, to: b}
        - {from: [a, b], to: g, op: mul, activation: [tanh, sigmoid]}
        - {from: [g, a], to: j, op: concat}
        - {from: j, to: y, activation: relu}
    loss: cross_entropy
    train: {algorithm: zil}
""")


def load(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return Spec.load(path), path


def error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PCGraphError) as info:
        Spec.load(path)
    return info.value, str(info.value)


def test_multi_source_yaml_loads_infers_shapes_and_round_trips(tmp_path):
    spec, _ = load(tmp_path, GATED)
    e = spec.model.edges[2]
    assert e.sources == ("a", "b") and e.activations == ("tanh", "sigmoid") and e.label == "[a,b]->g"
    assert spec.model.nodes["g"].shape == (4,) and spec.model.nodes["j"].shape == (8,)
    assert Spec.from_yaml(spec.to_yaml()) == spec
    assert Spec.from_dict(copy.deepcopy(spec.to_dict())) == spec
    assert spec.to_dict()["model"]["edges"][2]["from"] == ["a", "b"]
    assert spec.to_dict()["model"]["edges"][2]["activation"] == ["tanh", "sigmoid"]


def test_one_activation_for_all_sources_equals_the_list(tmp_path):
    spec, _ = load(tmp_path, GATED.replace("activation: [tanh, sigmoid]", "activation: [tanh, tanh]"))
    assert spec.model.edges[2].activation == "tanh"
    assert spec.model.edges[2] == Edge(["a", "b"], "g", "mul", "tanh")


def test_builder_and_networkx_carry_multi_source_edges(tmp_path):
    spec, _ = load(tmp_path, GATED)
    b = Spec(name="gated")
    for n in spec.model.nodes.values():
        b.add_node(n.name, list(n.shape), n.role)
    b.add_edge("x", "a").add_edge("x", "b")
    b.add_edge(["a", "b"], "g", op="mul", activation=["tanh", "sigmoid"])
    b.add_edge(["g", "a"], "j", op="concat").add_edge("j", "y", activation="relu")
    assert b.model.edges == spec.model.edges
    g = spec.model.to_networkx()
    f = "[a,b]->g#2"
    assert g.nodes[f]["kind"] == "factor" and g.nodes[f]["activation"] == ["tanh", "sigmoid"]
    assert g.edges["a", f]["ports"] == [0] and g.edges["b", f]["ports"] == [1]
    assert PCGraph.from_networkx(g) == spec.model


def test_the_same_source_twice_round_trips_through_networkx():
    g = PCGraph()
    from pcgraph.ir import ValueNode
    for n, s, r in [("x", [3], "input"), ("h", [3], "hidden"), ("sq", [3], "hidden"), ("y", [2], "output")]:
        g.add_node(ValueNode(n, s, r))
    g.add_edge(Edge("x", "h"))
    g.add_edge(Edge(["h", "h"], "sq", "mul"))
    g.add_edge(Edge("sq", "y"))
    g.lint()
    nxg = g.to_networkx()
    assert nxg.edges["h", "[h,h]->sq#1"]["ports"] == [0, 1]
    assert PCGraph.from_networkx(nxg) == g


def test_multi_source_spec_compiles_with_per_source_relays(tmp_path):
    spec, _ = load(tmp_path, GATED)
    exp = Experiment.build(spec, with_data=False)
    cg = exp.compiled
    # a feeds both g (depth 2) and j (depth 1): read by j through one relay a~1
    assert cg.n_relays == 1 and cg.edges[[e.dst for e in cg.edges].index("j")].sources == ("g", "a~1")
    for i, e in enumerate(cg.edges):
        for s in e.sources:
            if cg.role(s) != "input":
                assert cg.depth[s] == cg.depth[e.dst] + 1, (e.label, s)


@pytest.mark.parametrize("mutate, where, message", [
    (lambda t: t.replace("activation: [tanh, sigmoid]", "activation: [tanh]"), "model.edges[2].activation",
     "one activation for all sources or one per source (2), got 1"),
    (lambda t: t.replace("activation: [tanh, sigmoid]", "activation: [tanh, sigmod]"),
     "model.edges[2].activation[1]", "unknown activation 'sigmod'"),
    (lambda t: t.replace("activation: [tanh, sigmoid]", "activation: [[tanh], sigmoid]"),
     "model.edges[2].activation[0]", "unknown activation"),
    (lambda t: t.replace("from: [a, b], to: g", "from: [a, zz], to: g"), "model.edges[2].from[1]",
     "edge end 'zz' is not a node"),
    (lambda t: t.replace("from: [a, b], to: g", "from: [a], to: g"), "model.edges[2].from",
     "op 'mul' takes at least 2 sources, got 1"),
    (lambda t: t.replace("from: [a, b], to: g", "from: [], to: g"), "model.edges[2].from",
     "non-empty list"),
    (lambda t: t.replace("{from: x, to: a}", "{from: [x, b], to: a}"), "model.edges[0].from",
     "op 'linear' takes exactly 1 source, got 2"),
    (lambda t: t.replace("- {name: b, shape: [4]}", "- {name: b, shape: [5]}"), "model.edges[2]",
     "mul cannot broadcast the source shapes [4], [5]"),
    (lambda t: t.replace("op: concat}", "op: concat, axis: \"0\"}"), "model.edges[3].axis",
     "expected int, got '0'"),
    (lambda t: t.replace("op: concat}", "op: concat, axis: 3}"), "model.edges[3]", "axis"),
    (lambda t: t.replace("op: concat}", "op: concat, heads: 2}"), "model.edges[3].heads",
     "unknown key 'heads'"),
])
def test_multi_source_errors_are_located(tmp_path, mutate, where, message):
    err, text = error(tmp_path, mutate(GATED))
    assert err.where == where, text
    assert message in text, text
    assert "bad.yaml:" in text     # file:line:col of the offending key


def test_typed_op_option_error_names_the_file_position(tmp_path):
    text = textwrap.dedent("""\
        model:
          nodes:
            - {name: x, shape: [5, 8], role: input}
            - {name: a, shape: [5, 8]}
            - {name: y, shape: [3], role: output}
          edges:
            - {from: x, to: a, op: attention, heads: "4"}
            - {from: a, to: y}
    """)
    err, msg = error(tmp_path, text)
    assert err.where == "model.edges[0].heads" and "expected int, got '4'" in msg
    assert msg.startswith(f"{tmp_path / 'bad.yaml'}:7:")


def test_duplicate_edges_need_distinct_parameter_names(tmp_path):
    dup = GATED.replace("- {from: x, to: b}", "- {from: x, to: b}\n    - {from: x, to: b}")
    err, msg = error(tmp_path, dup)
    assert "duplicate edge x->b" in msg and "param" in msg
    ok = GATED.replace("- {from: x, to: b}", "- {from: x, to: b}\n    - {from: x, to: b, param: second}")
    spec, _ = load(tmp_path, ok, "ok.yaml")
    assert [e.key for e in spec.model.in_edges("b")] == ["x_to_b", "second"]
