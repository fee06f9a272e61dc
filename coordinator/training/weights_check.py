"""Vetting a site's npz weights before anything loads them: the npy headers first.

A result comes from a site the coordinator does not control. Its archive is checked in
three steps, each bounding what the next one may cost:

1. :func:`read_signature` reads the zip's central directory and each member's npy header
   (a few hundred bytes decompressed per member): names, shapes and dtypes. Each member's
   ``file_size`` must be exactly its header plus ``prod(shape) * itemsize``, and the sum is
   bounded, so no later read decompresses more than the shapes promise (zipfile stops at
   ``file_size``: a zip bomb cannot expand past it).
2. :func:`check_weights` compares each header with the expected array (the round's
   global model) as it is read, before any array data is.
3. It then loads the arrays (``allow_pickle=False``) and rejects non-finite values.

Exceptions::

    WeightsRejected(ValueError)   the archive is refused; the message says why
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

import numpy as np

__all__ = [
    "MAX_MEMBERS",
    "ArraySpec",
    "WeightsRejected",
    "check_weights",
    "describe_mismatch",
    "read_signature",
]

MAX_MEMBERS = 4096
"""The most arrays one archive may hold (a model's state_dict has tens to hundreds)."""

_MAX_HEADER = 10_000  # numpy's own default bound on an npy header
_NUMERIC = "biuf"


class WeightsRejected(ValueError):
    """Weights refused before (or while) loading them; the message is the reason."""


@dataclass(frozen=True)
class ArraySpec:
    """One array as its npy header declares it."""

    shape: tuple[int, ...]
    dtype: str  # numpy's dtype.str, e.g. "<f4"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        return f"{self.shape} {np.dtype(self.dtype)}"


Signature = dict[str, ArraySpec]


def _open_zip(raw: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise WeightsRejected(f"weights are not an npz archive: {exc}") from None


def _read_header(f: IO[bytes], name: str) -> tuple[ArraySpec, bool, int]:
    """(spec, fortran_order, header length) of one member; nothing past the header is read."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_MAX_HEADER)  # type: ignore[call-arg]
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_MAX_HEADER)  # type: ignore[call-arg]
        else:
            raise ValueError(f"npy format version {version} unsupported")
        header_len = f.tell()
    except (ValueError, OSError, EOFError, TypeError, SyntaxError, zipfile.BadZipFile) as exc:
        raise WeightsRejected(f"array {name!r}: unreadable npy header: {exc}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in _NUMERIC:
        raise WeightsRejected(f"array {name!r} has non-numeric dtype {dtype}")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise WeightsRejected(f"array {name!r} has an invalid shape {shape}")
    return ArraySpec(tuple(shape), dtype.str), bool(fortran), header_len


def read_signature(raw: bytes, max_bytes: int) -> Signature:
    """Names, shapes and dtypes of an npz archive from its npy headers alone.

    Raises WeightsRejected for anything but numeric npy members whose stored sizes match
    their headers, or when the arrays would take more than ``max_bytes`` in memory.
    """
    with _open_zip(raw) as zf:
        return _signature(zf, max_bytes, None)[0]


def _mismatch(diff: str) -> WeightsRejected:
    return WeightsRejected(f"weights do not match the round's model: {diff}")


def _signature(
    zf: zipfile.ZipFile, max_bytes: int, expected: Mapping[str, ArraySpec] | None
) -> tuple[Signature, dict[str, bool]]:
    infos = zf.infolist()
    if not infos:
        raise WeightsRejected("weights archive holds no arrays")
    if len(infos) > MAX_MEMBERS:
        raise WeightsRejected(f"weights archive holds {len(infos)} members (max {MAX_MEMBERS})")
    sig: Signature = {}
    fortran: dict[str, bool] = {}
    total = 0
    for info in infos:
        if not info.filename.endswith(".npy") or len(info.filename) <= 4:
            raise WeightsRejected(f"weights archive member {info.filename!r} is not an .npy")
        name = info.filename[:-4]
        if name in sig:
            raise WeightsRejected(f"weights archive holds array {name!r} twice")
        if info.flag_bits & 0x1:
            raise WeightsRejected(f"array {name!r} is encrypted")
        try:
            with zf.open(info) as f:
                spec, fortran[name], header_len = _read_header(f, name)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
            raise WeightsRejected(f"array {name!r}: unreadable zip member: {exc}") from None
        if expected is not None and expected.get(name) != spec:
            want = expected.get(name)
            raise _mismatch(
                f"unexpected array {name!r} {spec}"
                if want is None
                else describe_mismatch({name: spec}, {name: want})
            )
        nbytes = spec.nbytes
        total += nbytes
        if total > max_bytes:
            raise WeightsRejected(
                f"weights declare more than {max_bytes} bytes of arrays "
                f"(array {name!r} is {spec}, {nbytes} bytes)"
            )
        if info.file_size != header_len + nbytes:
            raise WeightsRejected(
                f"array {name!r}: stored size {info.file_size} bytes does not match its "
                f"header ({spec}: {header_len + nbytes} bytes)"
            )
        sig[name] = spec
    if expected is not None and set(sig) != set(expected):
        raise _mismatch(describe_mismatch(sig, expected))
    return sig, fortran


def describe_mismatch(got: Mapping[str, ArraySpec], want: Mapping[str, ArraySpec]) -> str:
    """What differs between two signatures ('' when they are equal), shortest first."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    parts = []
    if missing:
        parts.append(f"missing arrays {missing[:5]}")
    if extra:
        parts.append(f"unexpected arrays {extra[:5]}")
    wrong = [n for n in sorted(set(got) & set(want)) if got[n] != want[n]]
    parts += [f"array {n!r} is {got[n]}, expected {want[n]}" for n in wrong[:3]]
    if len(wrong) > 3:
        parts.append(f"and {len(wrong) - 3} more arrays differ")
    return "; ".join(parts)


def check_weights(
    raw: bytes, expected: Mapping[str, ArraySpec] | None, max_bytes: int
) -> tuple[Signature, dict[str, np.ndarray]]:
    """Vet and load a result's weights; raise WeightsRejected with the reason if bad.

    ``expected`` (the round's global model) fixes names, shapes and dtypes; without it
    (a first round, where sites build the initial model) only ``max_bytes`` bounds them.
    """
    with _open_zip(raw) as zf:
        sig, fortran = _signature(zf, max_bytes, expected)
        arrays = {}
        for name, spec in sig.items():
            arrays[name] = _load(zf, name, spec, fortran[name])
    return sig, arrays


def _load(zf: zipfile.ZipFile, name: str, spec: ArraySpec, fortran: bool) -> np.ndarray:
    try:
        with zf.open(name + ".npy") as f:
            _read_header(f, name)
            data = f.read(spec.nbytes)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, MemoryError) as exc:
        raise WeightsRejected(f"array {name!r}: unreadable data: {exc}") from None
    if len(data) != spec.nbytes:
        raise WeightsRejected(f"array {name!r}: {len(data)} of {spec.nbytes} data bytes")
    arr = np.frombuffer(data, dtype=np.dtype(spec.dtype))
    arr = arr.reshape(spec.shape[::-1]).T if fortran else arr.reshape(spec.shape)
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise WeightsRejected(
                f"array {name!r} holds {bad} non-finite value(s) (NaN or infinity)"
            )
    return arr
