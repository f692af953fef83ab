"""Hostile dataset folders and data values (issue 18, items 1, 7 and 9).

Dataset-cache rule (:mod:`pcgraph.data.graphs`): a Planetoid load reads only the eight raw
files, through a restricted unpickler, never a ``processed/`` file (torch-geometric's
``data.pt`` / ``pre_transform.pt`` / ``pre_filter.pt``) in the data root, ``PCGRAPH_DATA`` or
``PCGRAPH_CACHE``; it writes nothing when a root is given, and a failed load creates no folder.
The payloads below create a marker file when unpickled: the marker must never appear.
Every test works on temporary copies of the shared Planetoid files (never modified).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pcgraph.cli import main
from pcgraph.data import load_dataset
from pcgraph.errors import DataError, SpecError
from pcgraph.ops.losses import IGNORE
from pcgraph.spec import Spec

REPO = Path(__file__).resolve().parents[1]
SHARED = os.environ.get("PCGRAPH_DATA")
CORA_RAW = Path(SHARED or "/nonexistent") / "Planetoid" / "Cora" / "raw"
PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
needs_cora = pytest.mark.skipif(not all((CORA_RAW / f"ind.cora.{p}").is_file() for p in PARTS),
                                reason="Planetoid/Cora/raw not found (set PCGRAPH_DATA)")


class Payload:
    """Unpickled, it creates the file ``marker`` (what a crafted ``__reduce__`` could do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture
def cora_root(tmp_path) -> Path:
    """A data root holding a copy of Cora's raw files."""
    root = tmp_path / "root"
    shutil.copytree(CORA_RAW, root / "Planetoid" / "Cora" / "raw")
    return root


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def _plant_processed(folder: Path, marker: Path) -> None:
    """torch-geometric's three processed files, each a live payload (torch.save, as it writes them)."""
    processed = folder / "Planetoid" / "Cora" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    for name in ("data.pt", "pre_transform.pt", "pre_filter.pt"):
        torch.save(Payload(marker), processed / name)


def _assert_cora(d) -> None:
    assert tuple(d.train_x.shape) == (2708, 1433) and d.num_classes == 7 and d.graph.num_edges == 10556
    assert int((d.train_y != IGNORE).sum()) == 140 and int((d.test_y != IGNORE).sum()) == 1000


def test_the_payload_is_live(tmp_path, marker):
    """The planted files do run code when unpickled the way torch-geometric does (so the
    tests below would see it)."""
    _plant_processed(tmp_path, marker)
    torch.load(tmp_path / "Planetoid" / "Cora" / "processed" / "pre_transform.pt", weights_only=False)
    assert marker.exists()


# ---- item 1: processed files are never read --------------------------------------------------------

@needs_cora
def test_crafted_processed_files_under_the_data_root_are_not_run(cora_root, marker, tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    _plant_processed(cora_root, marker)
    before = _tree(cora_root)
    _assert_cora(load_dataset("cora", str(cora_root)))
    assert not marker.exists()
    assert _tree(cora_root) == before                       # the root is only read
    assert not (tmp_path / "cache").exists()                # and nothing is cached from it


@needs_cora
def test_crafted_processed_files_under_pcgraph_data_are_not_run(cora_root, marker, tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PCGRAPH_DATA", str(cora_root))
    _plant_processed(cora_root, marker)
    _assert_cora(load_dataset("cora"))
    assert not marker.exists()


@needs_cora
@pytest.mark.parametrize("with_root", [True, False])
def test_crafted_processed_files_under_pcgraph_cache_are_not_run(cora_root, marker, tmp_path, monkeypatch,
                                                                 with_root):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PCGRAPH_CACHE", str(cache))
    _plant_processed(cache, marker)
    (cache / "Planetoid" / "Cora" / "processed" / "pcgraph.bin").write_bytes(pickle.dumps(Payload(marker)))
    if with_root:
        root = str(cora_root)
    else:       # the cache's own (downloaded) raw copy: all files present, so no download is tried
        monkeypatch.delenv("PCGRAPH_DATA", raising=False)
        shutil.copytree(CORA_RAW, cache / "Planetoid" / "Cora" / "raw")
        root = None
    _assert_cora(load_dataset("cora", root))
    assert not marker.exists()


@needs_cora
def test_the_cli_trains_on_a_folder_with_crafted_processed_files_without_running_them(
        cora_root, marker, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    _plant_processed(cora_root, marker)
    spec = tmp_path / "cora.yaml"
    spec.write_text(f"name: cora-tiny\ndata: {{dataset: cora, root: {cora_root}}}\n"
                    "model:\n  nodes:\n    - {name: x, shape: [1433], role: input}\n"
                    "    - {name: y, shape: [7], role: output}\n"
                    "  edges:\n    - {from: x, to: y, op: gcn_conv, activation: identity}\n"
                    "loss: cross_entropy\ntrain: {algorithm: zil, epochs: 1, optimizer: {name: sgd, lr: 0.1}}\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert not marker.exists()


# ---- item 1: the raw files are pickles too: read without running them --------------------------------

def _raw_pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


@needs_cora
@pytest.mark.parametrize("part", ["x", "allx", "graph", "ty"])
def test_a_crafted_raw_file_is_refused_in_one_line(cora_root, marker, part):
    (cora_root / "Planetoid" / "Cora" / "raw" / f"ind.cora.{part}").write_bytes(_raw_pickle(Payload(marker)))
    with pytest.raises(DataError) as e:
        load_dataset("cora", str(cora_root))
    msg = _one_line(e.value)
    assert e.value.where == "data.dataset" and f"refusing {cora_root}/Planetoid/Cora/raw/ind.cora.{part}" in msg
    assert "open" in msg and not marker.exists()


@needs_cora
def test_a_tampered_cache_download_is_detected(tmp_path, marker, monkeypatch):
    """No root: the raw files the cache holds (a download) are checked like any other."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PCGRAPH_CACHE", str(cache))
    monkeypatch.delenv("PCGRAPH_DATA", raising=False)
    raw = cache / "Planetoid" / "Cora" / "raw"
    shutil.copytree(CORA_RAW, raw)
    (raw / "ind.cora.tx").write_bytes(_raw_pickle(Payload(marker)))
    with pytest.raises(DataError, match=f"refusing {raw}/ind.cora.tx: it names "):
        load_dataset("cora")
    assert not marker.exists()


def _graph_blob(kind: str) -> bytes:
    good = (CORA_RAW / "ind.cora.graph").read_bytes()
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "garbage":
        return b"\x00garbage" * 10
    if kind == "beyond int64":
        return _raw_pickle({0: [5, 10 ** 30]})
    big = list(range(3000))          # "shared lists": a small file that would expand to 8 M edges
    return _raw_pickle({i: big for i in range(2708)})


@needs_cora
@pytest.mark.parametrize("kind, why", [("truncated", "not a readable pickle"), ("garbage", "not a readable pickle"),
                                       ("beyond int64", "outside 0..2707"),
                                       ("shared lists", "more neighbours than its size allows")])
def test_damaged_raw_graph_files_are_one_line_errors(cora_root, kind, why):
    (cora_root / "Planetoid" / "Cora" / "raw" / "ind.cora.graph").write_bytes(_graph_blob(kind))
    with pytest.raises(DataError, match=why) as e:
        load_dataset("cora", str(cora_root))
    assert "ind.cora.graph" in _one_line(e.value)


@needs_cora
def test_damaged_raw_arrays_are_one_line_errors(cora_root):
    raw = cora_root / "Planetoid" / "Cora" / "raw"
    cases = {
        "test.index": (b"12\nnot-a-number\n", "not a list of vertex numbers"),
        "y": (_raw_pickle([1, 2, 3]), "where a matrix should be"),
    }
    for part, (blob, why) in cases.items():
        good = (raw / f"ind.cora.{part}").read_bytes()
        (raw / f"ind.cora.{part}").write_bytes(blob)
        with pytest.raises(DataError, match=why) as e:
            load_dataset("cora", str(cora_root))
        _one_line(e.value)
        (raw / f"ind.cora.{part}").write_bytes(good)
    # arrays that name only the globals a Planetoid file may name, with a state that lies
    for state, why in (((1, (140, 7), np.dtype("int32"), False, "\x00" * 12), "does not hold 980 values"),
                       ((1, (140, 7), np.dtype("O"), False, [0] * 980), "not a number type"),
                       ((1, (2 ** 40, 2 ** 40), np.dtype("int8"), False, ""), "larger than any Planetoid")):
        (raw / "ind.cora.ally").write_bytes(_raw_pickle(FakeArray(state)))
        with pytest.raises(DataError, match=why) as e:
            load_dataset("cora", str(cora_root))
        assert "ind.cora.ally" in _one_line(e.value)


class FakeArray:
    """Pickles as numpy pickles an ndarray, with the state it is given."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (np.zeros(0).__reduce__()[0], (np.ndarray, (0,), "b"), self.state)   # str: as Python 2 wrote bytes


@needs_cora
def test_the_safe_reader_builds_what_torch_geometric_builds():
    from pcgraph.ops.graph_conv import pyg

    ref = pyg("io").read_planetoid_data(str(CORA_RAW), "cora")
    d = load_dataset("cora", SHARED, options={"normalize_features": False, "evaluate_on": "val"})
    assert torch.equal(d.train_x, ref.x) and torch.equal(d.graph.edge_index, ref.edge_index)
    assert torch.equal(d.train_y, torch.where(ref.train_mask, ref.y, IGNORE))
    assert torch.equal(d.test_y, torch.where(ref.val_mask, ref.y, IGNORE))


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_crafted_legacy_mnist_files_are_not_run(tmp_path, marker, monkeypatch, dataset, folder):
    """torchvision 0.29 reads ``<root>/MNIST/processed/{training,test}.pt`` (its legacy cache),
    when both exist, before ``raw/``, with ``weights_only=True``: refused in one line, not run."""
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    (root / folder / "raw").mkdir(parents=True)
    (root / folder / "processed").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / folder / "raw" / name).write_bytes(b"")
    for name in ("training.pt", "test.pt"):
        torch.save(Payload(marker), root / folder / "processed" / name)
    with pytest.raises(DataError) as e:
        load_dataset(dataset, str(root))
    msg = _one_line(e.value)
    assert "legacy cache" in msg and "other than tensors" in msg and "weights_only" not in msg
    assert not marker.exists()


# ---- item 7: a failed load creates nothing ------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cora", "citeseer"])
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_missing_or_empty_root_is_left_as_it_was(tmp_path, monkeypatch, dataset, kind):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PCGRAPH_CACHE", str(cache))
    root = tmp_path / "root"
    if kind == "empty":
        root.mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(dataset, str(root))
    assert str(root) in _one_line(e.value)
    assert root.exists() == (kind == "empty") and _tree(root) == []
    assert not cache.exists()


# ---- item 9: data values give located errors -----------------------------------------------------------

@pytest.mark.parametrize("dataset", ["adding", "cifar10_synthetic"])
@pytest.mark.parametrize("seed", [2 ** 70, 2 ** 62, -1, 10 ** 5000], ids=["2**70", "2**62", "-1", "10**5000"])
def test_a_dataset_seed_out_of_the_generators_range_is_located(dataset, seed):
    with pytest.raises(DataError) as e:
        load_dataset(dataset, options={"seed": seed, "train_size": 4, "test_size": 4})
    assert e.value.where == "data.options.seed" and "2**62 - 1" in _one_line(e.value)


def test_the_largest_dataset_seed_works():
    d = load_dataset("adding", options={"seed": 2 ** 62 - 1, "train_size": 4, "test_size": 4})
    assert d.train_x.shape == (4, 20, 2)


def test_huge_dataset_sizes_are_located():
    with pytest.raises(DataError) as e:
        load_dataset("adding", options={"train_size": 2 ** 64})
    assert e.value.where == "data.options.train_size"
    with pytest.raises(DataError, match="integer of 16610 bits") as e:
        load_dataset("adding", options={"length": 10 ** 5000})
    _one_line(e.value)


def test_a_huge_subset_on_a_graph_keeps_every_labelled_vertex():
    full = load_dataset("karate")
    d = load_dataset("karate", train_subset=2 ** 64, test_subset=2 ** 64)
    assert torch.equal(d.train_y, full.train_y) and torch.equal(d.test_y, full.test_y)
    assert Spec.from_dict({"data": {"dataset": "karate", "test_subset": 2 ** 64},
                           "model": {"nodes": [{"name": "x", "shape": [34], "role": "input"},
                                               {"name": "y", "shape": [4], "role": "output"}],
                                     "edges": [{"from": "x", "to": "y"}]}}).data.test_subset == 2 ** 64
    with pytest.raises(DataError) as e:
        load_dataset("karate", test_subset=-1)
    assert e.value.where == "data.test_subset"


@pytest.mark.parametrize("root", [5, 1.5, True, ["a"], {"a": 1}, "", "a\x00b"])
def test_a_data_root_that_is_not_a_path_is_located(root):
    spec = {"data": {"dataset": "mnist", "root": root},
            "model": {"nodes": [{"name": "x", "shape": [4], "role": "input"}]}}
    with pytest.raises(SpecError) as e:
        Spec.from_dict(spec)
    assert e.value.where == "data.root"
    _one_line(e.value)
    if root != "":      # the Python API: a dataset that needs no files checks it too
        with pytest.raises(DataError) as e:
            load_dataset("karate", root)
        assert e.value.where == "data.root"


def test_the_cli_locates_bad_data_values(tmp_path, capsys):
    spec = REPO / "graphs" / "adding_rnn.yaml"
    for setting, where in (("data.options.seed=1180591620717411303424", "data.options.seed"),
                           ("data.root=5", "data.root")):
        assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--set", setting]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and where in err, err


# ---- found by tests/test_fuzz.py: MNIST raw files that do not fit each other -------------------------

def _mnist_root(tmp_path: Path, n_train: int = 12, n_test: int = 6) -> Path:
    """A data root with MNIST's four raw idx files (uint8; random images, labels 0..9)."""
    import struct

    g = np.random.default_rng(0)
    raw = tmp_path / "mroot" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28)
                                                         + g.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n)
                                                         + g.integers(0, 10, n, dtype=np.uint8).tobytes())
    return tmp_path / "mroot"


def _rewrite(path: Path, edit) -> None:
    b = bytearray(path.read_bytes())
    edit(b)
    path.write_bytes(bytes(b))


def test_a_small_mnist_root_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    d = load_dataset("mnist", str(_mnist_root(tmp_path)))
    assert tuple(d.train_x.shape) == (12, 1, 28, 28) and tuple(d.test_y.shape) == (6,)


@pytest.mark.parametrize("case, why", [
    ("fewer labels", "10 labels for 12 images"),                    # trained on 10 of 12 images, silently
    ("label 200", "training sample 3 has the label 200, not a class index in 0..9"),   # IndexError in the step
    ("test images 27 x 27", "training samples have shape [1, 28, 28], its test samples [1, 27, 27]"),  # traceback
    ("type byte", "its idx header starts 0x00000d03"),            # torchvision: 'AssertionError: '
    ("empty", "0 bytes, shorter than an idx header"),             # torchvision: invalid literal for int()
    ("cut short", "its header says 12 x 28 x 28 bytes of images, the file holds 9000"),
])
def test_mnist_files_that_do_not_fit_are_one_located_line(tmp_path, monkeypatch, case, why):
    import struct

    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    root = _mnist_root(tmp_path)
    raw = root / "MNIST" / "raw"
    if case == "fewer labels":
        _rewrite(raw / "train-labels-idx1-ubyte", lambda b: (b.__setitem__(slice(4, 8), struct.pack(">I", 10)),
                                                            b.__delitem__(slice(18, None))))
    elif case == "label 200":
        _rewrite(raw / "train-labels-idx1-ubyte", lambda b: b.__setitem__(8 + 3, 200))
    elif case == "test images 27 x 27":
        (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 6, 27, 27) + bytes(6 * 729))
    elif case == "type byte":
        _rewrite(raw / "train-images-idx3-ubyte", lambda b: b.__setitem__(2, 0x0D))
    elif case == "empty":
        (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
    else:
        _rewrite(raw / "train-images-idx3-ubyte", lambda b: b.__delitem__(slice(16 + 9000, None)))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(root))
    assert why in _one_line(e.value) and e.value.where == "data.dataset", str(e.value)


def test_crafted_cifar10_batches_are_not_unpickled(tmp_path, marker, monkeypatch):
    """CIFAR-10's python batches are pickles that torchvision reads with ``pickle.load``: it
    does so only after every file's MD5 matches the official one, so crafted batches are never
    unpickled (torchvision then tries to download them: stopped here, no network needed)."""
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise OSError("offline (this test)")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    batches = tmp_path / "root" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / name).write_bytes(_raw_pickle(Payload(marker)))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path / "root"))
    assert "cannot load CIFAR10" in _one_line(e.value) and "offline (this test)" in str(e.value)
    assert not marker.exists()
