"""Model weights as numpy ``.npz`` bytes (state_dict name -> array); never pickle.

Imported only by training code (numpy, and torch for the state_dict helpers, lazily).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["WeightsFormatError", "dump_npz", "load_npz", "npz_to_state_dict", "state_dict_to_npz"]


class WeightsFormatError(ValueError):
    """The bytes are not a pickle-free npz archive of numeric arrays."""


def dump_npz(arrays: Mapping[str, Any]) -> bytes:
    """Serialise named arrays; object arrays are refused (they would need pickle)."""
    out = {}
    for name, value in arrays.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.hasobject:
            raise WeightsFormatError(f"array {name!r} has dtype object")
        out[name] = arr
    buf = io.BytesIO()
    np.savez(buf, **out)
    return buf.getvalue()


def load_npz(raw: bytes) -> dict[str, np.ndarray]:
    """Read npz bytes with ``allow_pickle=False``; raise WeightsFormatError on anything else."""
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise WeightsFormatError("not an npz archive (a single .npy array)")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, WeightsFormatError):
            raise
        raise WeightsFormatError(f"not a pickle-free npz archive: {exc}") from exc


def state_dict_to_npz(state_dict: Mapping[str, Any]) -> bytes:
    """A torch state_dict as npz bytes (tensors copied to CPU numpy)."""
    return dump_npz({k: v.detach().cpu().numpy() for k, v in state_dict.items()})


def npz_to_state_dict(raw: bytes) -> dict[str, Any]:
    """npz bytes as a torch state_dict (``torch.from_numpy``, no unpickling)."""
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in load_npz(raw).items()}
