"""Is any GPU's output different? Each rank's embeddings summed up, and the ranks that stand out.

A merge can be complete, every ID right, and one GPU's rows still wrong: a node that ran
the model in another precision, float16 overflow saturating values at +-65,504, a packing
bug writing one vector for several sequences, all-zero rows from a batch that never ran,
a rank whose vectors have another scale. While a merge reads each shard's rows (the scan
that checksums them and counts NaN/Inf rows), a :class:`RankTally` sums them up cheaply;
:meth:`RankTally.finish` gives a :class:`RankHealth`, stored in the merge report beside the
shard; :func:`judge` compares the ranks and says, in words, which stand out and why.

The rule (:func:`judge`), robust to a few bad ranks among many:

- a rank whose median row norm is more than ``MADS`` median absolute deviations (scaled to
  a standard deviation, and never taken below 1 % of the median) from the median of the
  ranks' medians, and more than 10 % off it;
- any row at the float16 limit (a value of magnitude 65,504 or more: fp16 overflow);
- any all-zero row;
- any row bit-identical to another row of the same rank under a different ID (candidates
  found by the checksums' 64-bit row sums, each confirmed by its bytes);
- a shard stored in a dtype unlike most ranks', or a model dtype (the ``model_dtype`` its
  checkpoints' metadata name, where the checkpoints were read) unlike most ranks'.

None of these fails a merge; ``aggregate --fail-on-health`` makes them exit 1.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import shown_id

__all__ = ["FP16_MAX", "QUANTILES", "MADS", "SAMPLE", "ALL_ROWS", "RankHealth", "RankTally", "HealthFlag", "judge",
           "tally_rows", "report_flags", "report_healths", "read_health"]

#: The largest finite float16: a value this large is an overflow's saturation, or near it.
FP16_MAX = 65504.0
#: The quantiles of each rank's row norms that a merge keeps.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: How far (in MADs) a rank's median norm may stray from the others' before it is flagged.
MADS = 8.0
_RELATIVE = 0.10  # ... and by at least this share of the median: a tight run flags no noise
_MAD_FLOOR = 0.01  # a MAD is never taken below this share of the median (identical ranks: MAD 0)
#: The norms, mean and spread of a shard's rows are taken on its first ALL_ROWS rows and on
#: every SAMPLE-th row after them (by row number).
SAMPLE, ALL_ROWS = 32, 256
_CONFIRM_AT_MOST = 10_000  # candidate identical rows confirmed by their bytes, at most, per rank
#: Blocks a tally keeps apart before joining what it kept of them (an index-order merge hands each
#: rank a few rows a block: 10^7 rows over 256 ranks were 760,000 small arrays, 91 MB of them headers).
_JOIN_AFTER = 64
#: Below this magnitude, a row's squares summed in float32 cannot overflow (rows up to 2**20 wide).
_SQUARE_SAFE = 1e15


@dataclass(frozen=True)
class RankHealth:
    """One rank's embeddings, summed up.

    ``norm_quantiles`` are the row norms' :data:`QUANTILES` (rows with NaN or Inf left
    out; empty without such rows); ``mean`` and ``std`` of the finite values (all three
    on the rows :meth:`RankTally.add` says); ``zero_rows``, ``saturated_rows`` and
    ``identical_rows`` count every row;
    ``identical_example`` two row numbers (in the shard) of rows found identical.
    """

    rows: int
    norm_quantiles: tuple[float, ...]
    mean: float
    std: float
    zero_rows: int
    saturated_rows: int
    identical_rows: int
    identical_example: tuple[int, int] | None = None
    dtype: str | None = None
    #: the model dtypes its checkpoints name (``"torch.float16"``), sorted; empty when not read
    model_dtypes: tuple[str, ...] = ()

    @property
    def median_norm(self) -> float | None:
        """The median row norm (None: no finite row)."""
        return self.norm_quantiles[QUANTILES.index(0.5)] if self.norm_quantiles else None

    def to_record(self) -> dict[str, Any]:
        """The record a merge report keeps (plain JSON)."""
        return {"rows": self.rows, "norm_quantiles": list(self.norm_quantiles), "mean": self.mean, "std": self.std,
                "zero_rows": self.zero_rows, "saturated_rows": self.saturated_rows,
                "identical_rows": self.identical_rows,
                "identical_example": None if self.identical_example is None else list(self.identical_example),
                "dtype": self.dtype, "model_dtypes": list(self.model_dtypes)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RankHealth:
        """The health a merge report kept (its shape checked by the report's reader)."""
        example = record.get("identical_example")
        return cls(rows=record["rows"], norm_quantiles=tuple(record["norm_quantiles"]), mean=record["mean"],
                   std=record["std"], zero_rows=record["zero_rows"], saturated_rows=record["saturated_rows"],
                   identical_rows=record["identical_rows"],
                   identical_example=None if example is None else (int(example[0]), int(example[1])),
                   dtype=record.get("dtype"), model_dtypes=tuple(record.get("model_dtypes") or ()))


@dataclass
class RankTally:
    """One shard's rows summed up as they stream past, block by block (one thread at a time)."""

    rows: int = 0
    zero_rows: int = 0
    saturated_rows: int = 0
    finite_values: int = 0
    value_sum: float = 0.0
    square_sum: float = 0.0
    _norms: list[np.ndarray] = field(default_factory=list)
    _sums: list[np.ndarray] = field(default_factory=list)
    _where: list[np.ndarray] = field(default_factory=list)
    _loose: int = 0  # blocks kept since the last join
    health: RankHealth | None = None  # (once finished)

    def add(self, block: np.ndarray, sums: np.ndarray, nonfinite: int, rows: np.ndarray | None = None,
            extremes: tuple[float, float] | None = None) -> None:
        """Sum up ``block`` (float32 rows), whose checksum row sums are ``sums`` and of which
        ``nonfinite`` rows hold NaN or Inf; ``rows``: their row numbers in the shard (by
        default, the rows that follow those added so far); ``extremes``: the block's least and
        greatest values, when already taken.

        What costs a pass over the rows (the norms, the mean and spread) is taken on the
        shard's first :data:`ALL_ROWS` rows and every :data:`SAMPLE`-th after, by row number;
        the zero, saturated and identical rows are counted on all (from the row sums and the
        extremes the scan has anyway).
        """
        if not block.shape[0]:
            return
        first = self.rows
        self.rows += block.shape[0]
        zero = np.flatnonzero(sums == 0)  # (an all-zero row sums to 0; anything else hardly ever)
        if zero.size:
            self.zero_rows += int(np.count_nonzero(~block[zero].any(axis=1)))
        low, high = (float(block.min()), float(block.max())) if extremes is None else extremes
        if nonfinite or max(high, -low) >= FP16_MAX:  # (rare: then each row is looked at)
            finite = np.isfinite(block).all(axis=1)
            self.saturated_rows += int(np.count_nonzero(finite & (np.abs(block) >= FP16_MAX).any(axis=1)))
        sample = _sampled(block, first, rows)
        if nonfinite:
            sample = sample[np.isfinite(sample).all(axis=1)]
        wide = np.float64 if nonfinite or max(high, -low) > _SQUARE_SAFE else np.float32  # (float32 squares
        squares = np.einsum("ij,ij->i", sample, sample, dtype=wide).astype(np.float64)  # overflow past 1.8e19)
        self._keep(sums, np.arange(first, first + block.shape[0]) if rows is None else rows, np.sqrt(squares))
        self.finite_values += sample.size
        self.value_sum += float(sample.sum(axis=1, dtype=wide).sum(dtype=np.float64))
        self.square_sum += float(squares.sum())

    def _keep(self, sums: np.ndarray, where: np.ndarray, norms: np.ndarray) -> None:
        """Keep a block's row sums, their row numbers and its norms; every :data:`_JOIN_AFTER`
        blocks, those kept since the last join as one array each (row numbers in 4 bytes
        where they fit)."""
        for kept, part in ((self._sums, sums), (self._where, where), (self._norms, norms)):
            kept.append(part)
        self._loose += 1
        if self._loose < _JOIN_AFTER:
            return
        self._loose = 0
        for kept in self._sums, self._where, self._norms:
            kept[-_JOIN_AFTER:] = [np.concatenate(kept[-_JOIN_AFTER:])]
        where = self._where[-1]
        if where.size and where.max() < 2**31:
            self._where[-1] = where.astype(np.int32)

    def finish(self, rows_of: Callable[[np.ndarray], np.ndarray] | None = None, dtype: str | None = None,
               model_dtypes: Sequence[str] = ()) -> RankHealth:
        """The rank's health (kept as :attr:`health` too); ``rows_of(row_numbers)`` reads those
        rows (sorted) of the shard, to confirm by their bytes the rows whose sums say they may
        be identical (None: not confirmed, none counted); ``dtype`` the shard's, ``model_dtypes``
        those its checkpoints name."""
        norms = np.concatenate(self._norms) if self._norms else np.zeros(0, np.float32)
        quantiles = tuple(float(q) for q in np.quantile(norms, QUANTILES)) if norms.size else ()
        mean = self.value_sum / self.finite_values if self.finite_values else 0.0
        spread = max(0.0, self.square_sum / self.finite_values - mean * mean) if self.finite_values else 0.0
        identical, example = (0, None)
        if rows_of is not None and self._sums:
            identical, example = _identical(np.concatenate(self._sums), np.concatenate(self._where), rows_of)
        self._norms, self._sums, self._where, self._loose = [], [], [], 0
        self.health = RankHealth(rows=self.rows, norm_quantiles=quantiles, mean=mean, std=spread**0.5,
                          zero_rows=self.zero_rows, saturated_rows=self.saturated_rows, identical_rows=identical,
                          identical_example=example, dtype=dtype, model_dtypes=tuple(sorted(set(model_dtypes))))
        return self.health


def _sampled(block: np.ndarray, first: int, rows: np.ndarray | None) -> np.ndarray:
    """The rows of ``block`` whose norms are taken: those numbered below :data:`ALL_ROWS` in their
    shard and every :data:`SAMPLE`-th after (by row number, so that any blocking, and any order,
    takes the same rows); ``rows``: their numbers, else ``first, first + 1, ...``."""
    if rows is None:
        if first >= ALL_ROWS:
            return block[(-first) % SAMPLE :: SAMPLE]
        rows = np.arange(first, first + block.shape[0])
    picked = (rows < ALL_ROWS) | (rows % SAMPLE == 0)
    return block if picked.all() else block[picked]


def _identical(sums: np.ndarray, where: np.ndarray, rows_of: Callable[[np.ndarray], np.ndarray]
               ) -> tuple[int, tuple[int, int] | None]:
    """How many rows share their bytes with another row (and two of them), from their row sums
    (``where``: each sum's row number in the shard): rows of equal sums are read and compared
    byte for byte."""
    kept = sums != 0  # (an all-zero row sums to 0: zero rows are counted as such, not as identical)
    sums, where = sums[kept], where[kept]
    folded = np.sort((sums ^ (sums >> np.uint64(32))).astype(np.uint32))  # (a quick sort of 32-bit folds: most
    if not (folded[1:] == folded[:-1]).any():  # ranks have no two rows alike, and then no two folds either)
        return 0, None
    order = np.argsort(sums, kind="stable")
    same = sums[order][1:] == sums[order][:-1]
    if not same.any():
        return 0, None
    candidates = np.unique(where[np.concatenate([order[1:][same], order[:-1][same]])])[:_CONFIRM_AT_MOST]
    rows = np.ascontiguousarray(rows_of(candidates), dtype="<f4")  # (sorted row numbers)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    twice = counts > 1
    if not twice.any():
        return 0, None
    group = np.flatnonzero(keys == keys[first[twice][0]])[:2]
    return int(counts[twice].sum()), (int(candidates[group[0]]), int(candidates[group[1]]))


def tally_rows(blocks: Sequence[np.ndarray] | np.ndarray, *, dtype: str | None = None) -> RankHealth:
    """The health of rows given whole (in memory): what a merge would store for them.

    >>> rows = np.ones((4, 3), np.float32)
    >>> rows[1] = 0
    >>> health = tally_rows(rows)
    >>> health.zero_rows, health.identical_rows, round(health.median_norm, 4)
    (1, 3, 1.7321)
    >>> tally_rows(np.zeros((3, 2), np.float32)).identical_rows  # (zero rows are zero rows)
    0
    """
    from .checksums import nonfinite_rows, row_sums

    data = [blocks] if isinstance(blocks, np.ndarray) else list(blocks)
    tally = RankTally()
    for block in data:
        block = np.ascontiguousarray(block, dtype="<f4")
        tally.add(block, row_sums(block), nonfinite_rows(block))
    whole = np.concatenate(data) if data else np.zeros((0, 0), np.float32)
    return tally.finish(lambda rows: np.ascontiguousarray(whole[rows], dtype="<f4"), dtype)


@dataclass(frozen=True)
class HealthFlag:
    """A rank that stands out, and why, in words."""

    rank: int
    kind: str  # "scale", "saturated", "zero", "identical", "dtype"
    words: str

    def __str__(self) -> str:
        return self.words


def _median_and_mad(values: np.ndarray) -> tuple[float, float]:
    center = float(np.median(values))
    return center, float(np.median(np.abs(values - center))) * 1.4826


def judge(ranks: Sequence[tuple[int, RankHealth]], ids_of: Callable[[int, int], str] | None = None
          ) -> list[HealthFlag]:
    """The ranks whose embeddings stand out, each with why, in rank order (module rule).

    ``ids_of(rank, row)`` names a row of a rank's shard by its ID (for identical rows).

    >>> healthy = [(r, tally_rows(np.random.default_rng(r).normal(size=(50, 8)).astype(np.float32)))
    ...            for r in range(8)]
    >>> judge(healthy)
    []
    >>> scaled = tally_rows(0.01 * np.random.default_rng(9).normal(size=(50, 8)).astype(np.float32))
    >>> [flag.kind for flag in judge(healthy + [(8, scaled)])]
    ['scale']
    """
    flags: list[HealthFlag] = []
    medians = {rank: h.median_norm for rank, h in ranks if h.median_norm is not None}
    where = {rank: at for at, rank in enumerate(medians)}
    values = np.array(list(medians.values()), dtype=float)
    dtypes = _Usual([_shard_dtypes(h) for _, h in ranks])
    models = _Usual([h.model_dtypes for _, h in ranks])
    for rank, health in sorted(ranks, key=lambda pair: pair[0]):
        mine = medians.get(rank)
        others = np.delete(values, where[rank]) if mine is not None else values
        flags += _scale_flags(rank, mine, others)
        flags += _row_flags(rank, health, ids_of)
        flags += _dtype_flags(rank, health, dtypes, models)
    return flags


def _shard_dtypes(health: RankHealth) -> tuple[str, ...]:
    """The dtype a rank's shard holds, as the dtypes a rank names (none where not known)."""
    return (health.dtype,) if health.dtype else ()


def _scale_flags(rank: int, mine: float | None, others: np.ndarray) -> list[HealthFlag]:
    """A rank's flag where its median norm (``mine``) strays from the ``others`` ranks' medians."""
    if mine is None or others.size < 3:
        return []
    center, mad = _median_and_mad(others)
    scale = max(mad, _MAD_FLOOR * abs(center), float(np.finfo(np.float32).tiny))
    away = abs(mine - center) / scale
    if away > MADS and abs(mine - center) > _RELATIVE * abs(center):
        return [HealthFlag(rank, "scale", f"rank {rank}: median norm {mine:.3g} vs {center:.3g} for the other "
                           f"{others.size:,} ranks ({away:,.0f} MADs): check its model and precision")]
    return []


def _row_flags(rank: int, health: RankHealth, ids_of: Callable[[int, int], str] | None) -> list[HealthFlag]:
    """A rank's flags for its rows: saturated, all-zero, identical to another's (named by ``ids_of``)."""
    flags = []
    if health.saturated_rows:
        flags.append(HealthFlag(rank, "saturated", f"rank {rank}: {health.saturated_rows:,} rows at the float16 "
                                f"limit (a value of magnitude {FP16_MAX:,.0f} or more): an fp16 overflow? check "
                                "its precision"))
    if health.zero_rows:
        flags.append(HealthFlag(rank, "zero", f"rank {rank}: {health.zero_rows:,} all-zero rows: a batch that "
                                "never ran?"))
    if health.identical_rows:
        example = ""
        if health.identical_example is not None and ids_of is not None:
            a, b = (ids_of(rank, row) for row in health.identical_example)
            example = f", first {a} and {b}"
        flags.append(HealthFlag(rank, "identical", f"rank {rank}: {health.identical_rows:,} rows identical to "
                                f"another row under a different ID{example}: a packing bug?"))
    return flags


def _dtype_flags(rank: int, health: RankHealth, dtypes: _Usual, models: _Usual) -> list[HealthFlag]:
    """A rank's flags for a shard dtype or a model dtype unlike most ranks' (``dtypes``, ``models``)."""
    flags = []
    if odd := dtypes.unusual(_shard_dtypes(health)):
        flags.append(HealthFlag(rank, "dtype", f"rank {rank}: its shard holds {odd}, "
                                f"{dtypes.others(())} other ranks' {dtypes.shown}: check its precision"))
    if odd := models.unusual(health.model_dtypes):
        flags.append(HealthFlag(rank, "dtype", f"rank {rank}: its checkpoints say its model ran in {odd}, "
                                f"{models.others(health.model_dtypes)} other ranks' in {models.shown}: "
                                "check its precision"))
    return flags


class _Usual:
    """The dtype most ranks name (each rank names a few, or none), and which a rank names that
    fewer ranks do."""

    def __init__(self, named: Sequence[tuple[str, ...]]) -> None:
        self.counts = Counter(name for names in named for name in set(names))
        self.usual: str | None = None
        self.count = 0
        if self.counts:
            self.usual, self.count = self.counts.most_common(1)[0]

    def unusual(self, names: Sequence[str]) -> str:
        """Those of ``names`` fewer ranks name than the usual one, as a message shows them
        (a checkpoint's text, cut and quoted where odd), joined (empty: none)."""
        return " and ".join(shown_id(n) for n in sorted(n for n in set(names) if self.counts[n] < self.count))

    @property
    def shown(self) -> str:
        """The usual dtype, as a message shows it."""
        return shown_id(self.usual or "")

    def others(self, names: Sequence[str]) -> str:
        """How many ranks but the one naming ``names`` name the usual dtype, in words."""
        return f"{self.count - (self.usual in names):,}"


def report_flags(report: Mapping[str, Any], ids_of: Callable[[int], str] | None = None) -> list[HealthFlag]:
    """The flags (:func:`judge`) of the ranks a merge report kept the health of; ``ids_of(row)``
    names a row of the merged file by its ID. A shard's rank is the number in its name
    (``shard_<rank>.h5``), else its place in the report.

    >>> report = {"shards": [{"path": f"shard_{r}.h5", "offset": 50 * r, "health": tally_rows(
    ...     np.random.default_rng(r).normal(size=(50, 8)).astype(np.float32)).to_record()} for r in range(8)]}
    >>> report["shards"][3]["health"]["zero_rows"] = 2
    >>> [str(flag) for flag in report_flags(report)]
    ['rank 3: 2 all-zero rows: a batch that never ran?']
    """
    kept = report_healths(report)
    offsets = {rank: offset for rank, (_, offset) in kept.items()}
    ranks = [(rank, health) for rank, (health, _) in kept.items()]

    def named(rank: int, row: int) -> str:
        offset = offsets.get(rank)
        return f"row {row}" if ids_of is None or offset is None else ids_of(offset + row)

    return judge(ranks, named)


def report_healths(report: Mapping[str, Any]) -> dict[int, tuple[RankHealth, int | None]]:
    """The health a merge report kept of each rank, with the rank's first row in the merged file:
    a shard's rank is the number in its name (``shard_<rank>.h5``), else its place in the report.

    >>> report = {"shards": [{"path": "shard_4.h5", "offset": 0,
    ...                       "health": tally_rows(np.ones((2, 2), np.float32)).to_record()}]}
    >>> sorted(report_healths(report)), report_healths(report)[4][0].rows
    ([4], 2)
    """
    from .ranks import rank_of

    kept = {}
    for position, shard in enumerate(report.get("shards", [])):
        if isinstance(shard, dict) and shard.get("health") is not None:
            rank = rank_of(shard["path"])
            kept[position if rank is None else rank] = (RankHealth.from_record(shard["health"]), shard.get("offset"))
    return kept


def read_health(path: str | os.PathLike[str], *, block_rows: int = 4096, model_dtypes: Sequence[str] = ()
                ) -> RankHealth:
    """A shard's health read from the shard itself (its embeddings, ``block_rows`` at a time): the
    same numbers a merge keeps for it (``model_dtypes``: those its checkpoints name).

    >>> from virnucpro_merge.synthetic import write_shard
    >>> rows = np.ones((5, 4), np.float32)
    >>> rows[2] = 0
    >>> read_health(write_shard("shard_0.h5", list("abcde"), rows)).zero_rows
    1
    """
    from .checksums import extremes_of, nonfinite_rows, row_sums
    from .shards import embeddings_of, open_shard, rows_reader

    tally = RankTally()
    with open_shard(path) as handle:
        emb = embeddings_of(handle, path)
        dtype = emb.dtype.name
        for start in range(0, emb.shape[0], block_rows):
            block = np.ascontiguousarray(emb[start : start + block_rows], dtype="<f4")
            extremes = extremes_of(block)
            tally.add(block, row_sums(block), nonfinite_rows(block, extremes), extremes=extremes)
    return tally.finish(rows_reader(path), dtype, model_dtypes)
