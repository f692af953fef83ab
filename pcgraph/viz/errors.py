"""Errors of the visualisation tools (PCGraphError subclasses: the CLI prints one line)."""

from __future__ import annotations

from ..errors import PCGraphError


class VizError(PCGraphError):
    """A picture, a run folder or an optional dependency of :mod:`pcgraph.viz` is unusable."""
