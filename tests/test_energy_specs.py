"""The energy-based specs in graphs/ train from their YAML and answer their queries.

* ``mnist_generative``: label -> h1 -> h2 -> image, clamp label and image; classify, generate, complete.
* ``assoc_memory``: latent -> hidden -> image, clamp the image only (an associative memory,
  Salvatori et al. 2021); complete (top half given) and denoise, on the stored (train) images.
* ``pc_graph_mnist``: image <-> hidden <-> label <-> image, a graph with cycles (Salvatori et
  al. 2022); classify and generate.

Fast tests (a few seconds each) cut the data to small subsets and train one epoch, then
answer every query of the spec on 20 samples and check that its metrics are there and finite.
Slow tests train long enough to check that the networks learn what the queries ask (thresholds
well below what was measured; see each test). All but the first need the MNIST files
(``PCGRAPH_DATA``, or ``../shared/data`` via conftest.py) and are skipped without them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from pcgraph import Spec
from pcgraph.train import Experiment, Trainer
from pcgraph.train.query import answer

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def _have_mnist() -> bool:
    root = os.environ.get("PCGRAPH_DATA")
    return bool(root) and (Path(root) / "MNIST").is_dir()


needs_mnist = pytest.mark.skipif(not _have_mnist(), reason="MNIST files not found (set PCGRAPH_DATA)")

# the metrics each query must report (query -> keys), per spec
EXPECTED = {
    "mnist_generative": {
        "classify": ["accuracy/label"],
        "generate": ["mse/image", "mse_mean_image/image", "class_means/image"],
        "complete": ["mse/image", "mse_mean_image/image", "accuracy/label"],
    },
    "assoc_memory": {
        "complete": ["mse/image", "mse_mean_image/image"],
        "denoise": ["mse/image", "mse_mean_image/image"],
    },
    "pc_graph_mnist": {
        "classify": ["accuracy/label"],
        "generate": ["mse/image", "mse_mean_image/image", "class_means/image"],
    },
}

# small overrides that keep each fast test to a few seconds (inference lengths cut too)
FAST = {
    "mnist_generative": ["data.train_subset=200", "data.test_subset=50", "train.epochs=1",
                         "queries.classify.T=20", "queries.complete.T=20"],
    "assoc_memory": ["data.train_subset=40", "data.test_subset=20", "train.epochs=1",
                     "queries.complete.T=30", "queries.denoise.T=30"],
    "pc_graph_mnist": ["data.train_subset=200", "data.test_subset=50", "train.epochs=1",
                       "queries.classify.T=20", "queries.generate.T=30"],
}


def _train(name: str, overrides: list[str]):
    spec = Spec.load(GRAPHS / f"{name}.yaml", overrides=overrides)
    exp = Experiment.build(spec)
    history = Trainer(exp, out=None, progress=False, log=lambda s: None).fit()
    return exp, history


def test_the_specs_declare_their_queries():
    for name, queries in EXPECTED.items():
        spec = Spec.load(GRAPHS / f"{name}.yaml")
        assert set(queries) <= set(spec.queries), (name, list(spec.queries))
        assert spec.evaluate in spec.queries, name
        assert spec.train.algorithm.name == "pc", name
    assoc = Spec.load(GRAPHS / "assoc_memory.yaml")
    assert assoc.clamp == {"image": "image"}                    # unsupervised: the image only
    assert all(q.split == "train" for q in assoc.queries.values())   # recall of stored images
    assert assoc.data.train_subset and assoc.data.train_subset <= 1000
    pcg = Spec.load(GRAPHS / "pc_graph_mnist.yaml")
    pairs = {(e.sources[0], e.dst) for e in pcg.model.edges}
    for a, b in [("image", "hidden"), ("hidden", "label"), ("image", "label")]:
        assert (a, b) in pairs and (b, a) in pairs, (a, b)      # both directions: cycles
    assert pcg.train.algorithm.settings.get("init") == "zeros"  # no feed-forward order to start from


@pytest.mark.mnist
@needs_mnist
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_trains_and_answers_its_queries(name):
    exp, history = _train(name, FAST[name])
    assert len(history) == 1
    record = history[0]
    assert math.isfinite(record["train_loss"]), record
    assert math.isfinite(record["test_loss"]), record
    assert any(k.startswith("test/") for k in record), record   # the evaluate query's metrics
    for query, keys in EXPECTED[name].items():
        result = answer(exp, query, n=20)
        assert len(result.labels) == 20
        for key in keys:
            assert key in result.metrics, (name, query, result.metrics)
            assert math.isfinite(result.metrics[key]), (name, query, result.metrics)
        assert result.energy and all(math.isfinite(e) for e in result.energy), (name, query)
        for v in result.query.read:
            assert v in result.values and bool(result.values[v].isfinite().all()), (name, query, v)


@pytest.mark.slow
@pytest.mark.mnist
@needs_mnist
def test_mnist_generative_classifies_and_generates():
    # measured: accuracy 0.80, class_means 1.0 after 2 epochs on 5000 images (~15 s)
    exp, history = _train("mnist_generative", ["data.train_subset=5000", "data.test_subset=500",
                                               "train.epochs=2"])
    acc = history[-1]["test_accuracy"]          # the evaluate query (classify) on the test split
    assert acc > 0.5, history
    gen = answer(exp, "generate", n=200)
    assert gen.metrics["class_means/image"] > 0.5, gen.metrics
    assert gen.metrics["mse/image"] < gen.metrics["mse_mean_image/image"], gen.metrics


@pytest.mark.slow
@pytest.mark.mnist
@needs_mnist
def test_assoc_memory_recalls_stored_images():
    # 50 memories, 20 epochs (~10 s): measured recall mse 0.0003 against 0.063 for the mean
    # image, all 50 below 0.005
    exp, history = _train("assoc_memory", ["data.train_subset=50", "data.test_subset=20", "train.epochs=20"])
    assert history[-1]["train_loss"] < 0.5, history     # the energy per stored image goes to ~0
    r = answer(exp, "complete")
    assert len(r.labels) == 50                          # the train split: the stored images
    assert r.metrics["mse/image"] < 0.1 * r.metrics["mse_mean_image/image"], r.metrics
    free = ~r.masks["image"].reshape(-1)
    err = (r.values["image"].reshape(50, -1) - r.truth["image"].reshape(50, -1))[:, free].pow(2).mean(1)
    assert float((err < 0.005).double().mean()) >= 0.8, err


@pytest.mark.slow
@pytest.mark.mnist
@needs_mnist
def test_pc_graph_with_cycles_classifies():
    # measured: 0.74 after one epoch on 10000 images; 5000 images, 2 epochs here
    exp, history = _train("pc_graph_mnist", ["data.train_subset=5000", "data.test_subset=500"])
    assert history[-1]["test_accuracy"] > 0.5, history
