"""pcgraph: predictive-coding networks as graphs, compiled into batched PyTorch programs.

    spec -> graph IR -> compiled graph (depths, relays) -> inference plan -> rule -> trainer
"""

from .compile import CompiledGraph, InferencePlan, PCKernel, PCNetwork, build_plan, compile_graph
from .errors import CheckpointError, CompileError, DataError, GraphError, PCGraphError, SpecError
from .ir import Edge, PCGraph, ValueNode
from .rules import RULES, LearningRule, make_rule
from .spec import AlgorithmSpec, DataSpec, Spec, TrainSpec
from .train import Experiment, Trainer, check_against_bp
from .importer import ImportedModel, TorchImportError, from_torch, load_weights

__version__ = "0.1.0"

__all__ = [
    "AlgorithmSpec", "CheckpointError", "CompileError", "CompiledGraph", "DataError", "DataSpec", "Edge",
    "Experiment", "GraphError", "InferencePlan", "LearningRule", "PCGraph", "PCGraphError", "PCKernel", "PCNetwork",
    "RULES", "Spec", "SpecError", "TrainSpec", "Trainer", "ValueNode", "build_plan", "check_against_bp",
    "compile_graph", "make_rule",
]
__all__ += ["ImportedModel", "TorchImportError", "from_torch", "load_weights"]
