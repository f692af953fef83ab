"""Clamping as data: which nodes a spec clamps to which dataset field, and its named queries.

A dataset sample has two **fields**: ``image`` (the sample itself; alias ``x``) and ``label``
(its class or target; alias ``y``). Training clamps nodes to fields; by default the inputs
to ``image`` and the outputs to ``label`` (today's discriminative meaning). A spec may say
otherwise with a top-level ``clamp:`` mapping, e.g. a generative net clamps the label at its
top and the image at its bottom::

    clamp: {label: label, image: image}

A **query** asks a trained network a question: which nodes are clamped (to which field,
whole or on a mask of units), which start from data but stay free, which are read out, and
how inference runs. Every other node is free and inferred::

    queries:
      classify: {clamp: {image: image}, read: [label], T: 100}
      generate: {clamp: {label: label}, read: [image]}
      complete:
        clamp: {image: {field: image, mask: top_half}}
        read: [image]
        optimizer: {name: sgd, lr: 0.1, momentum: 0.5}
      denoise: {clamp: {image: {field: image, noise: 0.3}}, read: [image], iterate: 30}

Masks (True = clamped unit) are named halves ``top_half``, ``bottom_half``, ``left_half``,
``right_half`` of an image-shaped node, or ``{rows: [a, b]}``, ``{cols: [a, b]}`` (half-open,
over the image's last two axes) or ``{units: [a, b]}`` (over the flattened node). A flat node
(``[784]``) is read as a square image (``[28, 28]``; ``3 k^2`` values as ``[3, k, k]``) unless
the mask names ``image_shape``. ``iterate: K`` runs the retrieval map of Salvatori et al.
(2021) K times: after each round of inference every clamped node is clamped anew to its own
prediction ``mu`` (its free units keep their inferred values). A node clamped whole that is read out gives
its prediction: denoising clamps the noisy image, and the network's reconstruction replaces
it round after round. A discriminative spec's default query ``predict`` clamps the
inputs and reads the outputs: the feed-forward prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SpecError

FIELDS = ("image", "label")
FIELD_ALIASES = {"x": "image", "input": "image", "y": "label", "target": "label"}
MASKS = ("top_half", "bottom_half", "left_half", "right_half")
METRICS = ("accuracy", "mse", "class_means", "none")
QUERY_KEYS = ("clamp", "start", "read", "T", "optimizer", "init", "init_std", "tol", "metric", "split",
              "iterate", "description")
ENTRY_KEYS = ("field", "mask", "noise")


def parse_field(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"expected a data field ({', '.join(FIELDS)}), got {value!r}", where)
    name = FIELD_ALIASES.get(value, value)
    if name not in FIELDS:
        raise SpecError(f"unknown data field {value!r} (known: {', '.join(FIELDS)})", where)
    return name


@dataclass
class ClampEntry:
    """A node tied to a data field, on the units of ``mask`` (None: all), plus Gaussian noise."""

    field: str
    mask: Any = None
    noise: float = 0.0

    @classmethod
    def parse(cls, raw: Any, where: str) -> "ClampEntry":
        if isinstance(raw, str):
            return cls(parse_field(raw, where))
        if not isinstance(raw, dict):
            raise SpecError(f"expected a field name or {{field: image, mask: top_half}}, got {raw!r}", where)
        for k in raw:
            if k not in ENTRY_KEYS:
                raise SpecError(f"unknown key {k!r} (known: {', '.join(ENTRY_KEYS)})", f"{where}.{k}")
        if "field" not in raw:
            raise SpecError("a clamp entry needs a 'field' (image or label)", where)
        noise = raw.get("noise", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
            raise SpecError(f"noise must be a finite number >= 0 (a standard deviation), got {noise!r}",
                            f"{where}.noise")
        mask = raw.get("mask")
        if mask is not None and not isinstance(mask, (str, dict)):
            raise SpecError(f"expected a mask name ({', '.join(MASKS)}) or {{rows: [a, b]}}, got {mask!r}",
                            f"{where}.mask")
        return cls(parse_field(raw["field"], f"{where}.field"), mask, float(noise))

    def to_value(self):
        if self.mask is None and not self.noise:
            return self.field
        d: dict[str, Any] = {"field": self.field}
        if self.mask is not None:
            d["mask"] = self.mask
        if self.noise:
            d["noise"] = self.noise
        return d


def image_geometry(shape: tuple[int, ...], hint=None) -> tuple[int, ...]:
    """The ``[.., H, W]`` reading of a node shape for masks (see the module docstring)."""
    if hint is not None:
        return tuple(hint)
    if len(shape) >= 2:
        return tuple(shape)
    n = shape[0]
    r = math.isqrt(n)
    if r * r == n:
        return (r, r)
    if n % 3 == 0 and math.isqrt(n // 3) ** 2 == n // 3:
        k = math.isqrt(n // 3)
        return (3, k, k)
    return (n,)


def build_mask(mask: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """A bool tensor of the node's ``shape``, True on the clamped units; located errors."""
    numel = math.prod(shape)
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise SpecError(f"a mask must be a bool tensor, got {mask.dtype}", where)
        if tuple(mask.shape) != tuple(shape) and tuple(mask.shape[1:]) != tuple(shape):
            raise SpecError(f"mask of shape {list(mask.shape)} does not fit the node's shape {list(shape)} "
                            f"(give {list(shape)} or [B, {', '.join(map(str, shape))}])", where)
        return mask
    hint = mask.get("image_shape") if isinstance(mask, dict) else None
    if hint is not None:
        if not isinstance(hint, list) or not all(isinstance(v, int) and v > 0 for v in hint) \
                or math.prod(hint) != numel:
            raise SpecError(f"image_shape {hint!r} does not hold the node's {numel} values", f"{where}.image_shape")
    geom = image_geometry(tuple(shape), hint)
    if isinstance(mask, str):
        if mask not in MASKS:
            raise SpecError(f"unknown mask {mask!r} (known: {', '.join(MASKS)}, or {{rows: [a, b]}}, "
                            "{cols: [a, b]}, {units: [a, b]})", where)
        if len(geom) < 2:
            raise SpecError(f"mask {mask!r} needs an image-shaped node; shape {list(shape)} is not "
                            "(give the mask an image_shape, or use {units: [a, b]})", where)
        H, W = geom[-2], geom[-1]
        axis, span = {"top_half": ("rows", (0, H // 2)), "bottom_half": ("rows", (H // 2, H)),
                      "left_half": ("cols", (0, W // 2)), "right_half": ("cols", (W // 2, W))}[mask]
        mask = {axis: list(span)}
    if not isinstance(mask, dict):
        raise SpecError(f"expected a mask name or {{rows: [a, b]}}, got {mask!r}", where)
    keys = [k for k in mask if k != "image_shape"]
    if len(keys) != 1 or keys[0] not in ("rows", "cols", "units"):
        raise SpecError(f"a mask mapping takes one of rows, cols, units (and image_shape), got {sorted(mask)}", where)
    key = keys[0]
    span = mask[key]
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in span)):
        raise SpecError(f"expected [start, stop], got {span!r}", f"{where}.{key}")
    a, b = span
    size = numel if key == "units" else (geom[-2] if key == "rows" else geom[-1]) if len(geom) >= 2 else None
    if size is None:
        raise SpecError(f"{key} masks need an image-shaped node; shape {list(shape)} is not (use units)", where)
    if not 0 <= a < b <= size:
        raise SpecError(f"{key} [{a}, {b}] is out of range: need 0 <= start < stop <= {size}", f"{where}.{key}")
    out = torch.zeros(geom if key != "units" else (numel,), dtype=torch.bool)
    if key == "units":
        out[a:b] = True
    elif key == "rows":
        out[..., a:b, :] = True
    else:
        out[..., a:b] = True
    return out.reshape(shape)


@dataclass
class Query:
    """A named question to a trained network (see the module docstring). ``T``, ``optimizer``,
    ``init``, ``init_std``, ``tol`` override the training rule's inference settings."""

    name: str
    clamp: dict[str, ClampEntry] = field(default_factory=dict)
    start: dict[str, ClampEntry] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)
    T: int | None = None
    optimizer: dict | None = None
    init: str | None = None
    init_std: float | None = None
    tol: float | None = None
    metric: str | None = None
    #: the split answered by default (``train``: recall of stored memories)
    split: str = "test"
    #: rounds of the retrieval map (Salvatori et al. 2021): after each round the clamped nodes
    #: are clamped to their own prediction ``mu``, and a clamped node reads out as its prediction
    iterate: int = 1
    description: str | None = None

    @classmethod
    def parse(cls, name: str, raw: Any, where: str) -> "Query":
        from ..compile.energy import INITS, check_activity_optimizer

        if not isinstance(raw, dict):
            raise SpecError(f"expected a mapping with clamp and read, got {raw!r}", where)
        for k in raw:
            if k not in QUERY_KEYS:
                raise SpecError(f"unknown key {k!r} (known: {', '.join(QUERY_KEYS)})", f"{where}.{k}")
        q = cls(name)
        for key in ("clamp", "start"):
            entries = raw.get(key) or {}
            if not isinstance(entries, dict):
                raise SpecError(f"expected a mapping from node names to data fields, got {entries!r}", f"{where}.{key}")
            setattr(q, key, {str(n): ClampEntry.parse(e, f"{where}.{key}.{n}") for n, e in entries.items()})
        read = raw.get("read")
        if isinstance(read, str):
            read = [read]
        if not isinstance(read, list) or not read or not all(isinstance(r, str) for r in read):
            raise SpecError(f"expected the node names to read out (a name or a list), got {read!r}", f"{where}.read")
        q.read = list(read)
        T = raw.get("T")
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or not 0 <= T <= 100_000):
            raise SpecError(f"T must be an integer in [0, 100000], got {T!r}", f"{where}.T")
        q.T = T
        if raw.get("optimizer") is not None:
            q.optimizer = check_activity_optimizer(raw["optimizer"], f"{where}.optimizer")
        init = raw.get("init")
        if init is not None and init not in INITS:
            raise SpecError(f"unknown init {init!r} (known: {', '.join(INITS)})", f"{where}.init")
        q.init = init
        for key in ("init_std", "tol"):
            v = raw.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
                raise SpecError(f"{key} must be a finite number >= 0, got {v!r}", f"{where}.{key}")
            setattr(q, key, None if v is None else float(v))
        metric = raw.get("metric")
        if metric is not None and metric not in METRICS:
            raise SpecError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})", f"{where}.metric")
        q.metric = metric
        split = raw.get("split", "test")
        if split not in ("train", "test"):
            raise SpecError(f"unknown split {split!r} (known: train, test)", f"{where}.split")
        q.split = split
        it = raw.get("iterate", 1)
        if isinstance(it, bool) or not isinstance(it, int) or not 1 <= it <= 10_000:
            raise SpecError(f"iterate must be an integer in [1, 10000] (rounds of the retrieval map), got {it!r}",
                            f"{where}.iterate")
        q.iterate = it
        q.description = raw.get("description")
        return q

    def check(self, graph, where: str) -> None:
        """Node names exist; masks fit their nodes; a node is not both clamped and started."""
        names = list(graph.nodes)
        for key in ("clamp", "start"):
            for n, entry in getattr(self, key).items():
                if n not in graph.nodes:
                    raise SpecError(f"{n!r} is not a node (known: {', '.join(names)})", f"{where}.{key}.{n}")
                if entry.mask is not None:
                    if key == "start":
                        raise SpecError("a start value takes no mask (the whole node starts from the data)",
                                        f"{where}.start.{n}.mask")
                    build_mask(entry.mask, graph.nodes[n].shape, f"{where}.{key}.{n}.mask")
        for n in self.start:
            if n in self.clamp and self.clamp[n].mask is None:
                raise SpecError(f"node {n!r} is clamped whole, so it cannot also start free", f"{where}.start.{n}")
        for k, n in enumerate(self.read):
            if n not in graph.nodes:
                raise SpecError(f"{n!r} is not a node (known: {', '.join(names)})", f"{where}.read[{k}]")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"clamp": {n: e.to_value() for n, e in self.clamp.items()}}
        if self.start:
            d["start"] = {n: e.to_value() for n, e in self.start.items()}
        d["read"] = list(self.read)
        for key in ("T", "optimizer", "init", "init_std", "tol", "metric", "description"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        if self.split != "test":
            d["split"] = self.split
        if self.iterate != 1:
            d["iterate"] = self.iterate
        return d


def parse_clamp(raw: Any, where: str = "clamp") -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"expected a mapping from node names to data fields ({', '.join(FIELDS)}), got {raw!r}",
                        where)
    return {str(n): parse_field(f, f"{where}.{n}") for n, f in raw.items()}


def parse_queries(raw: Any, where: str = "queries") -> dict[str, Query]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping from query names to queries, got {raw!r}", where)
    return {str(name): Query.parse(str(name), q, f"{where}.{name}") for name, q in raw.items()}


def default_clamp(graph) -> dict[str, str]:
    """Role clamping: every input to ``image``, every output to ``label``."""
    return {**{n: "image" for n in graph.inputs}, **{n: "label" for n in graph.outputs}}


def default_query(graph) -> Query | None:
    """``predict``: clamp the inputs, read the outputs (the feed-forward prediction)."""
    if not graph.inputs or not graph.outputs:
        return None
    return Query("predict", {n: ClampEntry("image") for n in graph.inputs}, {}, list(graph.outputs), T=0)
