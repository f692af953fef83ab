"""Sequence data: the adding problem, per-step targets routed to several outputs,
regression in ``evaluate``, CIFAR-10 (through a fake offline root) and its synthetic
stand-in, and sequential MNIST's row order. All fast; MNIST is marked ``mnist`` and
skipped when its files are missing.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pcgraph import Experiment, Spec, Trainer
from pcgraph.compile import compile_graph
from pcgraph.data import GraphBatches, Splits, load_dataset
from pcgraph.data.datasets import dataset_options, image_tensors, synthetic_cifar
from pcgraph.errors import DataError, PCGraphError


def seq_spec(T: int, outputs: list[str], out_size: int = 1, loss="mse", hidden: int = 8,
             act="tanh", algorithm="bp", lr=0.01) -> Spec:
    """Input ``[T, 2]``, one hidden layer, one ``[out_size]`` output per name."""
    s = Spec(name="seq", seed=0)
    s.add_node("x", [T, 2], "input").add_node("h", [hidden])
    for o in outputs:
        s.add_node(o, [out_size], "output")
    s.add_edge("x", "h", "linear", "identity", True)
    for o in outputs:
        s.add_edge("h", o, "linear", act, True)
    s.set_data(dataset="adding", batch_size=32, test_batch_size=100)
    s.set_loss(loss)
    s.set_train(algorithm=algorithm, epochs=1, optimizer={"name": "adam", "lr": lr})
    return s.validate()


def batches_for(spec: Spec, splits: Splits, dtype=torch.float64, shuffle=False) -> GraphBatches:
    return GraphBatches(splits, compile_graph(spec.model, spec.loss), "cpu", dtype, 16, 50, shuffle)


# ---- the adding problem ------------------------------------------------------------------

def test_adding_shapes_and_defaults():
    assert dataset_options("adding") == {"length": 20, "train_size": 10000, "test_size": 1000,
                                         "per_step": False, "seed": 0}
    s = load_dataset("adding")
    assert s.train_x.shape == (10000, 20, 2) and s.test_x.shape == (1000, 20, 2)
    assert s.train_y.shape == (10000, 1) and s.test_y.shape == (1000, 1)
    assert s.train_x.dtype == s.train_y.dtype == torch.float32
    assert s.regression and s.num_classes is None and s.steps is None and s.target_shape == (1,)
    p = load_dataset("adding", options={"length": 7, "per_step": True, "train_size": 50, "test_size": 30})
    assert p.train_x.shape == (50, 7, 2) and p.train_y.shape == (50, 7, 1) and p.test_y.shape == (30, 7, 1)
    assert p.steps == 7 and p.target_shape == (1,)
    sub = load_dataset("adding", train_subset=100, test_subset=10, options={"length": 5})
    assert len(sub.train_x) == len(sub.train_y) == 100 and len(sub.test_x) == len(sub.test_y) == 10


def test_adding_is_deterministic_and_seeded():
    opts = {"length": 6, "train_size": 200, "test_size": 50}
    a, b = load_dataset("adding", options=opts), load_dataset("adding", options=opts)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    c = load_dataset("adding", options={**opts, "seed": 1})
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.test_x, c.test_x)
    # the test set does not depend on the size of the training set
    d = load_dataset("adding", options={**opts, "train_size": 300})
    assert torch.equal(a.test_x, d.test_x) and torch.equal(a.test_y, d.test_y)
    assert not torch.equal(a.train_x, a.test_x[:1].expand_as(a.train_x))


@pytest.mark.parametrize("length", [2, 5, 20])
def test_adding_targets_are_the_sum_of_the_two_marked_values(length):
    s = load_dataset("adding", options={"length": length, "train_size": 500, "test_size": 100})
    for x, y in ((s.train_x, s.train_y), (s.test_x, s.test_y)):
        values, marker = x[..., 0].double(), x[..., 1].double()
        assert values.min() >= 0 and values.max() <= 1
        assert set(marker.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(marker.sum(1), torch.full((len(x),), 2.0, dtype=torch.float64))
        expected = torch.stack([values[i][marker[i] == 1].sum() for i in range(len(x))])
        torch.testing.assert_close(y[:, 0].double(), expected, rtol=0, atol=1e-6)
    # markers cover every position (two distinct positions uniform over all T steps)
    assert (s.train_x[..., 1].sum(0) > 0).all()


def test_adding_per_step_targets_are_running_sums():
    opts = {"length": 8, "train_size": 300, "test_size": 40}
    one = load_dataset("adding", options=opts)
    per = load_dataset("adding", options={**opts, "per_step": True})
    assert torch.equal(one.train_x, per.train_x) and torch.equal(one.test_x, per.test_x)
    x, y = per.train_x.double(), per.train_y.double()
    running = torch.zeros(len(x), dtype=torch.float64)
    for k in range(8):
        running = running + x[:, k, 0] * x[:, k, 1]
        torch.testing.assert_close(y[:, k, 0], running, rtol=0, atol=1e-6)
    torch.testing.assert_close(per.train_y[:, -1], one.train_y, rtol=0, atol=0)
    first = x[..., 1].argmax(1)              # 0 before the first marker, its value from there on
    for i in range(20):
        assert (y[i, :first[i], 0] == 0).all()
        assert y[i, first[i], 0] == pytest.approx(float(x[i, first[i], 0]), abs=1e-6)


@pytest.mark.parametrize("options, where, words", [
    ({"lenght": 5}, "data.options.lenght", "known: length, train_size, test_size, per_step, seed"),
    ({"length": 1}, "data.options.length", "integer >= 2"),
    ({"length": 5.0}, "data.options.length", "integer >= 2"),
    ({"per_step": "yes"}, "data.options.per_step", "true or false"),
    ({"train_size": 0}, "data.options.train_size", "integer >= 1"),
])
def test_bad_dataset_options_are_located(options, where, words):
    with pytest.raises(DataError) as e:
        load_dataset("adding", options=options)
    assert e.value.where == where and words in str(e.value)


def test_image_datasets_take_no_options():
    with pytest.raises(DataError, match="dataset 'mnist' has no option 'length' \\(it takes no options\\)"):
        load_dataset("mnist", options={"length": 5})


# ---- targets and per-step routing --------------------------------------------------------

def test_regression_labels_become_float_targets():
    splits = load_dataset("adding", options={"length": 4, "train_size": 64, "test_size": 20})
    b = batches_for(seq_spec(4, ["y"]), splits)
    inputs, targets, labels = next(b.test())
    assert inputs["x"].shape == (20, 4, 2) and inputs["x"].dtype == torch.float64
    assert targets["y"].shape == (20, 1) and targets["y"].dtype == torch.float64
    assert torch.equal(targets["y"], splits.test_y.double())
    assert b.regression and b.step_of == {"y": None}


def test_per_step_labels_go_to_the_outputs_in_declaration_order():
    T = 4
    splits = load_dataset("adding", options={"length": T, "train_size": 64, "test_size": 20, "per_step": True})
    outputs = ["s3", "s0", "s2", "s1"]               # names mean nothing: order does
    b = batches_for(seq_spec(T, outputs), splits)
    assert b.step_of == {o: k for k, o in enumerate(outputs)}
    _, targets, labels = next(b.test())
    assert labels.shape == (20, T, 1)
    for k, o in enumerate(outputs):
        assert targets[o].shape == (20, 1)
        assert torch.equal(targets[o], splits.test_y[:, k].double())
    for _, targets, labels in b.train():             # shuffled batches slice the same way
        for k, o in enumerate(outputs):
            assert torch.equal(targets[o], labels[:, k])


def test_per_step_class_labels_are_routed_and_scored_per_output():
    T, C, N = 3, 4, 60
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(N, T, 2, generator=g), torch.randint(0, C, (N, T), generator=g)
    splits = Splits("toy", x, y, x.clone(), y.clone(), C, steps=T)
    for loss in ("cross_entropy", "mse"):
        spec = seq_spec(T, ["a", "b", "c"], out_size=C, loss=loss)
        b = batches_for(spec, splits)
        _, targets, labels = next(b.test())
        for k, o in enumerate("abc"):
            want = y[:50, k] if loss == "cross_entropy" else torch.nn.functional.one_hot(y[:50, k], C).double()
            assert torch.equal(targets[o], want)
        exp = Experiment.build(spec, dtype="float64", splits=splits)
        out = exp.evaluate()
        with torch.no_grad():
            preds = exp.net({"x": x.double()})
        for k, o in enumerate("abc"):
            acc = float((preds[o].argmax(1) == y[:, k]).double().mean())
            assert out[f"test_accuracy/{o}"] == pytest.approx(acc)
        assert out["test_accuracy"] == pytest.approx(sum(out[f"test_accuracy/{o}"] for o in "abc") / 3)


def test_labels_without_a_time_axis_go_to_every_output():
    splits = load_dataset("adding", options={"length": 4, "train_size": 64, "test_size": 20})
    b = batches_for(seq_spec(4, ["y1", "y2", "y3"]), splits)
    _, targets, _ = next(b.test())
    for o in ("y1", "y2", "y3"):
        assert torch.equal(targets[o], splits.test_y.double())


@pytest.mark.parametrize("outputs", [["y"], ["a", "b", "c", "d", "e"]])
def test_per_step_labels_need_one_output_per_step(outputs):
    splits = load_dataset("adding", options={"length": 4, "train_size": 8, "test_size": 8, "per_step": True})
    with pytest.raises(DataError) as e:
        batches_for(seq_spec(4, outputs), splits)
    msg = str(e.value)
    assert "per-step labels for 4 steps" in msg and f"{len(outputs)} output node(s)" in msg
    assert "declaration order" in msg and "exactly 4 outputs" in msg


def test_regression_needs_mse_and_the_right_output_size():
    splits = load_dataset("adding", options={"length": 4, "train_size": 8, "test_size": 8})
    with pytest.raises(DataError, match="real-valued targets: output 'y' needs the mse loss, not cross_entropy"):
        batches_for(seq_spec(4, ["y"], loss="cross_entropy"), splits)
    with pytest.raises(DataError, match="output node 'y' has 3 values but adding has 1 target values per sample"):
        batches_for(seq_spec(4, ["y"], out_size=3), splits)
    with pytest.raises(DataError, match=r"input node 'x' has shape \[5, 2\] \(10 values\) but adding samples "
                                        r"have shape \[4, 2\] \(8\)"):
        batches_for(seq_spec(5, ["y"]), splits)


@pytest.mark.parametrize("algorithm", ["bp", "zil"])
def test_regression_trains_and_evaluates_without_accuracy(algorithm):
    T = 5
    splits = load_dataset("adding", options={"length": T, "train_size": 2000, "test_size": 500})
    spec = seq_spec(T, ["y"], hidden=32, act="identity", algorithm=algorithm, lr=3e-3)
    exp = Experiment.build(spec, dtype="float64", splits=splits)
    before = exp.evaluate()
    assert math.isnan(before["test_accuracy"]) and set(before) == {"test_loss", "test_accuracy"}
    lines = []
    history = Trainer(exp, out=None, progress=False, log=lines.append).fit(epochs=4)
    after = history[-1]["test_loss"]
    assert math.isfinite(after) and after < before["test_loss"]
    assert after < 0.075                            # the mean predictor's 1/2 Var(sum) is 1/12
    assert "test acc" not in lines[-1] and "test loss" in lines[-1]   # regression: no accuracy column


def test_per_step_regression_loss_sums_the_outputs():
    T = 3
    splits = load_dataset("adding", options={"length": T, "train_size": 40, "test_size": 30, "per_step": True})
    spec = seq_spec(T, ["p0", "p1", "p2"])
    exp = Experiment.build(spec, dtype="float64", splits=splits)
    out = exp.evaluate()
    with torch.no_grad():
        preds = exp.net({"x": splits.test_x.double()})
    want = sum(0.5 * float(((preds[f"p{k}"] - splits.test_y[:, k].double()) ** 2).sum(1).mean()) for k in range(T))
    assert out["test_loss"] == pytest.approx(want, rel=1e-12) and math.isnan(out["test_accuracy"])


# ---- CIFAR-10 and its synthetic stand-in -------------------------------------------------

def test_cifar10_synthetic_shapes_range_and_determinism():
    assert dataset_options("cifar10_synthetic") == {"train_size": 2000, "test_size": 500, "seed": 0}
    s = load_dataset("cifar10_synthetic")
    assert s.train_x.shape == (2000, 3, 32, 32) and s.test_x.shape == (500, 3, 32, 32)
    assert s.sample_shape == (3, 32, 32) and s.num_classes == 10 and s.steps is None
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert s.train_x.min() >= 0 and s.train_x.max() <= 1
    assert torch.equal((s.train_x * 255).round() / 255, s.train_x)    # uint8 levels / 255
    assert torch.equal(s.train_y.bincount(), torch.full((10,), 200))
    assert torch.equal(s.test_y.bincount(), torch.full((10,), 50))
    again = load_dataset("cifar10_synthetic")
    assert torch.equal(s.train_x, again.train_x) and torch.equal(s.test_y, again.test_y)
    other = load_dataset("cifar10_synthetic", options={"seed": 1, "train_size": 100, "test_size": 100})
    assert other.train_x.shape == (100, 3, 32, 32) and not torch.equal(other.train_x, s.train_x[:100])
    x, y = synthetic_cifar(20, torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8 and x.shape == (20, 32, 32, 3) and y.dtype == torch.int64


def test_cifar10_synthetic_has_a_learnable_signal():
    """Nearest class mean of each image's mean colour and stripe energy beats chance (0.1)."""
    s = load_dataset("cifar10_synthetic")

    def features(x):
        colour = x.mean((2, 3))
        grey = x.mean(1)
        f = torch.fft.rfft2(grey - grey.mean((1, 2), keepdim=True)).abs().flatten(1)
        return torch.cat([colour * 10, f / f.norm(dim=1, keepdim=True)], 1)

    f, ft = features(s.train_x), features(s.test_x)
    means = torch.stack([f[s.train_y == c].mean(0) for c in range(10)])
    acc = float((torch.cdist(ft, means).argmin(1) == s.test_y).float().mean())
    assert acc > 0.5, acc


def _write_fake_cifar(root: Path, train: tuple, test: tuple, batches: int = 5) -> None:
    """torchvision's ``cifar-10-batches-py`` layout: pickled dicts with ``data`` uint8
    ``[n, 3072]`` (each row the R, G, B planes of a 32x32 image) and ``labels``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, x, y):
        data = x.permute(0, 3, 1, 2).reshape(len(x), -1).numpy()      # HWC -> CHW rows
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name.encode(), "labels": [int(v) for v in y],
                         "data": data, "filenames": [b"x.png"] * len(y)}, fh)

    xs, ys = train
    for k, (x, y) in enumerate(zip(xs.chunk(batches), ys.chunk(batches))):
        dump(f"data_batch_{k + 1}", x, y)
    dump("test_batch", *test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)], "num_vis": 3072}, fh)


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Fake files cannot match torchvision's MD5s: accept any existing file instead, and
    fail any download (offline), so no test can reach the network."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)


def test_cifar10_from_an_offline_root_is_processed_like_cifar10_synthetic(tmp_path, no_cifar_md5, monkeypatch):
    monkeypatch.setenv("PCGRAPH_CACHE", str(tmp_path / "cache"))
    g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)   # the synthetic set's streams
    train, test = synthetic_cifar(2000, g0), synthetic_cifar(500, g1)
    _write_fake_cifar(tmp_path / "data", train, test)
    real = load_dataset("cifar10", root=str(tmp_path / "data"))
    synthetic = load_dataset("cifar10_synthetic")
    assert real.name == "CIFAR10" and real.num_classes == synthetic.num_classes == 10
    assert real.sample_shape == synthetic.sample_shape == (3, 32, 32)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        a, b = getattr(real, k), getattr(synthetic, k)
        assert a.dtype == b.dtype and torch.equal(a, b), k
    # channel c of sample i is plane c of torchvision's row (R, G, B planes of 1024 pixels)
    tx, _ = image_tensors(*train, channels_last=True)
    assert torch.equal(tx[7, 1, 3, 5], train[0][7, 3, 5, 1].float() / 255)
    assert not (tmp_path / "cache").exists()        # an extracted folder is read in place
    # PCGRAPH_DATA is the offline root when data.root is not set
    monkeypatch.setenv("PCGRAPH_DATA", str(tmp_path / "data"))
    assert torch.equal(load_dataset("cifar10", test_subset=5).test_x, synthetic.test_x[:5])


def test_cifar10_missing_offline_root_is_a_clear_data_error(tmp_path, no_cifar_md5):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=str(tmp_path / "empty"))
    msg = str(e.value)
    assert e.value.where == "data.dataset" and msg.startswith("data.dataset: cannot load CIFAR10")
    assert f"looked in {tmp_path / 'empty'}/cifar-10-batches-py" in msg
    assert "data_batch_1..5,test_batch,batches.meta" in msg and "cifar-10-python.tar.gz" in msg


def test_cifar10_synthetic_feeds_an_image_graph():
    s = Spec(name="cnnish", seed=0)
    s.add_node("x", [3, 32, 32], "input").add_node("h", [32]).add_node("y", [10], "output")
    s.add_edge("x", "h", "linear", "identity").add_edge("h", "y", "linear", "tanh")
    s.set_data(dataset="cifar10_synthetic", batch_size=50).set_loss("cross_entropy")
    s.set_train(algorithm="zil", epochs=1, optimizer={"name": "adam", "lr": 1e-3})
    exp = Experiment.build(s.validate(), splits=load_dataset("cifar10_synthetic", train_subset=500, test_subset=200))
    inputs, targets, labels = next(exp.batches.train())
    assert inputs["x"].shape == (50, 3, 32, 32) and targets["y"].dtype == torch.int64
    assert 0 <= exp.evaluate()["test_accuracy"] <= 1


def test_spec_errors_from_the_data_layer_are_located():
    spec = seq_spec(4, ["y"], loss="cross_entropy")
    with pytest.raises(PCGraphError, match="needs the mse loss"):
        Experiment.build(spec, splits=load_dataset("adding", options={"length": 4, "train_size": 8, "test_size": 8}))


# ---- sequential MNIST ----------------------------------------------------------------------

def _mnist_root() -> Path | None:
    root = os.environ.get("PCGRAPH_DATA")
    return Path(root) if root and (Path(root) / "MNIST" / "raw").is_dir() else None


@pytest.mark.mnist
@pytest.mark.skipif(_mnist_root() is None, reason="mnist files not found (set PCGRAPH_DATA)")
def test_sequential_mnist_rows_arrive_in_order():
    splits = load_dataset("mnist", test_subset=10)
    s = Spec(name="seq-mnist", seed=0)
    s.add_node("x", [28, 28], "input").add_node("y", [10], "output")
    s.add_edge("x", "y", "linear", "identity")
    s.set_data(dataset="mnist").set_loss("cross_entropy")
    b = GraphBatches(splits, compile_graph(s.validate().model, s.loss), "cpu", torch.float32, 10, 10, False)
    inputs, _, labels = next(b.test())
    x = inputs["x"]
    assert x.shape == (10, 28, 28)
    # against the IDX file itself: image i's bytes 28k..28k+27 are row k, top to bottom
    with gzip.open(_mnist_root() / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = np.frombuffer(fh.read(16 + 10 * 784), dtype=np.uint8)[16:].reshape(10, 784)
    for i in range(10):
        for k in range(28):
            row = torch.from_numpy(raw[i, 28 * k:28 * k + 28].copy()).float() / 255
            assert torch.equal(x[i, k], row), (i, k)
            assert torch.equal(x[i, k], splits.test_x[i, 0, k])
    with gzip.open(_mnist_root() / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        assert labels.tolist() == list(fh.read(8 + 10)[8:])
