"""Datasets by name, loaded whole into tensors.

``mnist``, ``fashion_mnist`` and ``cifar10`` come from torchvision: downloaded when
online, or read from an offline root (``data.root`` in the spec, else the
``PCGRAPH_DATA`` environment variable) that holds torchvision's layout
(``MNIST/raw/*.gz``). torchvision extracts next to the ``.gz`` files, so a read-only
root is first copied to a writable cache (``PCGRAPH_CACHE``, default
``~/.cache/pcgraph/data``). ``digits`` is scikit-learn's bundled 8x8 digits (1797
images, real data shipped inside the package), so the quickstart needs no network.

Images are scaled to ``[0, 1]``; labels are class indices.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import DataError
from ..registry import Registry


@dataclass
class Splits:
    name: str
    train_x: torch.Tensor   # [N, *shape], float32 in [0, 1]
    train_y: torch.Tensor   # [N], int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


DATASETS: Registry[Callable[[str | None], Splits]] = Registry("dataset")


def data_root(root: str | None) -> str | None:
    return root or os.environ.get("PCGRAPH_DATA") or None


def _cache_dir() -> Path:
    return Path(os.environ.get("PCGRAPH_CACHE", Path.home() / ".cache" / "pcgraph" / "data"))


def _writable_root(root: str, folder: str) -> str:
    """``root`` itself if torchvision can extract there, else a cached copy of ``root/folder``."""
    src = Path(root) / folder
    if not src.exists():
        return root
    if os.access(src / "raw", os.W_OK) if (src / "raw").exists() else os.access(src, os.W_OK):
        return root
    dst_root = _cache_dir()
    dst = dst_root / folder
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            if not target.exists() or target.stat().st_size != f.stat().st_size:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".part")
                shutil.copyfile(f, tmp)
                os.replace(tmp, target)
    return str(dst_root)


def _torchvision(cls_name: str, folder: str, num_classes: int, channels_last: bool = False):
    def load(root: str | None) -> Splits:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = data_root(root)
        online = root is None
        base = root or str(_cache_dir())
        base = _writable_root(base, folder) if not online else base
        try:
            train = cls(base, train=True, download=True)
            test = cls(base, train=False, download=True)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError
            hint = ("set data.root or PCGRAPH_DATA to a folder with torchvision's layout "
                    f"({folder}/raw/...)" if online else f"looked in {base}/{folder}")
            raise DataError(f"cannot load {cls_name}: {type(exc).__name__}: {exc} ({hint})",
                            "data.dataset") from None

        def tensors(ds):
            x = torch.as_tensor(ds.data)
            if channels_last:  # CIFAR: [N, H, W, C] uint8
                x = x.permute(0, 3, 1, 2)
            elif x.dim() == 3:
                x = x.unsqueeze(1)
            return x.float().div_(255.0), torch.as_tensor(ds.targets, dtype=torch.long)

        tx, ty = tensors(train)
        vx, vy = tensors(test)
        return Splits(cls_name, tx, ty, vx, vy, num_classes)

    return load


DATASETS.add("mnist", _torchvision("MNIST", "MNIST", 10))
DATASETS.add("fashion_mnist", _torchvision("FashionMNIST", "FashionMNIST", 10))
DATASETS.add("cifar10", _torchvision("CIFAR10", "cifar-10-batches-py", 10, channels_last=True))


@DATASETS.register("digits")
def _digits(root: str | None) -> Splits:
    """scikit-learn's 8x8 digits; a fixed split: 1437 train / 360 test images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise DataError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)",
                        "data.dataset") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n = 1437
    return Splits("digits", x[:n], y[:n], x[n:], y[n:], 10)


def load_dataset(name: str, root: str | None = None, train_subset: int | None = None,
                 test_subset: int | None = None) -> Splits:
    splits = DATASETS.get(name, "data.dataset")(root)
    if train_subset:
        splits.train_x, splits.train_y = splits.train_x[:train_subset], splits.train_y[:train_subset]
    if test_subset:
        splits.test_x, splits.test_y = splits.test_x[:test_subset], splits.test_y[:test_subset]
    return splits
