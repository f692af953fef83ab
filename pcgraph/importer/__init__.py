"""Import existing ``torch.nn.Module`` models: :func:`from_torch` and ``pcgraph import``.

``from_torch(module, example_input)`` traces the module with ``torch.fx`` (see
:mod:`pcgraph.importer.fx` for the mapping) and returns an :class:`ImportedModel`: the
:class:`~pcgraph.Spec` (graph, plus data/loss/train settings you can change), the module's
weights keyed like a :class:`~pcgraph.PCNetwork`'s ``state_dict`` (``params.<key>.<name>``),
and :meth:`ImportedModel.network`, a ready network holding those weights.
:meth:`ImportedModel.save` writes ``NAME.yaml`` and the weights beside it (``NAME.pt``);
``pcgraph run NAME.yaml --init NAME.pt`` trains from them.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["ImportedModel", "from_torch", "guess_dataset", "load_weights", "DATASET_BY_NUMEL"], ".api"),
    "TorchImportError": ".errors",
}, globals())

__all__ = ["ImportedModel", "TorchImportError", "from_torch", "guess_dataset", "load_weights"]
