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

- ``cora`` / ``citeseer``: Planetoid with the public split, as torch-geometric's ``Planetoid`` builds it
  (Cora: 2708 vertices, 1433 features, 7 classes, 140 / 500 / 1000 train / val / test
  vertices; CiteSeer: 3327, 3703, 6, 120 / 500 / 1000). Offline root: ``data.root`` or
  ``PCGRAPH_DATA`` holding ``Planetoid/Cora/raw/ind.cora.*`` (``Planetoid/CiteSeer/raw/
  ind.citeseer.*``); without a root the raw files are downloaded into ``PCGRAPH_CACHE``
  (default ``~/.cache/pcgraph/data``) ``/Planetoid/<Folder>/raw/``, once.
  Options: ``normalize_features`` (true: each vertex's features sum to 1, Kipf & Welling's
  preprocessing, ``NormalizeFeatures``), ``evaluate_on`` (``test``, or ``val`` to tune on
  the validation vertices).
- ``karate``: Zachary's karate club (``KarateClub``, shipped inside torch-geometric: no
  files). 34 vertices, one-hot identity features (34), 4 classes, 156 directed edges; one
  labelled training vertex per class, the other 30 are the test vertices.

**Dataset-cache rule (Planetoid): no file runs code, nothing processed is kept.**

- *Read*: only the eight raw files ``Planetoid/<Folder>/raw/ind.<name>.{x,tx,allx,y,ty,ally,
  graph,test.index}``, from the data root in place, or (no root) from the cache's downloaded
  copy. Nothing under any ``processed/`` folder is ever opened, in the root or in the cache
  (torch-geometric's ``data.pt`` / ``pre_transform.pt`` / ``pre_filter.pt``, which its
  ``Planetoid`` unpickles, are ignored wherever they are: torch-geometric's ``Planetoid`` is
  not used).
- *Verified*: the raw files are pickles, so they are read by a restricted unpickler: the few
  globals the Planetoid files name (numpy's array and dtype, scipy's ``csr_matrix``,
  ``defaultdict``, ``list``) become inert records and any other global is refused before it
  is imported, so no code of the file's choosing (``__reduce__``) can run. The records are then
  checked (dtypes, shapes against the bytes, CSR indices, vertex numbers, sizes up to
  :data:`MAX_ELEMENTS`) and turned into tensors by pcgraph; the result equals
  torch-geometric's ``read_planetoid_data``. A file that fails is a one-line
  :class:`~pcgraph.errors.DataError` naming it (``refusing <file>: <why>``).
- *Written*: never anything in a data root. The processed graph is rebuilt in memory on every
  load (0.1-0.5 s; a cache of it was no faster to read back), so there is no processed cache
  to trust. Only a download (no root) writes: the missing raw files, into
  ``PCGRAPH_CACHE/Planetoid/<Folder>/raw/``, each complete or not at all; they are read by the
  same restricted unpickler as any other raw file. A failed load creates nothing outside the
  cache, and nothing at all when a root is given.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..ops.graph_conv import Graph, pyg
from ..ops.losses import IGNORE
from .datasets import DATASETS, Splits, _bool_option, _cache_dir, data_root

EVALUATE_ON = ("test", "val")


def first_labelled(y: torch.Tensor, k: int | None) -> torch.Tensor:
    """``y`` with only its first ``k`` labelled vertices labelled (``data.train_subset`` /
    ``test_subset`` on a graph: the graph stays whole, fewer of its vertices count)."""
    if not k:
        return y
    labelled = y != IGNORE
    if k >= int(labelled.sum()):     # also keeps a huge k (2**64) away from torch's int64
        return y
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


# ---- Planetoid: raw files read without running them, nothing processed is cached ------------

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
MAX_RAW_BYTES = 64 * 2 ** 20      # per raw file (Cora's largest is 257 KB, CiteSeer's 595 KB)
MAX_ELEMENTS = 2 ** 28            # per matrix a raw file describes (CiteSeer's features: 12.3 M)
MAX_VERTICES = 10 ** 7


class _Refused(Exception):
    """A raw Planetoid file is not what it should be (the message says what)."""


class _Inert:
    """What a global named in a raw Planetoid pickle becomes while it is read: a record of
    the arguments and state the file gives it. No code of numpy's, scipy's or anyone's runs;
    the records are then checked and turned into tensors by pcgraph (:func:`_matrix`)."""

    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Array(_Inert):
    """numpy's ``_reconstruct``: an ndarray from its state ``(version, shape, dtype, fortran, bytes)``."""


class _Dtype(_Inert):
    """``numpy.dtype(code, ...)``, its byte order in its state."""


class _Csr(_Inert):
    """``scipy.sparse.csr_matrix``: its state holds ``_shape``, ``indptr``, ``indices``, ``data``."""


class _Marker(_Inert):
    """``numpy.ndarray`` or ``list``, named only as an argument (a type, never called)."""


class _Adjacency(dict):
    """``collections.defaultdict(list)``: the graph's vertex -> neighbours mapping."""

    def __init__(self, *factory: Any):
        super().__init__()


_GLOBALS = {
    ("numpy", "ndarray"): _Marker, ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _Array, ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("scipy.sparse.csr", "csr_matrix"): _Csr, ("scipy.sparse._csr", "csr_matrix"): _Csr,
    ("scipy.sparse", "csr_matrix"): _Csr,
    ("collections", "defaultdict"): _Adjacency,
    ("__builtin__", "list"): _Marker, ("builtins", "list"): _Marker,
}
_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}


class _RawUnpickler(pickle.Unpickler):
    """Reads the Planetoid pickles (protocol 2, from Python 2): every global they may name
    maps to an inert record (:data:`_GLOBALS`), any other is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"it names {module}.{name}, which no Planetoid file holds") from None


def _unpickle(blob: bytes) -> Any:
    try:
        return _RawUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed stream: one reason
        raise _Refused(f"it is not a readable pickle ({type(exc).__name__}: {exc})") from None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(shape: Any, dims: tuple[int, ...]) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) in dims and all(_int(s) and s >= 0 for s in shape)):
        raise _Refused(f"it gives an array the shape {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise _Refused(f"it describes an array of shape {shape}, larger than any Planetoid array")
    return shape


def _array(obj: Any, dims: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """A numeric ndarray from an :class:`_Array` record (its bytes checked against its shape)."""
    state = obj.state if isinstance(obj, _Array) else None
    if not (isinstance(state, tuple) and len(state) == 5):
        raise _Refused(f"it holds {type(obj).__name__} where an array should be")
    _, shape, dtype, fortran, raw = state
    shape = _shape(shape, dims)
    code = dtype.args[0] if isinstance(dtype, _Dtype) and dtype.args else None
    st = dtype.state if isinstance(dtype, _Dtype) else None
    order = st[1] if isinstance(st, tuple) and len(st) > 1 else "|"
    if not (isinstance(code, str) and code in _DTYPES and order in ("<", ">", "|", "=")):
        raise _Refused(f"it holds an array of dtype {code!r} (byte order {order!r}), not a number type")
    dt = np.dtype(code).newbyteorder("=" if order == "|" else order)
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dt.itemsize:
        raise _Refused(f"its array of shape {shape} and dtype {code} does not hold {math.prod(shape)} values")
    a = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran is True else "C")
    return a.astype(dt.newbyteorder("="), order="C")     # a writable copy in native order


def _matrix(obj: Any) -> torch.Tensor:
    """A dense float32 ``[rows, cols]`` from a dense or CSR array record (duplicates summed,
    as ``scipy``'s ``todense``)."""
    if isinstance(obj, _Array):
        out = torch.from_numpy(_array(obj, (2,))).float()
        if not bool(torch.isfinite(out).all()):
            raise _Refused("its matrix holds NaN or infinite values")
        return out
    if not (isinstance(obj, _Csr) and isinstance(obj.state, dict)):
        raise _Refused(f"it holds {type(obj).__name__} where a matrix should be")
    st = obj.state
    rows, cols = _shape(st.get("_shape", st.get("shape")), (2,))
    indptr, indices, data = (torch.from_numpy(_array(st.get(k), (1,))) for k in ("indptr", "indices", "data"))
    if indptr.dtype.is_floating_point or indices.dtype.is_floating_point:
        raise _Refused("its sparse matrix has fractional indices")
    indptr, indices = indptr.long(), indices.long()
    counts = indptr.diff() if len(indptr) else indptr
    if (len(indptr) != rows + 1 or int(indptr[0]) != 0 or bool((counts < 0).any())
            or int(indptr[-1]) != len(indices) or len(indices) != len(data)
            or (len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= cols))):
        raise _Refused(f"its sparse matrix of shape ({rows}, {cols}) has inconsistent indices")
    out = torch.zeros(rows, cols)
    row = torch.repeat_interleave(torch.arange(rows), counts)
    out.index_put_((row, indices), data.float(), accumulate=True)
    if not bool(torch.isfinite(out).all()):
        raise _Refused("its matrix holds NaN or infinite values")
    return out


def _adjacency(obj: Any, budget: int) -> tuple[list[int], list[int]]:
    """Source and target lists of the ``vertex -> [neighbours]`` mapping (at most ``budget``
    entries: a file cannot list more neighbours than it has bytes, shared lists included)."""
    if not isinstance(obj, dict):
        raise _Refused(f"it holds {type(obj).__name__} where the vertex -> neighbours mapping should be")
    rows: list[int] = []
    cols: list[int] = []
    for k, v in obj.items():
        if not (_int(k) and isinstance(v, list) and all(_int(n) for n in v)):
            raise _Refused("its vertex -> neighbours mapping holds something other than integers")
        if len(cols) + len(v) > budget:
            raise _Refused("it lists more neighbours than its size allows")
        rows += [k] * len(v)
        cols += v
    return rows, cols


def _parse_planetoid(name: str, raw: dict[str, bytes], raw_dir: Path) -> dict[str, Any]:
    """The graph of raw Planetoid files, as torch-geometric's ``Planetoid`` builds it: features
    ``allx`` then ``tx`` (test rows put at their ``test.index`` positions; CiteSeer's isolated
    test vertices are zero rows), labels the argmax of ``ally`` / ``ty``, training vertices the
    first ``len(y)``, validation the next 500, edges as the files list them (both directions),
    self loops and duplicates removed."""
    part = ""
    try:
        parsed = {}
        for part in RAW_PARTS[:-1]:
            obj = _unpickle(raw[part])
            parsed[part] = (_adjacency(obj, len(raw[part])) if part == "graph" else _matrix(obj))
        part = "test.index"
        try:
            test_index = torch.tensor([int(t) for t in raw[part].decode("ascii").split()], dtype=torch.long)
        except (UnicodeDecodeError, ValueError, OverflowError, RuntimeError):
            raise _Refused("it is not a list of vertex numbers") from None
        part = ""
        x, tx, allx, y, ty, ally = (parsed[k] for k in ("x", "tx", "allx", "y", "ty", "ally"))
        a, t, f = allx.shape[0], len(test_index), allx.shape[1]
        if not (t and tx.shape == (t, f) and x.shape[1] == f and ally.shape[0] == a and ty.shape[0] == t
                and y.shape[1] == ally.shape[1] == ty.shape[1] >= 1 and len(y) + 500 <= a):
            raise _Refused("the shapes of x, tx, allx, y, ty, ally and test.index do not fit together")
        sorted_index = test_index.sort().values
        lo, hi = int(sorted_index[0]), int(sorted_index[-1])
        if lo != a or hi - lo >= MAX_VERTICES or bool((sorted_index.diff() == 0).any()):
            raise _Refused(f"test.index does not number the test vertices from {a} on, each once")
        n = hi + 1
        if n * f > MAX_ELEMENTS:
            raise _Refused(f"it describes {n} x {f} features, more than any Planetoid graph")
        tx_all, ty_all = torch.zeros(n - a, f), torch.zeros(n - a, ty.shape[1])
        tx_all[sorted_index - a], ty_all[sorted_index - a] = tx, ty
        feats = torch.cat([allx, tx_all])
        feats[test_index] = feats[sorted_index]
        labels = torch.cat([ally, ty_all]).max(dim=1)[1]
        labels[test_index] = labels[sorted_index]
        rows, cols = parsed["graph"]
        if any(v < 0 or v >= n for v in rows) or any(v < 0 or v >= n for v in cols):
            part = "graph"
            raise _Refused(f"it names vertices outside 0..{n - 1}")
        utils = pyg("utils")
        edge_index, _ = utils.remove_self_loops(torch.tensor([rows, cols], dtype=torch.long).view(2, -1))
        edge_index = utils.coalesce(edge_index, num_nodes=n, sort_by_row=False)
    except (_Refused, ValueError, TypeError, RuntimeError, IndexError, OverflowError, MemoryError) as exc:
        where = f"{raw_dir}/ind.{name}.{part}" if part else f"{raw_dir}/ind.{name}.*"
        why = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}"
        raise DataError(f"refusing {where}: {' '.join(why.split())}", "data.dataset") from None

    def mask(idx: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(n, dtype=torch.bool)
        m[idx] = True
        return m

    return {"x": feats, "y": labels, "edge_index": edge_index, "train_mask": mask(torch.arange(len(y))),
            "val_mask": mask(torch.arange(len(y), len(y) + 500)), "test_mask": mask(test_index),
            "num_classes": int(ally.shape[1])}


def _download(raw_dir: Path, name: str, hint: str) -> None:
    """Fetch the raw files ``raw_dir`` lacks (into the cache: nothing is written on failure)."""
    import urllib.request

    for part in RAW_PARTS:
        target = raw_dir / f"ind.{name}.{part}"
        if target.is_file():
            continue
        url = f"{PLANETOID_URL}/ind.{name}.{part}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - a fixed https URL
                blob = r.read(MAX_RAW_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot download {url}: {type(exc).__name__}: {exc} ({hint})", "data.dataset") from None
        if len(blob) > MAX_RAW_BYTES:
            raise DataError(f"cannot download {url}: larger than {MAX_RAW_BYTES} bytes", "data.dataset")
        tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            raw_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(blob)
            os.replace(tmp, target)
        except OSError as exc:
            raise DataError(f"cannot write the download to {target}: {exc}", "data.dataset") from None


def _raw_files(root: str | None, name: str, folder: str, files: str) -> tuple[dict[str, bytes], Path]:
    """The raw files' bytes: ``<root>/Planetoid/<folder>/raw`` read in place, or (no root)
    the cache's downloaded copy."""
    if root is not None:
        raw_dir = Path(root) / "Planetoid" / folder / "raw"
        if not raw_dir.is_dir():
            raise DataError(f"cannot load {folder}: {raw_dir} does not exist (the data root holds no "
                            f"Planetoid/{folder}/raw/ind.*.* files)", "data.dataset")
        missing = [f"ind.{name}.{p}" for p in RAW_PARTS if not (raw_dir / f"ind.{name}.{p}").is_file()]
        if missing:
            raise DataError(f"cannot load {folder}: {raw_dir} has no {', '.join(missing)} "
                            f"(expected {files})", "data.dataset")
    else:
        raw_dir = _cache_dir() / "Planetoid" / folder / "raw"
        _download(raw_dir, name, f"set data.root or PCGRAPH_DATA to a folder with {files}")
    out = {}
    for part in RAW_PARTS:
        path = raw_dir / f"ind.{name}.{part}"
        try:
            if path.stat().st_size > MAX_RAW_BYTES:
                raise DataError(f"refusing {path}: larger than {MAX_RAW_BYTES} bytes, no Planetoid file is",
                                "data.dataset")
            out[part] = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}", "data.dataset") from None
    return out, raw_dir


def _planetoid(name: str, folder: str):
    files = f"Planetoid/{folder}/raw/ind.{name}.{{x,tx,allx,y,ty,ally,graph,test.index}}"

    def load(root: str | None = None, *, normalize_features: bool = True, evaluate_on: str = "test") -> Splits:
        normalize_features = _bool_option(normalize_features, "normalize_features")
        evaluate_on = _evaluate_on(evaluate_on)
        t = _parse_planetoid(name, *_raw_files(data_root(root), name, folder, files))
        x = t["x"]
        if normalize_features:
            x = pyg("transforms").NormalizeFeatures()(pyg("data").Data(x=x)).x
        mask = t["test_mask"] if evaluate_on == "test" else t["val_mask"]
        return node_splits(name, x, t["y"], t["edge_index"], t["train_mask"], mask, t["num_classes"])

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
