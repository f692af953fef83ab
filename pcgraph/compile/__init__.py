"""Compiler: graph passes (depth, relays), the network's parameters, the inference plan
and the programs that run it (compiled and reference)."""

from .dynamics import InferenceResult, run_inference
from .graph import CompiledGraph, balance, compile_graph
from .interpreter import run_reference
from .network import PCNetwork
from .plan import InferencePlan, build_plan

__all__ = ["CompiledGraph", "InferencePlan", "InferenceResult", "PCNetwork", "balance", "build_plan",
           "compile_graph", "run_inference", "run_reference"]
