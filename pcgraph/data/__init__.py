from .datasets import DATASETS, Splits, load_dataset
from .loader import GraphBatches

__all__ = ["DATASETS", "GraphBatches", "Splits", "load_dataset"]
