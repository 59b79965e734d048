"""Datasets: arrays of images (and factor tables), looked up by name in `DATASETS`."""

from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.ground_truth import GridDataset
from disvae.data.registry import DATASETS, load_dataset

__all__ = ["DATASETS", "ArrayDataset", "DatasetInfo", "GridDataset", "load_dataset"]
