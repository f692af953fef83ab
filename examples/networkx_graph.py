"""Hand pcgraph a networkx graph, and get the compiled graph back as one (relays marked).

    python examples/networkx_graph.py
"""

import networkx as nx

import pcgraph
from pcgraph.train import check_against_bp


def main() -> None:
    g = nx.DiGraph(name="nx-diamond", seed=3, data={"dataset": "digits", "batch_size": 16},
                   loss="cross_entropy", train={"algorithm": "zil", "optimizer": {"name": "sgd", "lr": 0.1}})
    g.add_node("x", shape=[64], role="input")
    g.add_node("a", shape=[24])
    g.add_node("b", shape=[16])
    g.add_node("y", shape=[10], role="output")
    g.add_edge("x", "a", op="linear", activation="identity", bias=True)
    g.add_edge("a", "b", op="linear", activation="tanh")
    g.add_edge("b", "y", op="linear", activation="sigmoid")
    g.add_edge("a", "y", op="linear", activation="relu")   # skips a level
    spec = pcgraph.Spec.from_networkx(g)

    compiled = pcgraph.compile_graph(spec.model, spec.loss)
    cg = compiled.to_networkx()
    for n, attrs in cg.nodes(data=True):     # value nodes, then one factor node per edge
        if attrs["kind"] == "factor":
            print(f"{n:12} factor {attrs['op']}, updates at t={attrs['update_step']}")
        else:
            print(f"{n:12} kind={attrs['kind']:5} depth={attrs['depth']}")
    report = check_against_bp(spec, steps=3, dtype="float64")
    print(report.format())


if __name__ == "__main__":
    main()
