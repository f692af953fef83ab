"""Checkpoints: written atomically (temp file + ``os.replace``), so a run killed while
saving never leaves a broken file; ``load_checkpoint`` checks that it fits the spec.

Checkpoints hold only tensors and plain data (dicts, lists, tuples, str/int/float/bool/None):
the spec as a plain dict, RNG states as tensors. They are read with
``torch.load(weights_only=True)``, so a crafted file cannot run code when loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError, unpickling_reason

FORMAT = "pcgraph-checkpoint-2"   # 2: the rule's own state_dict (and optimizer) are saved too


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location=None) -> dict:
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
    return state
