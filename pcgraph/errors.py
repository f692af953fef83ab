"""Errors raised by pcgraph.

Every error subclasses :class:`PCGraphError` (itself a ``ValueError``) and carries
*where* the problem is (a spec path such as ``model.edges[2].to``, optionally with the
file and line it came from) and *what* is wrong, including what would be valid.
The CLI prints ``str(error)`` and exits with status 2, never a traceback.
"""

from __future__ import annotations


class PCGraphError(ValueError):
    """Base class: ``where: message``."""

    def __init__(self, message: str, where: str | None = None, location: str | None = None):
        self.message = message
        self.where = where
        self.location = location  # "file.yaml:12:5", when known
        super().__init__(self._format())

    def _format(self) -> str:
        head = ""
        if self.location:
            head += f"{self.location}: "
        if self.where:
            head += f"{self.where}: "
        return head + self.message

    def located(self, location: str | None) -> "PCGraphError":
        """Return a copy of this error that names the file position ``location``."""
        return type(self)(self.message, self.where, location)


class SpecError(PCGraphError):
    """A spec (YAML, dict, networkx or builder call) is malformed."""


class GraphError(PCGraphError):
    """The graph is well-formed as data but not a valid predictive-coding graph."""


class CompileError(PCGraphError):
    """The graph cannot be compiled for the requested learning rule."""


class DataError(PCGraphError):
    """A dataset cannot be found or loaded."""


class CheckpointError(PCGraphError):
    """A checkpoint cannot be read or does not match the spec."""


class TrainingError(PCGraphError):
    """Training cannot go on (e.g. the loss or a parameter became NaN or infinite); the CLI
    exits with status 3. The last good checkpoint is kept."""


def unpickling_reason(exc: BaseException) -> str:
    """The one line of torch's ``weights_only`` refusal that says what the file holds (the
    forbidden global), never its advice to retry with ``weights_only=False``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln
    keep = [ln for ln in lines if "weights_only" not in ln and "torch.load" not in ln]
    return keep[0] if keep else type(exc).__name__
