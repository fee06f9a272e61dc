"""FedAvg over npz weights (state_dict name -> array), weighted by each site's samples.

numpy only: the coordinator aggregates without torch. Archives are read with
``allow_pickle=False``, so a pickle payload from the network is refused, never run.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["AggregationError", "WeightsFormatError", "dump_npz", "fedavg", "load_npz"]


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
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def fedavg(results: Sequence[tuple[bytes, int]]) -> bytes:
    """The sample-weighted mean of ``(npz weights, n_samples)`` results, as npz bytes.

    Every result must hold the same array names, shapes and dtypes. Means are computed in
    float64 and cast back (integer arrays are rounded).
    """
    if not results:
        raise AggregationError("no results to aggregate")
    models = [(load_npz(raw), int(n)) for raw, n in results]
    if any(n < 0 for _, n in models):
        raise AggregationError("n_samples must not be negative")
    total = sum(n for _, n in models)
    if total <= 0:
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
    out = {}
    for name, first in ref.items():
        acc = np.zeros(first.shape, np.float64)
        for arrays, n in models:
            acc += arrays[name].astype(np.float64) * (n / total)
        out[name] = (np.rint(acc) if first.dtype.kind in "biu" else acc).astype(first.dtype)
    return dump_npz(out)
