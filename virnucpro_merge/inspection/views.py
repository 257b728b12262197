"""What the tables and the figures read of an inspection: the shape of one, not the class.

:class:`~virnucpro_merge.inspection.RunInspection` and
:class:`~virnucpro_merge.inspection.ShardSummary` have these shapes; the tables and the
figures are written against the shapes, so that they need not import the inspection
whose display methods call them (and the package's import graph stays free of cycles).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["RankView", "InspectionView"]


class RankView(Protocol):
    """One rank of an inspection, as the tables and figures read it."""

    @property
    def rank(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def expected(self) -> int: ...
    @property
    def present(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...


class InspectionView(Protocol):
    """An inspection of a run, as the tables and figures read it."""

    @property
    def shards(self) -> Sequence[RankView]: ...
    @property
    def missing(self) -> np.ndarray: ...
    @property
    def sequence_ids(self) -> Sequence[str]: ...
    @property
    def num_extra(self) -> int: ...
    @property
    def expected_from(self) -> str | None: ...
    @property
    def world_size_from(self) -> str: ...
    @property
    def world_size(self) -> int: ...
    @property
    def num_missing(self) -> int: ...
    @property
    def num_present(self) -> int: ...
    @property
    def assigned(self) -> np.ndarray: ...
    @property
    def missing_ids(self) -> list[str]: ...
    def by_status(self) -> dict[str, list[int]]: ...
