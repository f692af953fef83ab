from .datasets import DATASETS, Splits, dataset_options, load_dataset
from .loader import GraphBatches
from . import graphs  # noqa: F401  (registration: cora, citeseer, karate)

__all__ = ["DATASETS", "GraphBatches", "Splits", "dataset_options", "load_dataset"]
