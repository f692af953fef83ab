"""Graph datasets through torch-geometric: ``cora``, ``citeseer`` (Planetoid) and ``karate``.

A graph dataset is **one graph**: a sample is a vertex, a value node holds one row per
vertex (``[N, F]``: the vertex axis plays the batch axis) and training is full-batch (one
step per epoch is the whole graph; ``data.batch_size`` does not apply). The structure
(``edge_index``) is a side input, :attr:`Splits.graph <pcgraph.data.datasets.Splits.graph>`,
which :class:`~pcgraph.data.loader.GraphBatches` binds to the graph ops
(:mod:`pcgraph.ops.graph_conv`).

**Masks.** Both splits hold every vertex in order; the training split labels only the
vertices of the training mask and the test split only those of the evaluation mask, every
other vertex has the label :data:`~pcgraph.ops.losses.IGNORE` (``data.train_subset`` /
``test_subset`` keep the first that many labelled vertices of a split, the graph whole).
An unlabelled vertex's
output error is exactly 0 and the loss, its gradient and the reported accuracy count the
labelled vertices only (:class:`~pcgraph.ops.losses.Objective`): the transductive setting
of Kipf & Welling (every vertex's features and edges are seen, only training labels are).

- ``cora`` / ``citeseer``: ``torch_geometric.datasets.Planetoid`` with the public split
  (Cora: 2708 vertices, 1433 features, 7 classes, 140 / 500 / 1000 train / val / test
  vertices; CiteSeer: 3327, 3703, 6, 120 / 500 / 1000). Offline root: ``data.root`` or
  ``PCGRAPH_DATA`` holding ``Planetoid/Cora/raw/ind.cora.*`` (``Planetoid/CiteSeer/raw/
  ind.citeseer.*``). torch-geometric writes ``processed/`` beside ``raw/``, so the raw files
  are copied to ``PCGRAPH_CACHE`` (default ``~/.cache/pcgraph/data``; 1.6 MB, once) and
  processed there: the data root is only read, whoever owns it (a root that already holds
  ``processed/`` is read in place). Without a root they are downloaded to the cache.
  Options: ``normalize_features`` (true: each vertex's features sum to 1, Kipf & Welling's
  preprocessing, ``NormalizeFeatures``), ``evaluate_on`` (``test``, or ``val`` to tune on
  the validation vertices).
- ``karate``: Zachary's karate club (``KarateClub``, shipped inside torch-geometric: no
  files). 34 vertices, one-hot identity features (34), 4 classes, 156 directed edges; one
  labelled training vertex per class, the other 30 are the test vertices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..ops.graph_conv import Graph, pyg
from ..ops.losses import IGNORE
from .datasets import DATASETS, Splits, _bool_option, _cache_dir, _copy_file, data_root

EVALUATE_ON = ("test", "val")


def first_labelled(y: torch.Tensor, k: int | None) -> torch.Tensor:
    """``y`` with only its first ``k`` labelled vertices labelled (``data.train_subset`` /
    ``test_subset`` on a graph: the graph stays whole, fewer of its vertices count)."""
    if not k:
        return y
    labelled = y != IGNORE
    keep = labelled & (labelled.long().cumsum(0) <= k)
    return torch.where(keep, y, IGNORE)


def node_splits(name: str, x: torch.Tensor, y: torch.Tensor, edge_index: torch.Tensor,
                train_mask: torch.Tensor, test_mask: torch.Tensor, num_classes: int) -> Splits:
    """Splits of one graph: every vertex in both, labels kept only on each split's mask."""
    x = x.float().contiguous()
    y = y.long()
    n = x.shape[0]
    for what, m in (("train", train_mask), ("test", test_mask)):
        if m.dtype != torch.bool or m.shape != (n,):
            raise DataError(f"{name}: the {what} mask must be a bool tensor of {n} vertices", "data.dataset")
        if not bool(m.any()):
            raise DataError(f"{name}: the {what} mask selects no vertex", "data.dataset")
    return Splits(name, x, torch.where(train_mask, y, IGNORE), x, torch.where(test_mask, y, IGNORE),
                  num_classes, graph=Graph(edge_index, n))


def _evaluate_on(value: Any) -> str:
    if value not in EVALUATE_ON:
        raise DataError(f"expected one of {', '.join(EVALUATE_ON)}, got {value!r}", "data.options.evaluate_on")
    return value


def _planetoid_root(root: str, folder: str) -> str:
    """The folder holding ``Planetoid/<folder>`` to give torch-geometric: ``root`` when it
    already has ``processed/`` files, else a copy of its raw files in the cache (never write
    into a data root: ``os.access`` says yes to root even on a read-only share)."""
    src = Path(root) / "Planetoid" / folder
    if any((src / "processed").glob("*.pt")):
        return root
    if not (src / "raw").is_dir():
        raise DataError(f"cannot load {folder}: {src / 'raw'} does not exist (the data root holds no "
                        f"Planetoid/{folder}/raw/ind.*.* files)", "data.dataset")
    dst = _cache_dir() / "Planetoid" / folder / "raw"
    for f in (src / "raw").iterdir():
        if f.is_file():
            _copy_file(f, dst / f.name)
    return str(_cache_dir())


def _planetoid(name: str, folder: str):
    files = f"Planetoid/{folder}/raw/ind.{name}.{{x,tx,allx,y,ty,ally,graph,test.index}}"

    def load(root: str | None = None, *, normalize_features: bool = True, evaluate_on: str = "test") -> Splits:
        normalize_features = _bool_option(normalize_features, "normalize_features")
        evaluate_on = _evaluate_on(evaluate_on)
        Planetoid, NormalizeFeatures = pyg("datasets").Planetoid, pyg("transforms").NormalizeFeatures
        root = data_root(root)
        base = _planetoid_root(root, folder) if root is not None else str(_cache_dir())
        try:
            ds = Planetoid(str(Path(base) / "Planetoid"), folder,
                           transform=NormalizeFeatures() if normalize_features else None)
            data = ds[0]
        except Exception as exc:  # noqa: BLE001 - urllib, OSError, pickle errors: one message
            hint = (f"looked in {base}/Planetoid/{folder}, expected {files}" if root is not None else
                    f"set data.root or PCGRAPH_DATA to a folder with {files}")
            raise DataError(f"cannot load {folder}: {type(exc).__name__}: {exc} ({hint})", "data.dataset") from None
        mask = data.test_mask if evaluate_on == "test" else data.val_mask
        return node_splits(name, data.x, data.y, data.edge_index, data.train_mask, mask, ds.num_classes)

    load.__doc__ = (f"Planetoid {folder} (public split; offline root layout: {files}). Options: "
                    "normalize_features (true), evaluate_on (test | val).")
    return load


DATASETS.add("cora", _planetoid("cora", "Cora"))
DATASETS.add("citeseer", _planetoid("citeseer", "CiteSeer"))


@DATASETS.register("karate")
def _karate(root: str | None = None) -> Splits:
    """Zachary's karate club (torch-geometric's ``KarateClub``: no files): 34 vertices, 4
    classes, one training vertex per class, the other 30 vertices are the test set."""
    data = pyg("datasets").KarateClub()[0]
    return node_splits("karate", data.x, data.y, data.edge_index, data.train_mask, ~data.train_mask,
                       int(data.y.max()) + 1)
