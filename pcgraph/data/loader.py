"""Mini-batches straight from device tensors (no per-sample Python), shaped for a graph.

Samples are reshaped to the input node's shape (same number of elements, C order: an
input ``[28, 28]`` gets MNIST's rows in order). Labels become each output's target by
that output's loss (one-hot for MSE, indices for CE; float regression targets pass
through MSE unchanged).

**Which labels each output gets.** Labels without a time axis (``Splits.steps`` is
``None``) go to every output node (e.g. a classifier at every step of a sequence model).
Labels with a time axis (``[N, T, ...]``, per-step targets of a many-to-many task) are
routed one step per output: the graph must have exactly ``T`` output nodes, and the
``k``-th output **in declaration order** (``compiled.graph.outputs``, the order of the
spec's ``model.nodes``) gets step ``k``'s slice ``labels[:, k]``. A count mismatch is a
:class:`~pcgraph.errors.DataError`.

**Graph datasets** (``Splits.graph`` set: ``cora``, ``citeseer``, ``karate``) are one
graph whose samples are its vertices: the loader binds the graph to the compiled graph's
graph ops (:func:`pcgraph.ops.graph_conv.bind_graph`) and yields the whole graph as one
batch, in vertex order (``batch_size``, ``test_batch_size`` and ``shuffle`` do not apply).
Labels of vertices outside a split's mask are :data:`~pcgraph.ops.losses.IGNORE`;
:meth:`GraphBatches.counted` gives the number of labelled samples of a batch. A graph
with graph ops and a dataset without a graph is a :class:`~pcgraph.errors.DataError`.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import DataError
from ..ops.base import get_op
from ..ops.graph_conv import bind_graph, graph_ops
from ..ops.losses import IGNORE
from .datasets import Splits

#: losses that take real-valued (dense) targets
REGRESSION_LOSSES = ("mse",)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Data parallel: rank ``rank``'s rows ``[lo, hi)`` of a batch of ``n`` samples split over
    ``world`` processes: contiguous, in rank order, sizes differing by at most one (the first
    ``n % world`` ranks take one more; a rank may get none when ``n < world``)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class GraphBatches:
    """Feeds ``Splits`` to a compiled graph: each clamped node gets its data field.

    ``clamp`` maps nodes to the fields ``image`` (the sample) and ``label``; by default the one
    input gets ``image`` and every output ``label``. A batch is ``(inputs, targets, labels)``:
    ``targets`` for the clamped *outputs* (what their loss compares with), ``inputs`` for every
    other clamped node (an ``image`` sample reshaped, or a ``label`` as a one-hot vector)."""

    def __init__(self, splits: Splits, compiled, device, dtype, batch_size: int,
                 test_batch_size: int = 1000, shuffle: bool = True, seed: int = 0,
                 clamp: dict[str, str] | None = None):
        g = compiled.graph
        if clamp is None:
            if len(g.inputs) != 1:
                raise DataError(f"dataset {splits.name!r} feeds one input node, but the graph has "
                                f"{len(g.inputs)}: {', '.join(g.inputs)}", "model.nodes")
            clamp = {g.inputs[0]: "image", **{o: "label" for o in g.outputs}}
        self.clamp = dict(clamp)
        #: nodes clamped to the sample, and to the label (outputs among them get targets)
        self.image_nodes = [n for n, f in self.clamp.items() if f == "image"]
        self.label_nodes = [n for n, f in self.clamp.items() if f == "label"]
        self.input = self.image_nodes[0] if self.image_nodes else None
        n_data = math.prod(splits.sample_shape)
        for n in self.image_nodes:
            shape = g.nodes[n].shape
            if math.prod(shape) != n_data:
                what = "input node" if g.nodes[n].role == "input" else "node"
                raise DataError(f"{what} {n!r} has shape {list(shape)} ({math.prod(shape)} values) but "
                                f"{splits.name} samples have shape {list(splits.sample_shape)} ({n_data})",
                                g.where_node(n) if n in compiled.source.nodes else "model.nodes")
            if n in compiled.losses and compiled.losses[n].name not in REGRESSION_LOSSES:
                raise DataError(f"node {n!r} is clamped to the image, a real-valued target: it needs the mse "
                                f"loss, not {compiled.losses[n].name}", "loss")
        shape = g.nodes[self.input].shape if self.input else None
        self.regression = splits.regression
        self.steps = splits.steps
        label_outputs = [o for o in g.outputs if o in self.label_nodes]
        #: output -> the step of the labels it gets (``None``: the whole label)
        self.step_of: dict[str, int | None] = {o: None for o in label_outputs}
        if self.steps is not None:
            if len(label_outputs) != self.steps:
                raise DataError(
                    f"{splits.name} has per-step labels for {self.steps} steps, but the graph has "
                    f"{len(g.outputs)} output node(s) ({', '.join(g.outputs)}); outputs get the steps "
                    f"in declaration order, so declare exactly {self.steps} outputs", "model.nodes")
            self.step_of = {o: k for k, o in enumerate(g.outputs)}
        per_output = splits.num_classes if not self.regression else math.prod(splits.target_shape)
        what = "classes" if not self.regression else f"target values per {'step' if self.steps else 'sample'}"
        for o in self.label_nodes:
            n_out = math.prod(g.nodes[o].shape)
            if n_out != per_output:
                raise DataError(f"output node {o!r} has {n_out} values but {splits.name} has "
                                f"{per_output} {what}", g.where_node(o))
            loss = compiled.losses.get(o)
            if loss is not None and self.regression and loss.name not in REGRESSION_LOSSES:
                raise DataError(f"{splits.name} has real-valued targets: output {o!r} needs the mse "
                                f"loss, not {loss.name}", "loss")
        self.shape = tuple(shape) if shape is not None else tuple(splits.sample_shape)
        self.sample_shape = tuple(splits.sample_shape)
        self.num_classes = splits.num_classes
        self.compiled = compiled
        #: a graph dataset's structure, bound to the graph ops; its batch is the whole graph
        self.graph = splits.graph.to(device) if splits.graph is not None else None
        if self.graph is not None:
            batch_size = test_batch_size = len(splits.train_x)
            shuffle = False
        elif graph_ops(compiled):
            src = compiled.source
            edge = next(e for e in src.edges if getattr(get_op(e.op), "needs_graph", False))
            raise DataError(f"op {get_op(edge.op).name!r} needs a graph dataset (cora, citeseer, karate), "
                            f"but {splits.name} has no graph structure", src.where_edge(edge) + ".op")
        bind_graph(compiled, self.graph)
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.test_batch_size = batch_size, test_batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        #: data parallel (``pcgraph.train.distributed``): every rank draws the same global batch
        #: order and keeps its ``shard_bounds`` rows of each batch; ``shard`` sets these
        self.rank, self.world = 0, 1
        self.train_x = splits.train_x.reshape(-1, *self.shape).to(self.device, dtype)
        self.train_y = self._labels(splits.train_y)
        self.test_x = self.train_x if splits.test_x is splits.train_x else \
            splits.test_x.reshape(-1, *self.shape).to(self.device, dtype)
        self.test_y = self._labels(splits.test_y)

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        if not self.regression:
            return y.to(self.device)
        if y.dim() == 1 + (self.steps is not None):  # scalar targets: give them their axis of 1
            y = y.unsqueeze(-1)
        return y.to(self.device, self.dtype)

    def output_labels(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each output's labels: its step's slice of per-step labels, else all of them."""
        return {o: labels if k is None else labels[:, k] for o, k in self.step_of.items()}

    def targets(self, labels: torch.Tensor, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What each clamped output's loss compares with: its labels (or, clamped to the
        image, the sample ``x``)."""
        g = self.compiled.graph
        out = {o: self.compiled.losses[o].target(y, g.nodes[o].shape, self.dtype)
               for o, y in self.output_labels(labels).items()}
        for n in self.image_nodes:
            if n in self.compiled.losses:
                out[n] = x.reshape(x.shape[0], *g.nodes[n].shape)
        return out

    def clamped_inputs(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values of the clamped nodes that are not outputs: the sample, or the label one-hot."""
        g = self.compiled.graph
        out = {}
        for n in self.image_nodes:
            if n not in self.compiled.losses:
                out[n] = x if n == self.input else x.reshape(x.shape[0], *g.nodes[n].shape)
        for n in self.label_nodes:
            if n not in self.compiled.losses:
                out[n] = self.label_value(n, labels)
        return out

    def label_value(self, n: str, labels: torch.Tensor) -> torch.Tensor:
        """A label as the value of node ``n``: one-hot for classes, the target for regression."""
        shape = self.compiled.graph.nodes[n].shape
        if self.regression:
            return labels.reshape(labels.shape[0], *shape).to(self.dtype)
        return torch.nn.functional.one_hot(labels.clamp(min=0), math.prod(shape)).to(self.dtype) \
            .reshape(labels.shape[0], *shape)

    def batch(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
        return self.clamped_inputs(x, labels), self.targets(labels, x), labels

    def counted(self, labels: torch.Tensor) -> int:
        """How many samples of a batch have a label (all but graph vertices off the mask)."""
        if self.regression:
            return len(labels)
        return int((labels != IGNORE).sum()) if labels.dim() == 1 else len(labels)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_y) / self.batch_size)

    def shard(self, rank: int, world: int) -> "GraphBatches":
        """Yield only rank ``rank``'s share of every batch (of ``world`` processes)."""
        if not 0 <= rank < world:
            raise DataError(f"rank {rank} is not one of the {world} processes")
        if self.graph is not None and world > 1 and graph_ops(self.compiled):
            raise DataError("a graph dataset under graph ops is one batch, the whole graph, whose vertices "
                            "exchange messages: it cannot be split across processes; run it in one process "
                            "(no --nproc / torchrun)", "data.dataset")
        self.rank, self.world = rank, world
        return self

    def train(self) -> Iterator[tuple[dict, dict, torch.Tensor]]:
        """Mini-batches in the order the generator draws; under ``shard`` this rank's rows of
        each global batch (possibly none: an empty batch)."""
        n = len(self.train_y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.world > 1:
                lo, hi = shard_bounds(len(idx), self.rank, self.world)
                idx = idx[lo:hi]
            labels = self.train_y[idx]
            yield self.batch(self.train_x[idx], labels)

    def test(self) -> Iterator[tuple[dict, dict, torch.Tensor]]:
        """Test batches; under ``shard`` this rank's non-empty rows of each."""
        n = len(self.test_y)
        for start in range(0, n, self.test_batch_size):
            stop = min(start + self.test_batch_size, n)
            if self.world > 1:
                lo, hi = shard_bounds(stop - start, self.rank, self.world)
                if lo == hi:
                    continue
                start, stop = start + lo, start + hi
            labels = self.test_y[start:stop]
            yield self.batch(self.test_x[start:stop], labels)
