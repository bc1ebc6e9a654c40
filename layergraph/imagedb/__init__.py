"""The image database (LMDB) and the dataset creators behind ``layergraph data``.

>>> from layergraph import imagedb
>>> imagedb.create_mnist(None, name="MNIST")             # doctest: +SKIP
>>> imagedb.copy_dataset("MNIST", "MNIST.30", max_per_label=30)  # doctest: +SKIP
>>> src = imagedb.open_source("MNIST.30.training")        # doctest: +SKIP
"""
from .store import (ENV_VAR, DEFAULT_ROOT, SPLITS, DatasetWriter, Source, dataset_exists,
                    dataset_info, db_root, delete_dataset, list_datasets, open_source,
                    read_mean, read_mean_file, split_source_name)
from .creators import (copy_dataset, create_mnist, import_images, read_idx, show)

__all__ = [
    "ENV_VAR", "DEFAULT_ROOT", "SPLITS", "DatasetWriter", "Source", "dataset_exists",
    "dataset_info", "db_root", "delete_dataset", "list_datasets", "open_source", "read_mean",
    "read_mean_file", "split_source_name", "copy_dataset", "create_mnist", "import_images",
    "read_idx", "show",
]
