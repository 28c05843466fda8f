"""The CSLS radii file (index.radii_file): a round trip, and every way a file is not for
this library — another analysis version, k, geometry fit, track set, order or vector —
or is damaged, is refused with the reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index.geometry import fit_geometry
from index.radii_file import load_radii, radii_path, radii_signature, save_radii

VERSION = "msd-musicnn-test+s32x1+f2"


def library(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 200)).astype(np.float32)
    return np.arange(1, n + 1, dtype=np.int64) * 3, v / np.linalg.norm(v, axis=1, keepdims=True)


def test_radii_come_back_with_their_change_count(tmp_path: Path) -> None:
    ids, v = library()
    geometry = fit_geometry(v)
    sig = radii_signature(ids, geometry.apply(v), geometry, VERSION, 10)
    radius = np.linspace(0.1, 0.9, len(ids)).astype(np.float32)
    path = radii_path(tmp_path / "musegate.index")
    assert path == tmp_path / "musegate.index.radii"
    save_radii(path, radius, sig, changes=4)
    saved, reason = load_radii(path, sig)
    assert reason == "loaded" and saved is not None
    assert np.array_equal(saved.radius, radius) and saved.radius.dtype == np.float32
    assert saved.changes == 4
    assert not path.with_name(path.name + ".tmp").exists()


def test_a_signature_of_another_library_is_refused(tmp_path: Path) -> None:
    ids, v = library()
    geometry = fit_geometry(v)
    vectors = geometry.apply(v)
    sig = radii_signature(ids, vectors, geometry, VERSION, 10)
    path = tmp_path / "r"
    save_radii(path, np.zeros(len(ids), np.float32), sig, 0)

    other_fit = fit_geometry(v[:40])
    moved = vectors.copy()
    moved[7, 3] = np.nextafter(moved[7, 3], np.float32(2))  # one float32 step in one track
    order = np.r_[1, 0, 2:len(ids)]
    renumbered = ids.copy()
    renumbered[-1] += 1
    cases = {
        "version": radii_signature(ids, vectors, geometry, VERSION + "x", 10),
        "k": radii_signature(ids, vectors, geometry, VERSION, 11),
        "geometry": radii_signature(ids, vectors, replace(geometry, mean=other_fit.mean),
                                    VERSION, 10),
        "fitted_on": radii_signature(ids, vectors, replace(geometry, fitted_on=49), VERSION, 10),
        "library": radii_signature(ids, moved, geometry, VERSION, 10),
    }
    for part, other in cases.items():
        saved, reason = load_radii(path, other)
        assert saved is None and reason == f"stale ({part} changed)", (part, reason)
    for other in (radii_signature(ids[order], vectors[order], geometry, VERSION, 10),
                  radii_signature(renumbered, vectors, geometry, VERSION, 10)):
        saved, reason = load_radii(path, other)
        assert saved is None and reason == "stale (library changed)"
    saved, reason = load_radii(path, radii_signature(ids[:-1], vectors[:-1], geometry, VERSION, 10))
    assert saved is None and reason == "stale (count, library changed)"
    raw = fit_geometry(v, "raw")
    saved, reason = load_radii(path, radii_signature(ids, raw.apply(v), raw, VERSION, 10))
    assert saved is None and reason.startswith("stale (") and "geometry" in reason


def test_damaged_or_missing_files_are_refused(tmp_path: Path) -> None:
    ids, v = library()
    sig = radii_signature(ids, v, fit_geometry(v, "raw"), VERSION, 10)
    path = tmp_path / "r"
    assert load_radii(path, sig) == (None, "missing")
    save_radii(path, np.ones(len(ids), np.float32), sig, 0)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    saved, reason = load_radii(path, sig)
    assert saved is None and reason.startswith("corrupt (checksum")
    flipped = bytearray(whole)
    flipped[-40] ^= 1
    path.write_bytes(bytes(flipped))
    assert load_radii(path, sig)[1] == "corrupt (checksum mismatch)"
    path.write_bytes(b"something else entirely, long enough to have a digest at its end")
    assert load_radii(path, sig)[1] == "corrupt (not a musegate radii file)"
    path.write_bytes(whole)
    assert load_radii(path, sig)[1] == "loaded"


def test_radii_of_another_length_are_not_saved(tmp_path: Path) -> None:
    ids, v = library()
    sig = radii_signature(ids, v, fit_geometry(v, "raw"), VERSION, 10)
    with pytest.raises(ValueError, match="49 radii"):
        save_radii(tmp_path / "r", np.zeros(49, np.float32), sig, 0)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.tmp").exists()


def test_an_empty_library_has_radii_too(tmp_path: Path) -> None:
    """A server started before anything was analysed saves (no) radii like any other."""
    ids, v = np.zeros(0, np.int64), np.zeros((0, 200), np.float32)
    sig = radii_signature(ids, v, fit_geometry(v), VERSION, 10)
    assert sig != radii_signature(*library(1), fit_geometry(v), VERSION, 10)
    save_radii(tmp_path / "r", np.zeros(0, np.float32), sig, 0)
    saved, reason = load_radii(tmp_path / "r", sig)
    assert reason == "loaded" and saved is not None and saved.radius.shape == (0,)
