"""Aggregating npz weights (state_dict name -> array): FedAvg and robust alternatives.

``fedavg``: the mean weighted by each site's samples. ``median``: the coordinate-wise
median. ``trimmed-mean``: per coordinate, the mean after dropping the ``trim`` fraction
of largest and smallest values (at least one each side when there are three results or
more, and always leaving one). The robust two ignore sample counts, so a site cannot
steer them by inflating its own, and one outlier among three or more moves them at most
to the range of the honest values.

numpy only: the coordinator aggregates without torch. Archives are read with
``allow_pickle=False``, so a pickle payload from the network is refused, never run.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "AggregationError",
    "WeightsFormatError",
    "aggregate",
    "dump_npz",
    "fedavg",
    "load_npz",
    "trim_count",
]

Aggregate = Literal["fedavg", "median", "trimmed-mean"]
AGGREGATES: tuple[str, ...] = Aggregate.__args__  # type: ignore[attr-defined]


class WeightsFormatError(ValueError):
    """Bytes that are not a pickle-free npz archive of numeric arrays."""


class AggregationError(ValueError):
    """Results that cannot be averaged: none, zero samples, or mismatched arrays."""


def load_npz(raw: bytes) -> dict[str, np.ndarray]:
    """Arrays of an npz archive; raise WeightsFormatError for pickles and anything else."""
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise WeightsFormatError(f"weights are not a pickle-free npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WeightsFormatError("weights are a bare .npy array, not an npz archive")
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise WeightsFormatError(f"weights archive unreadable: {exc}") from exc
    for name, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise WeightsFormatError(f"array {name!r} has non-numeric dtype {arr.dtype}")
    return arrays


def dump_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    # ascontiguousarray turns a 0-d array into shape (1,): keep each array's own shape.
    np.savez(buf, **{k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()})
    return buf.getvalue()


def fedavg(results: Sequence[tuple[bytes, int]]) -> bytes:
    """The sample-weighted mean of ``(npz weights, n_samples)`` results, as npz bytes.

    Every result must hold the same array names, shapes and dtypes. Means are computed in
    float64 and cast back (integer arrays are rounded).
    """
    if not results:
        raise AggregationError("no results to aggregate")
    return dump_npz(aggregate("fedavg", [(load_npz(raw), n) for raw, n in results]))


def trim_count(n: int, fraction: float) -> int:
    """How many values a trimmed mean drops at each end of ``n`` (see the module doc)."""
    k = math.ceil(fraction * n) if fraction > 0 else 0
    return min(k, (n - 1) // 2)


def aggregate(
    method: str,
    models: Sequence[tuple[Mapping[str, np.ndarray], int]],
    trim: float = 0.2,
) -> dict[str, np.ndarray]:
    """Aggregate ``(arrays, n_samples)`` results with ``method`` (one of AGGREGATES)."""
    if method not in AGGREGATES:
        raise AggregationError(f"unknown aggregate {method!r}: one of {', '.join(AGGREGATES)}")
    if not models:
        raise AggregationError("no results to aggregate")
    if any(n < 0 for _, n in models):
        raise AggregationError("n_samples must not be negative")
    total = sum(int(n) for _, n in models)
    if method == "fedavg" and total <= 0:
        raise AggregationError("results carry zero samples in total")
    ref = models[0][0]
    for i, (arrays, _) in enumerate(models[1:], start=1):
        if set(arrays) != set(ref):
            diff = sorted(set(arrays) ^ set(ref))
            raise AggregationError(f"result {i} has different arrays than result 0: {diff}")
        for name, arr in arrays.items():
            if arr.shape != ref[name].shape or arr.dtype != ref[name].dtype:
                raise AggregationError(
                    f"result {i} array {name!r} is {arr.shape} {arr.dtype}, "
                    f"result 0 has {ref[name].shape} {ref[name].dtype}"
                )
    k = trim_count(len(models), trim) if method == "trimmed-mean" else 0
    out = {}
    for name, first in ref.items():
        if method == "fedavg":
            acc = np.zeros(first.shape, np.float64)
            for arrays, n in models:
                acc += arrays[name].astype(np.float64) * (int(n) / total)
        else:
            stack = np.stack([arrays[name].astype(np.float64) for arrays, _ in models])
            if method == "median":
                acc = np.median(stack, axis=0)
            else:
                stack.sort(axis=0)
                acc = stack[k : len(models) - k].mean(axis=0)
        out[name] = (np.rint(acc) if first.dtype.kind in "biu" else acc).astype(first.dtype)
    return out
