"""The whole library on a plane: a deterministic 2-D projection of the embeddings.

PCA to two components — the top two eigenvectors of the centred vectors'
covariance (a D×D symmetric eigenproblem, exact and deterministic, so the
same vectors always give the same picture; ~20× faster than a full SVD of the
N×D matrix at 20,000 songs) — each axis's sign fixed so that the point
furthest along it is positive, then both axes scaled together into [-1, 1] so distances keep
their proportions. The music map in the web UI draws these points; the result
depends only on the vectors, so it is computed once per index version.
"""

from __future__ import annotations

import numpy as np


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, 2] coordinates in [-1, 1] for float vectors [N, D] (N may be 0 or 1)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 3 or vectors.shape[1] < 2:
        out = np.zeros((n, 2), np.float64)
        if n == 2:
            out[:, 0] = [-1.0, 1.0]
        return out.astype(np.float32)
    centred = vectors - vectors.mean(axis=0)
    _values, axes = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    coords = centred @ axes[:, ::-1][:, :2]
    for axis in range(2):
        col = coords[:, axis]
        if col[np.argmax(np.abs(col))] < 0:
            coords[:, axis] = -col
    coords -= coords.mean(axis=0)
    scale = float(np.abs(coords).max())
    if scale > 0:
        coords /= scale
    return coords.astype(np.float32)

