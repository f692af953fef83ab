"""Build a graph with the Python API (a skip edge included), inspect the compiled program,
train it with Z-IL on the bundled digits, and save/reload the spec as YAML.

    python examples/build_and_train.py [--epochs 5] [--out DIR]
"""

import argparse
import tempfile
from pathlib import Path

import pcgraph


def build() -> pcgraph.Spec:
    spec = pcgraph.Spec(name="tiny", seed=0)
    spec.add_node("x", [64], role="input").add_node("h", [32]).add_node("y", [10], role="output")
    spec.add_edge("x", "h", op="linear", activation="identity", bias=True)
    spec.add_edge("h", "y", op="linear", activation="tanh", bias=True)
    spec.add_edge("x", "y", op="linear")  # a skip edge straight from the input
    spec.set_data(dataset="digits", batch_size=32).set_loss("cross_entropy")
    spec.set_train(algorithm="zil", epochs=5, optimizer={"name": "adam", "lr": 3e-3})
    return spec.validate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spec = build()
    out = Path(args.out or tempfile.mkdtemp())
    spec.save(out / "tiny.yaml")
    assert pcgraph.Spec.load(out / "tiny.yaml") == spec
    exp = pcgraph.Experiment.build(spec)
    print(exp.compiled.describe())
    print(exp.rule.describe())
    history = pcgraph.Trainer(exp, out=out, progress=False).fit(args.epochs)
    print(f"final test accuracy: {history[-1]['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
