"""The importer's error (no torch import: the CLI's argument parsing names it)."""

from __future__ import annotations

from ..errors import PCGraphError


class TorchImportError(PCGraphError):
    """A torch module cannot be imported: an op pcgraph has no equivalent for, a setting of a
    supported layer that changes its meaning (e.g. ``ceil_mode=True``), or a module torch.fx
    cannot trace. ``where`` names the module path (``features.3``) or the traced call."""
