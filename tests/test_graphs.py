"""Every spec in graphs/ is exact under Z-IL and Fa-Z-IL, and the new ones learn.

The specs are globbed, so a new file in graphs/ is covered without touching this file.
Specs on MNIST / FashionMNIST are marked ``mnist`` and skipped when the files are missing
(``PCGRAPH_DATA``, or ``../shared/data`` via conftest.py). Data are cut to small subsets so
that the whole file runs in well under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcgraph import Experiment, Spec, Trainer
from pcgraph.train import check_against_bp

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
SPECS = sorted(GRAPHS.glob("*.yaml"))


def _clamped_by_section(path: Path) -> bool:
    """Energy specs clamped by a 'clamp:' section (generative, associative, cyclic): no
    feed-forward order, so no BP to match; tests/test_energy*.py cover them."""
    import yaml

    return "clamp" in (yaml.safe_load(path.read_text()) or {})


ORDERED = [p for p in SPECS if not _clamped_by_section(p)]

# torchvision's folder for each offline dataset (pcgraph/data/datasets.py)
FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py",
           "cora": "Planetoid/Cora/raw", "citeseer": "Planetoid/CiteSeer/raw"}   # (pcgraph/data/graphs.py)
TOL = 1e-10
FAST = ["data.train_subset=256", "data.test_subset=64"]
# datasets checked on a generated stand-in (CIFAR-10 is not bundled; the stand-in has its
# shapes and classes), and the few samples the stand-in then needs to generate
STAND_INS = {"cifar10": ["data.dataset=cifar10_synthetic", "data.options.train_size=64",
                         "data.options.test_size=16"]}
# big specs, cut to small batches; bartunov_cifar_lc (50M parameters: float64 copies for bp
# and the rule, Adam's moments, ~17 s) also to fewer channels (l2, l3: 32) and units (h: 64),
# its geometry (kernels, strides, padding) unchanged
SMALL = {"bartunov_cifar_lc": ["data.batch_size=4", "model.nodes[2].shape=[32]", "model.nodes[3].shape=[32]",
                               "model.nodes[4].shape=[64]"],
         "cifar_cnn": ["data.batch_size=8"],
         "bartunov_mnist_lc": ["data.batch_size=16"], "mnist_cnn": ["data.batch_size=16"]}


def _overrides(path: Path) -> list[str]:
    """What test_spec_matches_bp adds to FAST for this spec."""
    return [*STAND_INS.get(Spec.load(path).data.dataset, []), *SMALL.get(path.stem, [])]


def _dataset(path: Path) -> str:
    """The dataset the tests use for this spec (a stand-in where there is one)."""
    return Spec.load(path, overrides=_overrides(path)).data.dataset


def _have(dataset: str) -> bool:
    if dataset not in FOLDERS:
        return True  # bundled (digits)
    root = os.environ.get("PCGRAPH_DATA")
    return bool(root) and (Path(root) / FOLDERS[dataset]).is_dir()


def _marks(dataset: str) -> list:
    marks = []
    if dataset in ("mnist", "fashion_mnist"):
        marks.append(pytest.mark.mnist)
    if not _have(dataset):
        marks.append(pytest.mark.skip(reason=f"{dataset} files not found (set PCGRAPH_DATA)"))
    return marks


def _spec_param(path: Path):
    return pytest.param(path, marks=_marks(_dataset(path)), id=path.stem)


NEW = {"gated_mlp": "mul", "concat_branches": "concat", "transformer_block": "attention",
       "mnist_cnn": "conv2d", "cifar_cnn": "conv2d", "bartunov_mnist_lc": "locally_connected2d",
       "bartunov_cifar_lc": "locally_connected2d"}


@pytest.mark.parametrize("name", sorted(NEW))
def test_new_specs_use_their_op_and_describe_themselves(name):
    spec = Spec.load(GRAPHS / f"{name}.yaml")
    assert spec.description
    edges = [e for e in spec.model.edges if e.op == NEW[name]]
    assert edges, f"{name}: no {NEW[name]} edge"
    if NEW[name] in ("mul", "concat"):
        assert all(len(e.sources) == 2 for e in edges)


@pytest.mark.parametrize("algorithm", ["zil", "fazil"])
@pytest.mark.parametrize("path", [_spec_param(p) for p in ORDERED])
def test_spec_matches_bp(path, algorithm):
    spec = Spec.load(path, overrides=[f"train.algorithm={algorithm}", *FAST, *_overrides(path)])
    report = check_against_bp(spec, steps=2, dtype="float64")
    assert report.params, "no parameters compared"
    assert report.max_divergence <= TOL, report.format()
    # nothing trivially zero: every parameter moves under BP (well above round-off)
    still = [p.name for p in report.params if not p.bp_update > 1e-8]
    assert not still, f"parameters BP does not update: {still}\n{report.format()}"


@pytest.mark.parametrize("path", [p for p in SPECS if _clamped_by_section(p)], ids=lambda p: p.stem)
def test_energy_specs_refuse_the_rules_that_need_an_order(path):
    from pcgraph.errors import CompileError
    from pcgraph.train import Experiment

    spec = Spec.load(path, overrides=["train.algorithm=zil"])
    with pytest.raises(CompileError, match="needs"):
        Experiment.build(spec, with_data=False)


def test_every_spec_names_and_describes_itself():
    for path in SPECS:
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path.name}: no description comment"
        spec = Spec.load(path)
        assert spec.name and spec.seed is not None and spec.model.nodes


def _fit(path, overrides, epochs):
    exp = Experiment.build(Spec.load(path, overrides=overrides))
    return Trainer(exp, out=None, progress=False, log=lambda s: None).fit(epochs)


@pytest.mark.parametrize("name", ["gated_mlp", "concat_branches"])
def test_digits_dags_learn(name):
    history = _fit(GRAPHS / f"{name}.yaml", [], 3)
    assert history[-1]["test_accuracy"] > 0.8, history


def test_transformer_block_shapes_and_relays():
    from pcgraph import compile_graph

    spec = Spec.load(GRAPHS / "transformer_block.yaml")
    cg = compile_graph(spec.model, spec.loss)
    nodes = cg.graph.nodes
    assert nodes["x"].shape == (28, 28) and nodes["r2"].shape == (28, 64) and nodes["n1"].shape == (28, 64)
    assert sum(1 for e in cg.edges if e.op == "attention") == 1
    assert any(n.endswith("~1") for n in nodes), "the residual skips should need relays"


@pytest.mark.mnist
@pytest.mark.skipif(not _have("mnist"), reason="mnist files not found (set PCGRAPH_DATA)")
def test_transformer_block_learns():
    history = _fit(GRAPHS / "transformer_block.yaml", ["data.train_subset=2000", "data.test_subset=1000"], 1)
    assert history[-1]["test_accuracy"] >= 0.5, history


@pytest.mark.mnist
@pytest.mark.skipif(not _have("mnist"), reason="mnist files not found (set PCGRAPH_DATA)")
def test_mnist_cnn_learns():
    history = _fit(GRAPHS / "mnist_cnn.yaml", ["data.train_subset=4000", "data.test_subset=1000"], 1)
    assert history[-1]["test_accuracy"] >= 0.8, history   # 0.863 measured
