"""Compiler: graph passes (depth, relays), the network's parameters, the PC kernel, the
inference plan and the programs that run it (compiled executor and reference interpreter)."""

from .executor import InferenceResult, State, feedforward, run_plan
from .graph import CompiledGraph, balance, compile_graph
from .interpreter import run_reference
from .kernel import PCKernel
from .network import PCNetwork
from .plan import EVERY, InferencePlan, build_full_plan, build_plan

__all__ = ["EVERY", "CompiledGraph", "InferencePlan", "InferenceResult", "PCKernel", "PCNetwork", "State", "balance",
           "build_full_plan", "build_plan", "compile_graph", "feedforward", "run_plan", "run_reference"]
