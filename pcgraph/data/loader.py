"""Mini-batches straight from device tensors (no per-sample Python), shaped for a graph.

Samples are reshaped to the input node's shape (same number of elements), labels turned
into each output's target by that output's loss (one-hot for MSE, indices for CE).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import DataError
from .datasets import Splits


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
        for o in g.outputs:
            n_out = math.prod(g.nodes[o].shape)
            if n_out != splits.num_classes:
                raise DataError(f"output node {o!r} has {n_out} values but {splits.name} has "
                                f"{splits.num_classes} classes", g.where_node(o))
        self.shape = tuple(shape)
        self.compiled = compiled
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.test_batch_size = batch_size, test_batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.train_x = splits.train_x.reshape(-1, *shape).to(self.device, dtype)
        self.train_y = splits.train_y.to(self.device)
        self.test_x = splits.test_x.reshape(-1, *shape).to(self.device, dtype)
        self.test_y = splits.test_y.to(self.device)

    def targets(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.compiled.graph
        return {o: self.compiled.losses[o].target(labels, g.nodes[o].shape, self.dtype) for o in g.outputs}

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
