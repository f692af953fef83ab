from .overrides import apply_overrides
from .schema import AlgorithmSpec, DataSpec, Spec, TrainSpec
from .yamlio import load_yaml

__all__ = ["AlgorithmSpec", "DataSpec", "Spec", "TrainSpec", "apply_overrides", "load_yaml"]
