"""The graph IR: construction checks, topological order, distances to outputs, shapes."""

from __future__ import annotations

import pytest

from pcgraph.errors import GraphError, SpecError
from pcgraph.ir import Edge, PCGraph, ValueNode


def graph(nodes, edges) -> PCGraph:
    """nodes: [(name, shape or None, role)], edges: [(src, dst, op)]."""
    return PCGraph([ValueNode(n, s, r) for n, s, r in nodes], [Edge(a, b, op) for a, b, op in edges])


def skip_graph() -> PCGraph:
    # x -> h1 -> h2 -> h3 -> y, plus a skip h1 -> y
    return graph(
        [("x", [8], "input"), ("h1", [6], "hidden"), ("h2", [6], "hidden"), ("h3", [6], "hidden"),
         ("y", [3], "output")],
        [("x", "h1", "linear"), ("h1", "h2", "linear"), ("h2", "h3", "linear"), ("h3", "y", "linear"),
         ("h1", "y", "linear")])


def is_topological(g: PCGraph, order: list[str]) -> bool:
    idx = {n: i for i, n in enumerate(order)}
    return sorted(order) == sorted(g.nodes) and all(idx[e.src] < idx[e.dst] for e in g.edges)


def test_roles_and_adjacency():
    g = skip_graph()
    assert g.inputs == ["x"] and g.outputs == ["y"] and g.hidden == ["h1", "h2", "h3"]
    assert g.children("h1") == ["h2", "y"]
    assert g.parents("y") == ["h3", "h1"]
    assert [e.label for e in g.in_edges("y")] == ["h3->y", "h1->y"]
    assert g.edges[4].key == "h1_to_y"


def test_topological_order_of_a_chain_with_a_skip():
    g = skip_graph()
    order = g.topological_order()
    assert order == ["x", "h1", "h2", "h3", "y"]
    assert is_topological(g, order)


def test_topological_order_declared_out_of_order():
    # nodes declared sinks-first; the order must still respect every edge
    g = graph([("y", [2], "output"), ("b", [4], "hidden"), ("a", [4], "hidden"), ("x", [4], "input")],
              [("a", "b", "linear"), ("x", "a", "linear"), ("b", "y", "linear"), ("x", "y", "linear")])
    order = g.topological_order()
    assert order == ["x", "a", "b", "y"]
    assert is_topological(g, order)


def test_topological_order_is_deterministic_on_a_diamond():
    g = graph([("x", [4], "input"), ("a", [4], "hidden"), ("b", [4], "hidden"), ("y", [2], "output")],
              [("x", "a", "linear"), ("x", "b", "linear"), ("a", "y", "linear"), ("b", "y", "linear")])
    assert g.topological_order() == ["x", "a", "b", "y"]
    assert g.copy().topological_order() == ["x", "a", "b", "y"]


def test_topological_order_raises_on_a_cycle():
    g = graph([("x", [4], "input"), ("a", [4], "hidden"), ("b", [4], "hidden"), ("y", [2], "output")],
              [("x", "a", "linear"), ("a", "b", "linear"), ("b", "a", "linear"), ("b", "y", "linear")])
    with pytest.raises(GraphError, match=r"cycle: a -> b -> a"):
        g.topological_order()


def test_distances_to_outputs_with_a_skip_edge():
    g = skip_graph()
    g.lint()
    assert g.distances_to_outputs() == {
        "y": (0, 0), "h3": (1, 1), "h2": (2, 2), "h1": (1, 3), "x": (2, 4),
    }


def test_distances_with_two_outputs():
    g = graph([("x", [4], "input"), ("h", [4], "hidden"), ("y1", [2], "output"), ("y2", [2], "output")],
              [("x", "h", "linear"), ("h", "y1", "linear"), ("x", "y2", "linear")])
    g.lint()
    assert g.distances_to_outputs() == {"y1": (0, 0), "y2": (0, 0), "h": (1, 1), "x": (1, 2)}


def test_distances_leave_out_nodes_that_reach_no_output():
    g = graph([("x", [4], "input"), ("h", [4], "hidden"), ("z", [4], "hidden"), ("y", [2], "output")],
              [("x", "h", "linear"), ("h", "y", "linear"), ("h", "z", "linear")])
    dist = g.distances_to_outputs()
    assert "z" not in dist and dist["h"] == (1, 1) and dist["x"] == (2, 2)
    with pytest.raises(GraphError, match="'z' reaches no output") as info:
        g.lint()
    assert info.value.where == "model.nodes[2]"


def test_infer_shapes_through_an_identity_edge():
    g = graph([("x", [8], "input"), ("h", [6], "hidden"), ("r", None, "hidden"), ("y", [3], "output")],
              [("x", "h", "linear"), ("h", "r", "identity"), ("r", "y", "linear")])
    assert g.nodes["r"].shape is None
    g.infer_shapes()
    assert g.nodes["r"].shape == (6,)


def test_infer_shapes_through_a_chain_of_identity_and_flatten():
    g = graph([("x", [2, 3, 4], "input"), ("a", None, "hidden"), ("f", None, "hidden"), ("y", [3], "output")],
              [("x", "a", "identity"), ("a", "f", "flatten"), ("f", "y", "linear")])
    g.lint()  # lint infers shapes too
    assert g.nodes["a"].shape == (2, 3, 4)
    assert g.nodes["f"].shape == (24,)


def test_infer_shapes_needs_a_shape_a_linear_edge_cannot_imply():
    g = graph([("x", [8], "input"), ("y", None, "output")], [("x", "y", "linear")])
    with pytest.raises(GraphError, match="cannot be inferred") as info:
        g.infer_shapes()
    assert info.value.where == "model.nodes[1]"


def test_infer_shapes_checks_given_shapes():
    g = graph([("x", [8], "input"), ("r", [5], "hidden"), ("y", [3], "output")],
              [("x", "r", "identity"), ("r", "y", "linear")])
    with pytest.raises(GraphError) as info:
        g.infer_shapes()
    assert info.value.where == "model.edges[0]"
    assert "[8]" in str(info.value) and "[5]" in str(info.value)


def test_shape_given_as_an_int_becomes_a_tuple():
    g = PCGraph([ValueNode("x", 5, "input")])
    assert g.nodes["x"].shape == (5,)


@pytest.mark.parametrize("node, where", [
    (ValueNode("", [3]), "model.nodes[1].name"),
    (ValueNode("x", [3]), "model.nodes[1].name"),
    (ValueNode("z", [3], "sink"), "model.nodes[1].role"),
    (ValueNode("z", [3, -1]), "model.nodes[1].shape"),
    (ValueNode("z", []), "model.nodes[1].shape"),
])
def test_add_node_errors_name_the_node(node, where):
    g = PCGraph([ValueNode("x", [3], "input")])
    with pytest.raises(SpecError) as info:
        g.add_node(node)
    assert info.value.where == where


def test_add_edge_errors_name_the_edge():
    g = PCGraph([ValueNode("x", [3], "input"), ValueNode("y", [3], "output")])
    g.add_edge(Edge("x", "y"))
    with pytest.raises(SpecError) as info:
        g.add_edge(Edge("x", "y", op="conv"))
    assert info.value.where == "model.edges[1].op"
    with pytest.raises(SpecError) as info:
        g.add_edge(Edge("x", "y", activation="gelu9"))
    assert info.value.where == "model.edges[1].activation"
    assert len(g.edges) == 1


def test_to_dict_omits_defaults():
    g = skip_graph()
    d = g.to_dict()
    assert d["nodes"][0] == {"name": "x", "shape": [8], "role": "input"}
    assert d["nodes"][1] == {"name": "h1", "shape": [6]}
    assert d["edges"][0] == {"from": "x", "to": "h1", "op": "linear", "bias": False}


def test_equality_and_copy():
    g = skip_graph()
    h = g.copy()
    assert h == g and h is not g
    h.edges[0].activation = "tanh"
    assert h != g
    assert g.edges[0].activation == "identity"


def test_networkx_round_trip_of_a_skip_graph():
    g = skip_graph()
    nxg = g.to_networkx()
    factors = [n for n, a in nxg.nodes(data=True) if a["kind"] == "factor"]
    assert factors == [f"{e.label}#{i}" for i, e in enumerate(g.edges)]
    assert set(nxg.edges) == {(e.src, f"{e.label}#{i}") for i, e in enumerate(g.edges)} | \
        {(f"{e.label}#{i}", e.dst) for i, e in enumerate(g.edges)}
    assert [nxg.nodes[f]["index"] for f in factors] == [0, 1, 2, 3, 4]
    assert PCGraph.from_networkx(nxg) == g


def test_repr_lists_nodes_and_edges():
    text = repr(skip_graph())
    assert text.startswith("PCGraph(5 nodes, 5 edges)")
    assert "node x: [8] input" in text and "edge h1->y: linear(identity)" in text
