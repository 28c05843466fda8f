"""The CSLS radii saved beside the index file, so a restart does not search for them again.

Every track's radius (index.hubness) is one index search per track: 11 s at 100k
tracks on the loaded 2-core VM, minutes at 1M, on every start. The radii are
derived data, like the index: the file holds them with a *signature* of
everything they were computed from, and a load that finds another signature
returns nothing, so the caller computes them afresh. Never a stale radius:

- the analysis version (another model or sampling plan, other embeddings);
- k, the neighbours a radius averages;
- the geometry fit (method, mean, fitted_on: index.geometry);
- the library itself: a SHA-256 of the track ids and of the exact float32 vectors
  the index searched, row by row (0.06 s at 100k, 0.6 s at 1M here), so an added,
  removed or re-analysed track, or the same tracks in another order, is another
  library.

Besides the radii the file keeps how many tracks had changed since every radius
was last computed (the ``STALE_SHARE`` rule of index.hubness), so the rule keeps
counting across restarts instead of a restart resetting it.

Written like the index file: a temp file, fsynced, renamed over the old one, and
closed by a SHA-256 of everything before it, so a kill mid-save leaves the old
file whole and a torn or damaged one is detected and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.geometry import Geometry

MAGIC = b"MUSEGATE-RADII\x00\x01"
FORMAT_VERSION = 1
_DIGEST = 32


@dataclass(frozen=True)
class SavedRadii:
    """Radii for the catalogue rows the signature describes, and the changes they carry."""

    radius: np.ndarray  # float32 [N], catalogue row order
    changes: int  # tracks added, changed or removed since every radius was computed


def radii_path(index_path: str | os.PathLike[str]) -> Path:
    """Beside the index file (``musegate.index.radii``): both are the writer's derived data."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".radii")


def radii_signature(
    ids: np.ndarray, vectors: np.ndarray, geometry: Geometry, version: str, k: int
) -> dict[str, Any]:
    """What radii computed for this library depend on (see the module docstring)."""
    ids = np.ascontiguousarray(ids, dtype="<i8").reshape(-1)
    v = np.ascontiguousarray(vectors, dtype="<f4")
    library = hashlib.sha256()
    library.update(struct.pack("<QQ", len(ids), v.shape[1] if v.ndim == 2 else 0))
    for column in (ids, v):
        if column.size:  # an empty library has no bytes (and memoryview cannot cast it)
            library.update(memoryview(column).cast("B"))
    fit = hashlib.sha256(geometry.method.encode())
    if geometry.mean is not None:
        fit.update(np.ascontiguousarray(geometry.mean, dtype="<f4").tobytes())
    return {
        "version": str(version),
        "k": int(k),
        "geometry": fit.hexdigest(),
        "fitted_on": int(geometry.fitted_on),
        "count": int(len(ids)),
        "library": library.hexdigest(),
    }


def save_radii(
    path: str | os.PathLike[str], radius: np.ndarray, signature: dict[str, Any], changes: int
) -> None:
    """Write atomically (temp file + fsync + rename): a crash mid-write leaves the old file."""
    path = Path(path)
    radius = np.ascontiguousarray(radius, dtype="<f4").reshape(-1)
    if len(radius) != int(signature["count"]):
        raise ValueError(f"{len(radius)} radii for a library of {signature['count']} tracks")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"format": FORMAT_VERSION, "signature": signature,
                         "changes": int(changes)}, sort_keys=True).encode()
    body = b"".join([MAGIC, struct.pack("<I", len(header)), header, radius.tobytes()])
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.write(hashlib.sha256(body).digest())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp file would only take disk space
        raise


def load_radii(
    path: str | os.PathLike[str], signature: dict[str, Any]
) -> tuple[SavedRadii | None, str]:
    """The saved radii when their signature is ``signature``, else None and why not
    (missing, corrupt, or stale: which part of the signature differs). Never raises."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    try:
        header, radius = _parse(data)
    except Exception as exc:  # noqa: BLE001 - any damage at all means "compute them again"
        return None, f"corrupt ({exc})"
    saved = header.get("signature")
    if not isinstance(saved, dict):
        return None, "corrupt (no signature)"
    differs = sorted(key for key in set(saved) | set(signature) if saved.get(key) != signature.get(key))
    if differs:
        return None, f"stale ({', '.join(differs)} changed)"
    if len(radius) != int(signature["count"]):
        return None, "corrupt (radii do not match their count)"
    return SavedRadii(radius, int(header.get("changes", 0))), "loaded"


def _parse(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    if len(data) < len(MAGIC) + 4 + _DIGEST or not data.startswith(MAGIC):
        raise ValueError("not a musegate radii file")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch")
    offset = len(MAGIC)
    (header_len,) = struct.unpack_from("<I", body, offset)
    offset += 4
    header = json.loads(body[offset : offset + header_len])
    offset += header_len
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {header.get('format')} is not {FORMAT_VERSION}")
    if (len(body) - offset) % 4:
        raise ValueError("radii are not whole float32 values")
    radius = np.frombuffer(body, dtype="<f4", offset=offset).astype(np.float32)
    return header, radius
