"""Datasets: a registry of loaders that yield float [0, 1] CHW image datasets with batch access."""

from advml.data import arrays, cifar, folders, nips17  # noqa: F401  (register the loaders)
from advml.data.base import (
                             ImageDataset,
                             SubsetDataset,
                             TensorImageDataset,
                             TorchDatasetAdapter,
                             as_image_dataset,
                             balanced_indices,
                             stratified_indices,
                             subset_indices,
)
from advml.data.registry import DATA_DIR_ENV, DATASETS, DatasetSplits, default_data_dir, find_file, load_dataset

__all__ = ["DATASETS", "DATA_DIR_ENV", "DatasetSplits", "ImageDataset", "SubsetDataset", "TensorImageDataset",
           "TorchDatasetAdapter", "as_image_dataset", "balanced_indices", "default_data_dir", "find_file",
           "load_dataset", "stratified_indices", "subset_indices"]
