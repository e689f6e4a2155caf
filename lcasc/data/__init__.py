"""Datasets: TAU Urban Acoustic Scenes 2022 Mobile, one folder per class, a CSV list, the embedded default."""

from lcasc.data.datasets import (
    LAYOUTS,
    SPLITS,
    Dataset,
    DatasetError,
    Recording,
    default_dataset,
    load_dataset,
)

__all__ = ["LAYOUTS", "SPLITS", "Dataset", "DatasetError", "Recording", "default_dataset", "load_dataset"]
