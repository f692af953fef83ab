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
    now = digests(state)
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


def load_checkpoint(path: str | Path, map_location=None, note: Callable[[str], None] | None = None) -> dict:
    """The checkpoint at ``path``, verified against its digests (``note``: told, in one line,
    when it is an older checkpoint without them)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("no checkpoint here to resume from", None, str(path)) from None
    except pickle.UnpicklingError as exc:
        first = unpickling_reason(exc)
        raise CheckpointError("refusing to read the checkpoint: it holds objects other than tensors and "
                              f"plain data (only those are loaded, so a crafted file cannot run code): {first}",
                              None, str(path)) from None
    except Exception as exc:
        raise CheckpointError(f"cannot read the checkpoint: {exc}", None, str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"not a pcgraph checkpoint (expected format {FORMAT})", None, str(path))
    verify(state, path, note)
    return state
