from .datasets import DATASETS, Splits, dataset_options, load_dataset
from .loader import GraphBatches

__all__ = ["DATASETS", "GraphBatches", "Splits", "dataset_options", "load_dataset"]
