"""Datasets: the FDDB benchmark reader (official layout)."""

from veil.data.fddb import FDDB_TOTAL_IMAGES, DatasetError, FDDBDataset, FDDBImage, read_fddb

__all__ = ["FDDB_TOTAL_IMAGES", "DatasetError", "FDDBDataset", "FDDBImage", "read_fddb"]
