"""Checkpoints: written atomically (temp file + ``os.replace``), so a run killed while
saving never leaves a broken file; ``load_checkpoint`` checks that it fits the spec.

Checkpoints hold only tensors and plain data (dicts, lists, tuples, str/int/float/bool/None):
the spec as a plain dict, RNG states as tensors. They are read with
``torch.load(weights_only=True)``, so a crafted file cannot run code when loaded.

Each checkpoint also stores a SHA-256 digest of every tensor it holds (and one of the rest of
its data, tensors' dtypes and shapes included): a file changed after it was written (a flipped
bit on disk, a bad copy) is refused at load time, naming the tensor, instead of resuming from
corrupted weights with no word. Checkpoints written before digests existed still load,
unverified (``load_checkpoint``'s ``note`` says so)."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, unpickling_reason

FORMAT = "pcgraph-checkpoint-2"   # 2: the rule's own state_dict (and optimizer) are saved too


#: the key of the digests in a checkpoint (absent from those written before them)
DIGESTS = "digests"


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach()
    t = (t.cpu() if t.device.type != "cpu" else t).contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        try:
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        except (RuntimeError, TypeError):        # (a layout without plain bytes)
            h.update(repr(t.tolist()).encode())
    return h.hexdigest()


def _skeleton(obj: Any, path: str, tensors: list) -> Any:
    """``obj`` with every tensor replaced by its dtype and shape (``tensors`` gets its path)."""
    if isinstance(obj, torch.Tensor):
        tensors.append((path, obj))
        return ("tensor", str(obj.dtype), tuple(obj.shape))
    sub = (lambda k: f"{path}/{k}" if path else str(k))
    if isinstance(obj, dict):
        return {k: _skeleton(v, sub(k), tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_skeleton(v, sub(i), tensors) for i, v in enumerate(obj))
    return obj


def digests(state: dict) -> dict:
    """The digests of ``state`` (a checkpoint's content, without its format and digests):
    ``{"data": digest of everything but the tensors' values, "tensors": [[path, digest], ..]}``."""
    tensors: list = []
    body = {k: v for k, v in state.items() if k not in ("format", DIGESTS)}
    data = hashlib.sha256(repr(_skeleton(body, "", tensors)).encode()).hexdigest()
    return {"data": data, "tensors": [[p, _tensor_digest(t)] for p, t in tensors]}


def verify(state: dict, path: str | Path, note: Callable[[str], None] | None = None) -> None:
    """Raise a CheckpointError naming the first tensor (or the data) of ``state`` that does not
    match the digests saved with it; without digests (an older checkpoint), say so to ``note``."""
    saved = state.get(DIGESTS)
    if saved is None:
        if note is not None:
            note(f"note: {path} was written before checkpoints carried digests: it is loaded unverified")
        return
    try:
        now = digests(state)
    except RecursionError:
        raise CheckpointError("the checkpoint's data nests deeper than any checkpoint pcgraph writes: the file "
                              "is damaged or crafted", None, str(path)) from None
    try:
        pairs = [(str(p), str(d)) for p, d in saved["tensors"]]
        data = saved["data"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("the checkpoint's digests are unreadable: the file is corrupt", DIGESTS,
                              str(path)) from None
    for (p, d), (p_now, d_now) in zip(pairs, now["tensors"]):
        if p != p_now:
            break                       # (the structure differs: the data digest says so below)
        if d != d_now:
            raise CheckpointError("this tensor does not match the digest saved with it: the file was changed "
                                  "or corrupted after it was written (refusing to load it; use another copy "
                                  "or start a new run)", p, str(path))
    if data != now["data"] or len(pairs) != len(now["tensors"]):
        raise CheckpointError("the checkpoint's data (its spec, epoch, history, or tensors' dtypes and shapes) "
                              "does not match the digest saved with it: the file was changed or corrupted "
                              "after it was written (refusing to load it)", None, str(path))


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state, DIGESTS: digests(state)}, tmp)
    os.replace(tmp, path)


#: the deepest nesting of plain data a checkpoint holds (its spec: a few levels)
MAX_DEPTH = 64
_PLAIN = (str, int, float, bool, type(None))


def regular_file(path: Path, what: str) -> None:
    """Raise a CheckpointError unless ``path`` is a regular file (a FIFO would block the read
    for ever, /dev/zero would never end, a folder is no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no such {what}" if what != "checkpoint" else "no checkpoint here to resume from",
                              None, str(path)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the {what}: {exc.strerror or exc}", None, str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise CheckpointError(f"the {what} is {kind}, not a file", None, str(path))


def torch_load(path: Path, map_location=None) -> Any:
    """``torch.load(path, weights_only=True)`` of a regular file, torch's warnings (about pickle
    protocols, legacy formats) kept off the terminal: the file loads, or it is refused in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def _plain(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is plain data: str-keyed dicts, lists, tuples and scalars, no tensors,
    nested at most :data:`MAX_DEPTH` deep."""
    if isinstance(obj, _PLAIN):
        return True
    if depth >= MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v, depth + 1) for v in obj)
    return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_state(state: dict, path: str | Path) -> None:
    """Raise a CheckpointError naming the first entry of ``state`` (a loaded checkpoint) that
    is not what pcgraph writes there: a file damaged or crafted, its digests recomputed (or an
    older one without digests), refused in one line before any of it meets the network. Each
    entry present is checked; which must be present is the reader's to say (a resume needs
    them all, ``infer`` the spec and the weights)."""
    def bad(where: str, what: str):
        raise CheckpointError(f"{what}: not what pcgraph writes there (the file is damaged or crafted)", where,
                              str(path))

    if "spec" in state and (not isinstance(state["spec"], dict) or not _plain(state["spec"])):
        bad("spec", "expected the spec as a mapping of plain data")
    epoch = state.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        bad("epoch", f"expected a whole number of epochs >= 0, got {type(epoch).__name__}")
    model = state.get("model", {})
    if not isinstance(model, dict) or ("model" in state and not model):
        bad("model", "expected the weights as a mapping of names to tensors")
    for k, t in model.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            bad(f"model/{k}", f"expected a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            bad(f"model/{k}", f"expected real floating-point weights, got {t.dtype}")
    for key in ("optimizer", "rule", "rule_optimizer", "scheduler"):
        if key in state and state[key] is not None and not isinstance(state[key], dict):
            bad(key, f"expected a mapping (a state_dict), got {type(state[key]).__name__}")
    rng = state.get("batch_rng")
    if rng is not None and (not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1):
        bad("batch_rng", "expected a random generator's state (a 1-d uint8 tensor)")
    steps = state.get("steps_done", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        bad("steps_done", f"expected a whole number of steps >= 0, got {type(steps).__name__}")
    history = state.get("history", [])
    if not isinstance(history, list):
        bad("history", f"expected a list of epoch records, got {type(history).__name__}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or not _plain(rec, MAX_DEPTH - 1):
            bad(f"history/{i}", "expected an epoch record (a mapping of names to numbers)")
        for key in ("epoch", "test_loss", "test_accuracy"):
            if not _number(rec.get(key)):
                bad(f"history/{i}/{key}", f"expected a number, got {type(rec.get(key)).__name__}")


def load_checkpoint(path: str | Path, map_location=None, note: Callable[[str], None] | None = None) -> dict:
    """The checkpoint at ``path``, verified against its digests and checked entry by entry
    (:func:`check_state`). ``note`` is told, in one line, when it is an older checkpoint without
    digests, once it has loaded (a file refused is one error, no note before it)."""
    path = Path(path)
    regular_file(path, "checkpoint")
    try:
        state = torch_load(path, map_location=map_location)
    except FileNotFoundError:
        raise CheckpointError("no checkpoint here to resume from", None, str(path)) from None
    except pickle.UnpicklingError as exc:
        first = unpickling_reason(exc)
        raise CheckpointError("refusing to read the checkpoint: it holds objects other than tensors and "
                              f"plain data (only those are loaded, so a crafted file cannot run code): {first}",
                              None, str(path)) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot read the checkpoint: {type(exc).__name__}: {first}", None, str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"not a pcgraph checkpoint (expected format {FORMAT})", None, str(path))
    notes: list[str] = []
    verify(state, path, notes.append)
    check_state(state, path)
    for line in notes if note is not None else ():
        note(line)
    return state
