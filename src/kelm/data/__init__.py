"""Named data sets: the registry, where each resolves on this machine, and their download."""

from kelm.data.download import prepare, sha256_file
from kelm.data.registry import DatasetSpec, FileSpec, get_spec, list_specs
from kelm.data.resolve import (
    Location,
    bundled_path,
    cache_root,
    dataset_cache_dir,
    locate,
    resolve,
    resolve_types,
)

__all__ = [
    "DatasetSpec",
    "FileSpec",
    "Location",
    "bundled_path",
    "cache_root",
    "dataset_cache_dir",
    "get_spec",
    "list_specs",
    "locate",
    "prepare",
    "resolve",
    "resolve_types",
    "sha256_file",
]
