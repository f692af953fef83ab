"""Datasets by name, loaded whole into tensors.

Every dataset is a loader ``load(root, **options) -> Splits`` registered in
:data:`DATASETS`; ``options`` are the dataset's own keyword parameters (the spec's
``data.options`` mapping, checked by :func:`load_dataset`: an unknown key lists the known
ones).

**Images.** ``mnist``, ``fashion_mnist`` and ``cifar10`` come from torchvision: downloaded
when online, or read from an offline root (``data.root`` in the spec, else the
``PCGRAPH_DATA`` environment variable) that holds torchvision's layout (``MNIST/raw/*.gz``,
``FashionMNIST/raw/*.gz``, ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
or ``cifar-10-python.tar.gz``). torchvision extracts into the root, so a read-only root is
first copied to a writable cache (``PCGRAPH_CACHE``, default ``~/.cache/pcgraph/data``)
when it must write there (an extracted CIFAR-10 folder is read in place). ``digits`` is
scikit-learn's bundled 8x8 digits (1797 images, real data shipped inside the package), so
the quickstart needs no network. ``cifar10_synthetic`` is a small generated stand-in for
CIFAR-10 (uint8 32x32x3 images, 10 classes) that goes through exactly the code that turns
torchvision's CIFAR-10 arrays into tensors (:func:`image_tensors`).

Images are scaled to ``[0, 1]`` and shaped ``[C, H, W]`` (MNIST ``[1, 28, 28]``, CIFAR
``[3, 32, 32]``); labels are class indices. A sample is reshaped to the input node's
shape in C order (:class:`~pcgraph.data.loader.GraphBatches`), so an input node of shape
``[28, 28]`` holds **sequential MNIST**: row ``k`` of the node (step ``k`` of a sequence
model) is image row ``k``, i.e. pixels ``28k .. 28k+27`` of the flattened image, top to
bottom; ``[784, 1]`` is pixel-by-pixel MNIST.

**Sequences.** ``adding`` is the adding problem (Hochreiter & Schmidhuber 1997), a
synthetic memory task for recurrent networks, generated from a seed (no files). A sample
is ``[T, 2]``: channel 0 holds values uniform in ``[0, 1]``, channel 1 a marker that is 1
at exactly two distinct positions (uniform over all ``T`` steps) and 0 elsewhere. The
target is the sum of the two marked values, a float ``[1]`` (regression, ``mse`` loss on
an output of shape ``[1]``); predicting the mean 1.0 gives ``mse`` loss
``1/2 Var = 1/12 ~ 0.083``. With ``per_step: true`` the labels are ``[T, 1]`` per sample:
the target at step ``k`` is the sum of the marked values at steps ``0..k``.

Options: ``adding``: ``length`` (T, 20), ``train_size`` (10000), ``test_size`` (1000),
``per_step`` (false), ``seed`` (0); ``cifar10_synthetic``: ``train_size`` (2000),
``test_size`` (500), ``seed`` (0). The torchvision datasets and ``digits`` take none.
``data.train_subset`` / ``test_subset`` cut any dataset after loading.

**Labels with a time axis.** :attr:`Splits.steps` is the length of a time axis at label
dim 1 (``None``: no time axis). Such labels are routed to the graph's output nodes one
step each, in the order the outputs are declared (see ``GraphBatches``); labels without a
time axis go to every output. :attr:`Splits.num_classes` is ``None`` for regression
(float targets of shape :attr:`Splits.target_shape`).
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import shutil
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import DataError, unpickling_reason
from ..registry import Registry


@dataclass
class Splits:
    name: str
    train_x: torch.Tensor   # [N, *shape], float32 (images in [0, 1])
    train_y: torch.Tensor   # [N] int64 class indices, or [N, *target_shape] float; [N, T, ..] per step
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int | None  # None: regression (float targets)
    #: length of the labels' time axis (label dim 1), ``None`` when the labels have none
    steps: int | None = None
    #: a graph dataset's structure (:class:`pcgraph.ops.graph_conv.Graph`): then a sample is a
    #: vertex, the splits hold all vertices in order and a mask leaves the others unlabelled
    #: (:mod:`pcgraph.data.graphs`)
    graph: Any = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def regression(self) -> bool:
        return self.num_classes is None

    @property
    def target_shape(self) -> tuple[int, ...]:
        """One sample's label at one step: ``()`` for a class index, else the target's shape."""
        return tuple(self.train_y.shape[1 + (self.steps is not None):])


DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def data_root(root: str | None) -> str | None:
    """The offline root: ``root`` (``data.root``), else ``$PCGRAPH_DATA``, else None."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise DataError(f"expected a folder path (a string), got {root!r}", "data.root")
    root = os.fspath(root) if root else os.environ.get("PCGRAPH_DATA") or None
    if root is not None and "\0" in root:
        raise DataError(f"a folder path cannot hold a NUL character, got {root!r}", "data.root")
    return root


def _cache_dir() -> Path:
    return Path(os.environ.get("PCGRAPH_CACHE", Path.home() / ".cache" / "pcgraph" / "data"))


def _copy_file(f: Path, target: Path) -> None:
    if not target.exists() or target.stat().st_size != f.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        shutil.copyfile(f, tmp)
        os.replace(tmp, target)


def _writable_root(root: str, folder: str, archive: str | None = None) -> str:
    """``root`` itself if torchvision can read or extract there, else a cached copy.

    MNIST-style datasets (``archive`` None) extract ``folder/raw/*.gz`` in place, so a
    read-only ``folder`` is copied. Archive-style datasets (CIFAR-10) read an extracted
    ``folder`` in place; only a lone ``archive`` in a read-only root is copied (to be
    extracted in the cache).
    """
    src = Path(root) / folder
    if archive is not None:
        if src.exists() or not (Path(root) / archive).exists() or os.access(root, os.W_OK):
            return root
        _copy_file(Path(root) / archive, _cache_dir() / archive)
        return str(_cache_dir())
    if not src.exists():
        return root
    if os.access(src / "raw", os.W_OK) if (src / "raw").exists() else os.access(src, os.W_OK):
        return root
    dst_root = _cache_dir()
    dst = dst_root / folder
    for f in (src / "raw").rglob("*"):     # raw files only: never a processed/ file of someone else's
        if f.is_file():
            _copy_file(f, dst / f.relative_to(src))
    return str(dst_root)


def _offline_missing(root: str, cls: Any, folder: str, archive: str | None) -> str | None:
    """What ``root`` lacks to serve torchvision's ``cls`` offline (None: nothing). A failed
    load creates nothing outside the cache, so this is asked before torchvision runs."""
    base = Path(root)
    if not base.is_dir():
        return f"the data root {root} is not a folder"
    if archive is not None:
        return None if (base / folder).is_dir() or (base / archive).is_file() else "no such files"
    raw = base / folder / "raw"
    names = [os.path.basename(f) for f, _ in getattr(cls, "resources", ())]
    lacking = [n for n in names if not (raw / n).is_file() and not (raw / n.removesuffix(".gz")).is_file()]
    return f"{raw} has no {', '.join(lacking)}" if lacking else None


def _check_idx(raw: Path) -> str | None:
    """Why torchvision's MNIST-style raw files in ``raw`` cannot be right, naming the file (None:
    they can be): a file there must be a regular file whose idx header describes it (unsigned
    bytes, type 0x08; rank 3 images, rank 1 labels; exactly as many bytes as its dimensions
    say), and a split must hold as many labels as images. Files not yet extracted from their
    ``.gz`` are checked by torchvision as it reads them (and by :func:`_check_splits`)."""
    counts: dict[tuple[str, str], int] = {}
    for split in ("train", "t10k"):
        for kind, rank in (("images", 3), ("labels", 1)):
            f = raw / f"{split}-{kind}-idx{rank}-ubyte"
            try:
                st = os.stat(f)
            except FileNotFoundError:
                continue
            except OSError as exc:
                return f"refusing {f}: {exc.strerror or exc}"
            if not stat.S_ISREG(st.st_mode):
                return f"refusing {f}: not a regular file"
            with open(f, "rb") as fh:
                head = fh.read(4 + 4 * rank)
            if len(head) < 4 + 4 * rank:
                return f"refusing {f}: {st.st_size} bytes, shorter than an idx header"
            if head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != rank:
                return (f"refusing {f}: its idx header starts 0x{head[:4].hex()}, not 0x000008{rank:02x} "
                        f"(unsigned bytes, rank {rank})")
            dims = struct.unpack(f">{rank}I", head[4:])
            if st.st_size - len(head) != math.prod(dims):
                return (f"refusing {f}: its header says {' x '.join(map(str, dims))} bytes of {kind}, the file holds "
                        f"{st.st_size - len(head)}")
            counts[(split, kind)] = dims[0]
        if len({v for (sp, _), v in counts.items() if sp == split}) > 1:
            return (f"refusing {raw / f'{split}-labels-idx1-ubyte'}: {counts[(split, 'labels')]} labels for "
                    f"{counts[(split, 'images')]} images")
    return None


def _check_splits(splits: Splits, name: str) -> None:
    """A loaded dataset must hold one label per sample, at least one sample in each split, and
    (classification) class indices within ``0 .. num_classes - 1`` (or a graph's unlabelled
    mark): a damaged file is one located DataError here, not a torch error in the first step."""
    from ..ops.losses import IGNORE

    for what, a, b in (("samples", splits.train_x, splits.test_x), ("labels", splits.train_y, splits.test_y)):
        if a.shape[1:] != b.shape[1:]:
            raise DataError(f"{name}'s training {what} have shape {list(a.shape[1:])}, its test {what} "
                            f"{list(b.shape[1:])}", "data.dataset")
    for split, x, y in (("training", splits.train_x, splits.train_y), ("test", splits.test_x, splits.test_y)):
        if len(x) != len(y):
            raise DataError(f"{name}'s {split} split holds {len(x)} samples but {len(y)} labels", "data.dataset")
        if len(x) == 0:
            raise DataError(f"{name}'s {split} split holds no samples", "data.dataset")
        if splits.num_classes is not None:
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise DataError(f"{name}'s {split} labels are {y.dtype}, not class indices", "data.dataset")
            bad = ((y != IGNORE) & ((y < 0) | (y >= splits.num_classes))).reshape(-1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise DataError(f"{name}'s {split} sample {i // max(1, y[:1].numel())} has the label "
                                f"{int(y.reshape(-1)[i])}, not a class index in 0..{splits.num_classes - 1}",
                                "data.dataset")


def image_tensors(data: Any, targets: Any, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (``[N, H, W]``, or ``[N, H, W, C]`` with ``channels_last``) and class
    indices -> float32 ``[N, C, H, W]`` in ``[0, 1]`` and int64 ``[N]``.

    The one conversion for every image dataset (torchvision's arrays and the synthetic ones).
    """
    x = torch.as_tensor(data)
    if x.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {x.dtype}", "data.dataset")
    if channels_last:  # CIFAR: [N, H, W, C] uint8
        x = x.permute(0, 3, 1, 2)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    return x.float().div_(255.0).contiguous(), torch.as_tensor(targets, dtype=torch.long)


def _torchvision(cls_name: str, folder: str, num_classes: int, channels_last: bool = False,
                 archive: str | None = None, layout: str | None = None):
    layout = layout or f"{folder}/raw/..."

    def load(root: str | None) -> Splits:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = data_root(root)
        online = root is None
        missing = None if online else _offline_missing(root, cls, folder, archive)
        if missing:     # before torchvision, which makes <root>/<folder>/raw (or root) to download into
            raise DataError(f"cannot load {cls_name}: {missing} (looked in {root}/{folder}, expected {layout})",
                            "data.dataset")
        base = root or str(_cache_dir())
        base = _writable_root(base, folder, archive) if not online else base
        legacy = Path(base) / folder / "processed"      # (torchvision reads its legacy cache instead of raw/)
        refused = (_check_idx(Path(base) / folder / "raw") if archive is None and not
                   ((legacy / "training.pt").exists() and (legacy / "test.pt").exists()) else None)
        if refused:
            raise DataError(f"cannot load {cls_name}: {refused}", "data.dataset")
        try:
            train = cls(base, train=True, download=True)
            test = cls(base, train=False, download=True)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError
            hint = ("set data.root or PCGRAPH_DATA to a folder with torchvision's layout "
                    f"({layout})" if online else f"looked in {base}/{folder}, expected {layout}")
            if isinstance(exc, pickle.UnpicklingError):     # MNIST's legacy processed/*.pt: weights_only
                why = (f"{base}/{folder}/processed/ (torchvision's legacy cache, read before raw/) holds "
                       f"objects other than tensors: {unpickling_reason(exc)}")
            else:
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
                if not str(exc).strip():        # (torchvision's readers assert without a message)
                    why += " in torchvision's reader (a damaged or truncated file?)"
            raise DataError(f"cannot load {cls_name}: {why} ({hint})", "data.dataset") from None
        try:
            tx, ty = image_tensors(train.data, train.targets, channels_last)
            vx, vy = image_tensors(test.data, test.targets, channels_last)
        except (TypeError, ValueError, RuntimeError) as exc:   # (a legacy processed/*.pt of other tensors)
            raise DataError(f"cannot load {cls_name}: {base}/{folder} holds no image arrays "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())})", "data.dataset") from None
        return Splits(cls_name, tx, ty, vx, vy, num_classes)

    load.__doc__ = f"torchvision's {cls_name} (offline root layout: {layout})."
    return load


DATASETS.add("mnist", _torchvision("MNIST", "MNIST", 10))
DATASETS.add("fashion_mnist", _torchvision("FashionMNIST", "FashionMNIST", 10))
_CIFAR10_LAYOUT = "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or cifar-10-python.tar.gz"
_cifar10_torchvision = _torchvision("CIFAR10", "cifar-10-batches-py", 10, channels_last=True,
                                    archive="cifar-10-python.tar.gz", layout=_CIFAR10_LAYOUT)


@DATASETS.register("cifar10")
def _cifar10(root: str | None) -> Splits:
    """torchvision's CIFAR10 (offline root layout: cifar-10-batches-py/{data_batch_1..5,
    test_batch,batches.meta} or cifar-10-python.tar.gz). Without a copy and without a network
    the error is one line that says what to do: the files to place and where, or the
    generated stand-in (``--set data.dataset=cifar10_synthetic``)."""
    where = data_root(root)         # (a malformed root is its own error)
    try:
        return _cifar10_torchvision(root)
    except DataError as err:
        if err.where != "data.dataset":
            raise
        cause = err.__context__     # torchvision's exception, when torchvision ran
        why = (f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}".rstrip(": ")
               if cause is not None else "no such files")
        files = ("cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/{data_batch_1..5,"
                 "test_batch,batches.meta})")
        if where is None:
            found = f"no offline copy named; download: {why}"
            place = f"place {files} in a folder and name it by data.root or PCGRAPH_DATA"
        else:
            found, place = f"looked in {where}/cifar-10-batches-py: {why}", f"place {files} in {where}"
        raise DataError(f"cannot load CIFAR10 ({found}): {place}, or train on the generated stand-in: "
                        "--set data.dataset=cifar10_synthetic", "data.dataset") from None


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


# ---- synthetic datasets (generated from a seed, no files) ------------------------------------

#: a dataset's ``seed`` option: ``2 * seed + split`` must fit ``torch.Generator.manual_seed``
#: (the spec's own seed has the same bound)
MAX_SEED = 2 ** 62
#: sizes and lengths of generated datasets (a tensor dimension; memory is checked elsewhere)
MAX_SIZE = 2 ** 31 - 1


def _show(value: Any) -> str:
    """``repr(value)``, an integer too long to print (Python refuses past 4300 digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _int_option(value: Any, name: str, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        top = "2**62 - 1" if maximum == MAX_SEED - 1 else f"{maximum}"
        raise DataError(f"expected an integer >= {minimum} and <= {top}, got {_show(value)}", f"data.options.{name}")
    return value


def _bool_option(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"expected true or false, got {value!r}", f"data.options.{name}")
    return value


def _generator(seed: int, split: int) -> torch.Generator:
    """One independent stream per (seed, split): the test set does not depend on train_size."""
    return torch.Generator().manual_seed(2 * seed + split)


def adding_problem(n: int, length: int, generator: torch.Generator,
                   per_step: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` adding-problem sequences: ``x`` ``[n, length, 2]`` float32 and targets
    ``[n, 1]`` (or ``[n, length, 1]`` per step: the running sum of the marked values)."""
    values = torch.rand(n, length, generator=generator, dtype=torch.float64)
    marked = torch.rand(n, length, generator=generator).argsort(dim=1)[:, :2]  # two distinct positions
    marker = torch.zeros(n, length, dtype=torch.float64).scatter_(1, marked, 1.0)
    values = values.float().double()   # the targets are sums of exactly the float32 inputs
    x = torch.stack([values, marker], dim=-1).float()
    picked = values * marker
    y = picked.cumsum(1).unsqueeze(-1) if per_step else picked.sum(1, keepdim=True)
    return x, y.float()


@DATASETS.register("adding")
def _adding(root: str | None = None, *, length: int = 20, train_size: int = 10000,
            test_size: int = 1000, per_step: bool = False, seed: int = 0) -> Splits:
    """The adding problem: ``[length, 2]`` sequences, target the sum of the two marked values.

    Options (``data.options``): ``length`` (T, default 20), ``train_size`` (10000),
    ``test_size`` (1000), ``per_step`` (false: one target ``[1]``; true: ``[T, 1]``, the
    running sum at every step), ``seed`` (0; the data do not depend on the spec's seed).
    """
    length = _int_option(length, "length", 2)
    train_size, test_size = _int_option(train_size, "train_size"), _int_option(test_size, "test_size")
    per_step = _bool_option(per_step, "per_step")
    seed = _int_option(seed, "seed", 0, MAX_SEED - 1)
    tx, ty = adding_problem(train_size, length, _generator(seed, 0), per_step)
    vx, vy = adding_problem(test_size, length, _generator(seed, 1), per_step)
    return Splits("adding", tx, ty, vx, vy, None, length if per_step else None)


def _hsv_colours(hue: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] of full saturation and value at ``hue`` (in turns), ``[n] -> [n, 3]``."""
    h = (hue % 1.0) * 6.0
    out = []
    for off in (5.0, 3.0, 1.0):  # r, g, b
        t = (off + h) % 6.0
        out.append(1.0 - torch.clamp(torch.minimum(t, 4.0 - t), 0.0, 1.0))
    return torch.stack(out, dim=1)


def synthetic_cifar(n: int, generator: torch.Generator, num_classes: int = 10,
                    size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 ``[n, size, size, 3]`` images (channels last, like torchvision's CIFAR-10
    arrays) and int64 labels, balanced over the classes.

    Class ``c`` has a faint tint (hue ``(c + u) / num_classes``, ``u`` uniform in
    ``[-1/2, 1/2]``, so neighbouring classes share hues) and stripes at orientation
    ``c * pi / num_classes`` with a random phase; per image, random tint strength and
    brightness and pixel noise (sd 0.25). Colour alone separates the classes poorly: on
    2000/500 images (seed 0, torch Adam, 15 epochs) a linear classifier reaches 0.67
    test accuracy, a 3072-128-10 MLP 0.86, a two-layer CNN 0.87; the nearest mean colour
    0.49 (chance 0.1).
    """
    g = generator
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    jitter = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    tint = _hsv_colours((y.double() + jitter) / num_classes)                    # [n, 3]
    strength = 0.03 + 0.1 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    brightness = 0.15 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    base = 0.5 + brightness + strength * (tint - 0.5) * 2.0                      # [n, 3]
    theta = y.double() * math.pi / num_classes
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    coords = torch.arange(size, dtype=torch.float64)
    r, c = torch.meshgrid(coords, coords, indexing="ij")
    along = r[None] * torch.sin(theta)[:, None, None] + c[None] * torch.cos(theta)[:, None, None]
    stripes = 0.1 * torch.sin(2 * math.pi * 4.0 / size * along + phase[:, None, None])  # [n, H, W]
    img = base[:, None, None, :] + stripes[..., None]
    img = img + 0.25 * torch.randn(n, size, size, 3, generator=g, dtype=torch.float64)
    x = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x, y


@DATASETS.register("cifar10_synthetic")
def _cifar10_synthetic(root: str | None = None, *, train_size: int = 2000, test_size: int = 500,
                       seed: int = 0) -> Splits:
    """A generated stand-in for CIFAR-10: uint8 32x32x3 images, 10 classes (colour + stripes),
    converted by the same :func:`image_tensors` as ``cifar10`` (samples ``[3, 32, 32]``).

    Options (``data.options``): ``train_size`` (2000), ``test_size`` (500), ``seed`` (0).
    """
    train_size, test_size = _int_option(train_size, "train_size"), _int_option(test_size, "test_size")
    seed = _int_option(seed, "seed", 0, MAX_SEED - 1)
    tx, ty = image_tensors(*synthetic_cifar(train_size, _generator(seed, 0)), channels_last=True)
    vx, vy = image_tensors(*synthetic_cifar(test_size, _generator(seed, 1)), channels_last=True)
    return Splits("cifar10_synthetic", tx, ty, vx, vy, 10)


# ---- loading by name ----------------------------------------------------------------------

def dataset_options(name: str) -> dict[str, Any]:
    """The options a dataset takes, with their defaults."""
    params = inspect.signature(DATASETS.get(name, "data.dataset")).parameters
    return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def load_dataset(name: str, root: str | None = None, train_subset: int | None = None,
                 test_subset: int | None = None, options: dict | None = None) -> Splits:
    """Load dataset ``name``; ``options`` are its own parameters (``data.options``)."""
    loader = DATASETS.get(name, "data.dataset")
    data_root(root)     # a root of the wrong type is an error even for a dataset that needs no files
    for what, k in (("train_subset", train_subset), ("test_subset", test_subset)):
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
            raise DataError(f"expected a positive integer, got {_show(k)}", f"data.{what}")
    options = dict(options or {})
    known = dataset_options(name)
    for k in options:
        if k not in known:
            what = f"known: {', '.join(known)}" if known else "it takes no options"
            raise DataError(f"dataset {name!r} has no option {k!r} ({what})", f"data.options.{k}")
    splits = loader(root, **options)
    _check_splits(splits, name)
    if splits.graph is not None:    # one graph: a subset keeps its first labelled vertices, all vertices
        from .graphs import first_labelled

        splits.train_y = first_labelled(splits.train_y, train_subset)
        splits.test_y = first_labelled(splits.test_y, test_subset)
        return splits
    if train_subset:
        splits.train_x, splits.train_y = splits.train_x[:train_subset], splits.train_y[:train_subset]
    if test_subset:
        splits.test_x, splits.test_y = splits.test_x[:test_subset], splits.test_y[:test_subset]
    return splits
