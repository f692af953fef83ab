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
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import DataError
from .datasets import Splits

#: losses that take real-valued (dense) targets
REGRESSION_LOSSES = ("mse",)


class GraphBatches:
    """Feeds ``Splits`` to a compiled graph with one input node."""

    def __init__(self, splits: Splits, compiled, device, dtype, batch_size: int,
                 test_batch_size: int = 1000, shuffle: bool = True, seed: int = 0):
        g = compiled.graph
        if len(g.inputs) != 1:
            raise DataError(f"dataset {splits.name!r} feeds one input node, but the graph has "
                            f"{len(g.inputs)}: {', '.join(g.inputs)}", "model.nodes")
        self.input = g.inputs[0]
        shape = g.nodes[self.input].shape
        n_in = math.prod(shape)
        n_data = math.prod(splits.sample_shape)
        if n_in != n_data:
            raise DataError(f"input node {self.input!r} has shape {list(shape)} ({n_in} values) but "
                            f"{splits.name} samples have shape {list(splits.sample_shape)} ({n_data})",
                            g.where_node(self.input) if self.input in compiled.source.nodes else "model.nodes")
        self.regression = splits.regression
        self.steps = splits.steps
        #: output -> the step of the labels it gets (``None``: the whole label)
        self.step_of: dict[str, int | None] = {o: None for o in g.outputs}
        if self.steps is not None:
            if len(g.outputs) != self.steps:
                raise DataError(
                    f"{splits.name} has per-step labels for {self.steps} steps, but the graph has "
                    f"{len(g.outputs)} output node(s) ({', '.join(g.outputs)}); outputs get the steps "
                    f"in declaration order, so declare exactly {self.steps} outputs", "model.nodes")
            self.step_of = {o: k for k, o in enumerate(g.outputs)}
        per_output = splits.num_classes if not self.regression else math.prod(splits.target_shape)
        what = "classes" if not self.regression else f"target values per {'step' if self.steps else 'sample'}"
        for o in g.outputs:
            n_out = math.prod(g.nodes[o].shape)
            if n_out != per_output:
                raise DataError(f"output node {o!r} has {n_out} values but {splits.name} has "
                                f"{per_output} {what}", g.where_node(o))
            loss = compiled.losses[o]
            if self.regression and loss.name not in REGRESSION_LOSSES:
                raise DataError(f"{splits.name} has real-valued targets: output {o!r} needs the mse "
                                f"loss, not {loss.name}", "loss")
        self.shape = tuple(shape)
        self.compiled = compiled
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.test_batch_size = batch_size, test_batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.train_x = splits.train_x.reshape(-1, *shape).to(self.device, dtype)
        self.train_y = self._labels(splits.train_y)
        self.test_x = splits.test_x.reshape(-1, *shape).to(self.device, dtype)
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

    def targets(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.compiled.graph
        return {o: self.compiled.losses[o].target(y, g.nodes[o].shape, self.dtype)
                for o, y in self.output_labels(labels).items()}

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_y) / self.batch_size)

    def train(self) -> Iterator[tuple[dict, dict, torch.Tensor]]:
        n = len(self.train_y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            labels = self.train_y[idx]
            yield {self.input: self.train_x[idx]}, self.targets(labels), labels

    def test(self) -> Iterator[tuple[dict, dict, torch.Tensor]]:
        for start in range(0, len(self.test_y), self.test_batch_size):
            labels = self.test_y[start:start + self.test_batch_size]
            yield {self.input: self.test_x[start:start + self.test_batch_size]}, self.targets(labels), labels
