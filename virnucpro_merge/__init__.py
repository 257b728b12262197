"""Merge, validate and inspect the HDF5 embedding shards of a multi-GPU run.

>>> import virnucpro_merge
>>> virnucpro_merge.CHUNK_SIZE
10000
"""

from ._version import __version__
from .checks import validate_shard_completeness
from .cluster import to_dask
from .errors import (
    CheckpointError,
    ConflictingCheckpointsError,
    DuplicateIdError,
    ExpectedIdsError,
    IndexMismatchError,
    MergeError,
    MislabelledShardError,
    MissingIdsError,
    NonFiniteError,
    OutputError,
    ShardError,
    UnreadableShardError,
    ValidationError,
)
from .expected import read_expected_ids
from .merge import CHUNK_SIZE, aggregate_shards, materialize
from .report import read_merge_report
from .rerun import write_missing_fasta
from .shards import get_shard_info
from .verify import Verification, verify_merged

__all__ = [
    "__version__",
    "CHUNK_SIZE",
    "aggregate_shards",
    "materialize",
    "validate_shard_completeness",
    "get_shard_info",
    "read_merge_report",
    "read_expected_ids",
    "write_missing_fasta",
    "verify_merged",
    "Verification",
    "to_dask",
    "MergeError",
    "ShardError",
    "UnreadableShardError",
    "ExpectedIdsError",
    "CheckpointError",
    "MislabelledShardError",
    "ConflictingCheckpointsError",
    "IndexMismatchError",
    "OutputError",
    "ValidationError",
    "DuplicateIdError",
    "MissingIdsError",
    "NonFiniteError",
]
