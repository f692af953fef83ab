from .graph import Edge, PCGraph, ValueNode

__all__ = ["Edge", "PCGraph", "ValueNode"]
