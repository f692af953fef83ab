"""The importer's API (see the package's docstring): :func:`from_torch`, :class:`ImportedModel`,
:func:`load_weights`."""

from __future__ import annotations

import pickle

import contextlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, PCGraphError, unpickling_reason
from ..ir import PCGraph
from ..spec import Spec
from .fx import FxImporter, TorchImportError

__all__ = ["ImportedModel", "TorchImportError", "from_torch", "guess_dataset", "load_weights"]

#: datasets whose samples have this many values (the loader reshapes samples to the input node)
DATASET_BY_NUMEL = {64: "digits", 784: "mnist", 3072: "cifar10_synthetic"}


def guess_dataset(input_shape: Sequence[int]) -> str:
    """A bundled or offline dataset whose samples fit ``input_shape`` (``digits`` otherwise)."""
    return DATASET_BY_NUMEL.get(math.prod(input_shape), "digits")


@dataclass
class ImportedModel:
    """What :func:`from_torch` returns."""

    #: the graph (``spec.model``) and editable data / loss / train settings
    spec: Spec
    #: the module's weights as a PCNetwork ``state_dict`` (``params.<key>.<name>`` -> tensor)
    state_dict: dict[str, torch.Tensor]
    #: where each pcgraph parameter came from: ``params.<key>.<name>`` -> (module parameter
    #: name, rows of it or None)
    sources: dict[str, tuple[str, slice | None]]
    #: module parameters that pcgraph does not need, with the reason
    dropped: dict[str, str] = field(default_factory=dict)

    def gather(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Module tensors keyed by parameter name (``module.named_parameters()``, or their
        ``.grad``) re-keyed and sliced as the pcgraph parameters they became."""
        out = {}
        for key, (name, rows) in self.sources.items():
            t = tensors[name]
            out[key] = t if rows is None else t[rows]
        return out

    def network(self, dtype: torch.dtype | None = None, device=None):
        """A :class:`~pcgraph.PCNetwork` of ``spec.model`` holding the imported weights
        (``dtype``: default the module's)."""
        from ..compile import PCNetwork, compile_graph

        dtype = dtype or next(iter(self.state_dict.values()), torch.empty(0)).dtype
        net = PCNetwork(compile_graph(self.spec.model, self.spec.loss), seed=self.spec.seed, device=device,
                        dtype=dtype)
        _load(net, self.state_dict, "the imported weights")
        return net

    def save(self, spec_path: str | Path, weights_path: str | Path | None = None) -> tuple[Path, Path]:
        """Write the spec (YAML) and the weights (``torch.save`` of :attr:`state_dict`; default:
        the spec's path with ``.pt``). Returns both paths."""
        spec_path = Path(spec_path)
        weights_path = Path(weights_path) if weights_path is not None else spec_path.with_suffix(".pt")
        self.spec.save(spec_path)
        torch.save({k: v.detach().cpu() for k, v in self.state_dict.items()}, weights_path)
        return spec_path, weights_path


def from_torch(module: nn.Module, example_input, *, name: str | None = None, loss: str | dict = "cross_entropy",
               dataset: str | None = None, batch_size: int = 32, algorithm="zil", epochs: int = 1,
               optimizer: dict | None = None, seed: int = 0) -> ImportedModel:
    """Trace ``module`` with ``torch.fx`` on ``example_input`` (a ``[batch, ...]`` tensor, or a
    tuple of them for a forward with several tensor arguments) and map it onto a pcgraph spec.

    The spec's data, loss and train settings come from the keyword arguments (``dataset``:
    default guessed from the input's size: 64 values ``digits``, 784 ``mnist``, 3072
    ``cifar10_synthetic``). The module is not modified; its weights are copied. Raises a
    :class:`TorchImportError` naming the module path and the op for anything unsupported.
    """
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(module, nn.Module):
        raise TorchImportError(f"expected a torch.nn.Module, got {type(module).__name__}", "module")
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in examples):
        raise TorchImportError("the example input must be a [batch, ...] tensor (or a tuple of them)",
                               "example_input")
    kind = type(module).__qualname__
    try:
        gm = symbolic_trace(module)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, ...)
        raise TorchImportError(f"torch.fx cannot trace it: {type(exc).__name__}: {exc}", kind) from None
    try:
        # ShapeProp prints a traceback of its own before it raises: keep it out of the one-line error
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*examples)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise TorchImportError(f"running it on the example input failed: {type(cause).__name__}: {cause}",
                               kind) from None
    imp = FxImporter(module, gm, examples)
    imp.run()
    graph = PCGraph()
    for node in imp.nodes.values():
        graph.add_node(node)
    for edge, _ in imp.edges:
        graph.add_edge(edge)
    inputs = graph.inputs
    spec = Spec(name=name or kind, seed=seed, model=graph)
    in_shape = graph.nodes[inputs[0]].shape
    spec.set_data(dataset=dataset or guess_dataset(in_shape), batch_size=batch_size)
    spec.set_loss(loss)
    spec.set_train(algorithm=algorithm, epochs=epochs, optimizer=optimizer or {"name": "adam", "lr": 0.001})
    spec.description = f"imported from torch module {kind} by pcgraph.from_torch"
    spec.validate()
    params = dict(module.named_parameters(remove_duplicate=False))
    sources: dict[str, tuple[str, slice | None]] = {}
    for edge, term in imp.edges:
        for pname, src in term.weights.items():
            sources[f"params.{edge.key}.{pname}"] = src
    state = {}
    for key, (pname, rows) in sources.items():
        t = params[pname].detach()
        state[key] = (t if rows is None else t[rows]).clone()
    out = ImportedModel(spec, state, sources, dict(imp.dropped))
    out.network()       # every parameter present, with the shape its op needs (else a bug here)
    return out


def _load(net, state: Mapping[str, torch.Tensor], what: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        raise CheckpointError(f"{what} do not fit this spec's parameters ({'; '.join(parts)})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{what}: {k} has shape {list(v.shape)}, the spec needs {list(own[k].shape)}")
        if not v.is_floating_point():       # (torch would cast ints and bools, and drop imaginary parts)
            raise CheckpointError(f"{what}: {k} holds {str(v.dtype).replace('torch.', '')} values, not real "
                                  "floating-point weights")
    with torch.no_grad():
        net.load_state_dict(dict(state))


def load_weights(net, path: str | Path, note: Callable[[str], None] | None = None) -> None:
    """Load weights into a :class:`~pcgraph.PCNetwork`: a file written by
    :meth:`ImportedModel.save` (or ``pcgraph import``), or a ``pcgraph run`` checkpoint.

    A checkpoint is verified against the SHA-256 digests saved with it, as a resume verifies
    it (a mismatch is a :class:`~pcgraph.errors.CheckpointError` naming the tensor); one
    written before checkpoints carried digests is loaded unverified, and ``note`` is told so
    in one line. A plain state_dict carries no digests (nothing to verify, nothing said)."""
    from ..train.checkpoint import DIGESTS, FORMAT, regular_file, torch_load, verify

    path = Path(path)
    regular_file(path, "weights file")
    try:
        state = torch_load(path, map_location=net.device)
    except FileNotFoundError:
        raise CheckpointError("no such weights file", None, str(path)) from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError("refusing to read the weights: the file holds objects other than tensors and plain "
                              f"data (only those are loaded, so a crafted file cannot run code): "
                              f"{unpickling_reason(exc)}", None, str(path)) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot read the weights: {type(exc).__name__}: {first}", None, str(path)) from None
    notes: list[str] = []           # (said once the weights are in: a refusal is one line)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        if state.get("format") == FORMAT or DIGESTS in state:      # a pcgraph checkpoint
            verify(state, path, notes.append)
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("not a weights file (expected a state_dict of tensors)", None, str(path))
    try:
        _load(net, state, "the weights")
    except PCGraphError as err:
        raise err.located(str(path)) from None
    for line in notes if note is not None else ():
        note(line)
