"""pcgraph: predictive-coding networks as graphs, compiled into batched PyTorch programs.

    spec -> graph IR -> compiled graph (depths, relays) -> inference plan -> rule -> trainer
"""

from ._lazy import lazy_exports
from .errors import CheckpointError, CompileError, DataError, GraphError, PCGraphError, SpecError

#: public name -> the submodule that defines it, imported on first access: ``import pcgraph``
#: and ``pcgraph --help`` do not import torch
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["CompiledGraph", "InferencePlan", "PCKernel", "PCNetwork", "build_plan", "compile_graph"],
                    ".compile"),
    **dict.fromkeys(["Edge", "PCGraph", "ValueNode"], ".ir"),
    **dict.fromkeys(["RULES", "LearningRule", "make_rule"], ".rules"),
    **dict.fromkeys(["AlgorithmSpec", "DataSpec", "Spec", "TrainSpec"], ".spec"),
    **dict.fromkeys(["Experiment", "Trainer", "check_against_bp"], ".train"),
    **dict.fromkeys(["ImportedModel", "TorchImportError", "from_torch", "load_weights"], ".importer"),
}, globals())

__version__ = "0.1.0"

__all__ = [
    "AlgorithmSpec", "CheckpointError", "CompileError", "CompiledGraph", "DataError", "DataSpec", "Edge",
    "Experiment", "GraphError", "InferencePlan", "LearningRule", "PCGraph", "PCGraphError", "PCKernel", "PCNetwork",
    "RULES", "Spec", "SpecError", "TrainSpec", "Trainer", "ValueNode", "build_plan", "check_against_bp",
    "compile_graph", "make_rule",
]
__all__ += ["ImportedModel", "TorchImportError", "from_torch", "load_weights"]
