"""Predictive coding as an energy model, from Python: a generative network (label -> hidden
-> image) on the bundled 8x8 digits, trained with both ends clamped, then asked three
questions by inference: classify (clamp the image), generate (clamp the label) and complete
(clamp the top half of the image). Writes the picture grids when --out is given.

    python examples/energy_queries.py [--epochs 4] [--out DIR]
"""

import argparse

import pcgraph
from pcgraph.train.query import answer, write_result


def build() -> pcgraph.Spec:
    spec = pcgraph.Spec(name="generative-digits", seed=0)
    spec.add_node("label", [10]).add_node("h", [64]).add_node("image", [64])
    spec.add_edge("label", "h", op="linear", bias=True)
    spec.add_edge("h", "image", op="linear", activation="tanh", bias=True)
    spec.set_clamp({"label": "label", "image": "image"})      # training clamps both ends
    spec.set_data(dataset="digits", batch_size=32)
    spec.set_train(algorithm={"name": "pc", "T": 20, "optimizer": {"name": "sgd", "lr": 0.1}},
                   epochs=4, optimizer={"name": "adam", "lr": 3e-3})
    spec.add_query("classify", clamp={"image": "image"}, read=["label"], T=100,
                   optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.5})
    spec.add_query("generate", clamp={"label": "label"}, read=["image"], T=20)
    spec.add_query("complete", clamp={"image": {"field": "image", "mask": "top_half"}}, read=["image"], T=100)
    spec.evaluate = "classify"
    return spec.validate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    exp = pcgraph.Experiment.build(build())
    print(exp.compiled.describe())
    pcgraph.Trainer(exp, out=None, progress=False).fit(args.epochs)
    for name in ("classify", "generate", "complete"):
        result = answer(exp, name)
        print(result.format())
        if args.out:
            write_result(result, exp.compiled.graph, args.out)


if __name__ == "__main__":
    main()
