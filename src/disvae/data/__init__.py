"""Datasets: arrays of images (and factor tables), looked up by name in `DATASETS`."""

from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.ground_truth import GridDataset, LabeledDataset
from disvae.data.registry import DATASETS, describe, load_data, load_dataset

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetInfo",
    "GridDataset",
    "LabeledDataset",
    "describe",
    "load_data",
    "load_dataset",
]
