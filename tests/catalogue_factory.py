"""Synthetic catalogues for the index tests: clustered embeddings with believable metadata.

Real embeddings need audio and the model; the playlist rules only need a
space with structure (clusters), artists to cap, titles to de-duplicate and
tags/tempo/energy to filter on — all generated from a seed so tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.labels import MSD_LABELS
from index.catalogue import Catalogue


@dataclass
class SyntheticLibrary:
    cat: Catalogue
    labels: np.ndarray  # int [N] cluster of each row (copies share their original's cluster)
    centres: np.ndarray  # float32 [K, dim] unit cluster centres
    originals: dict[int, int]  # copy track id -> original track id


def make_library(
    n_clusters: int = 5,
    per_cluster: int = 20,
    dim: int = 200,
    spread: float = 0.5,
    artists_per_cluster: int = 4,
    near_duplicates: int = 0,
    text_duplicates: int = 0,
    seed: int = 0,
    first_id: int = 1,
    cluster_tags: int = 3,
) -> SyntheticLibrary:
    """``n_clusters`` groups of ``per_cluster`` tracks, then optional copies.

    ``spread`` is the noise norm relative to the unit centre (0.5 gives
    within-cluster cosines near 0.8 and across-cluster cosines near 0).
    ``near_duplicates`` copies get an almost identical embedding (cosine > 0.999)
    and a "(Remastered)" title; ``text_duplicates`` copies keep title, artist
    and duration (±1 s) but get a clearly different embedding (cosine ~0.97),
    like another cut of the same song.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n = n_clusters * per_cluster
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    noise = rng.standard_normal((n, dim)) * (spread / np.sqrt(dim))
    vectors = centres[labels] + noise

    tags = rng.uniform(0.0, 0.15, (n, len(MSD_LABELS)))
    tag_of_cluster = [
        rng.choice(len(MSD_LABELS), cluster_tags, replace=False) for _ in range(n_clusters)
    ]
    for k, cols in enumerate(tag_of_cluster):
        rows = labels == k
        tags[np.ix_(rows, cols)] = rng.uniform(0.6, 0.95, (int(rows.sum()), len(cols)))
    tempo = np.array([70.0 + 20.0 * k for k in range(n_clusters)])[labels] + rng.uniform(-5, 5, n)
    energy = np.clip(np.linspace(0.1, 0.9, n_clusters)[labels] + rng.uniform(-0.05, 0.05, n), 0, 1)
    duration = rng.uniform(150, 300, n)
    artists = [f"Artist {k}-{(i % artists_per_cluster)}" for k, i in zip(labels, range(n), strict=True)]
    titles = [f"Song {i}" for i in range(n)]
    albums = [f"Album {k}-{(i % artists_per_cluster)}" for k, i in zip(labels, range(n), strict=True)]
    ids = np.arange(first_id, first_id + n, dtype=np.int64)

    originals: dict[int, int] = {}
    extra_vectors = []
    next_id = first_id + n
    copy_rows = rng.choice(n, near_duplicates + text_duplicates, replace=False) if (
        near_duplicates + text_duplicates
    ) else np.zeros(0, np.int64)
    label_list = list(labels)
    for j, r in enumerate(copy_rows):
        r = int(r)
        near = j < near_duplicates
        if near:
            v = vectors[r] + rng.standard_normal(dim) * (0.01 / np.sqrt(dim))
            title = f"{titles[r]} (Remastered)"
            dur = duration[r] + 0.5
        else:
            offset = rng.standard_normal(dim)
            offset -= (offset @ vectors[r]) / (vectors[r] @ vectors[r]) * vectors[r]
            offset *= 0.25 * np.linalg.norm(vectors[r]) / np.linalg.norm(offset)
            v = vectors[r] + offset
            title = titles[r].upper()
            dur = duration[r] + 1.0
        extra_vectors.append(v)
        titles.append(title)
        artists.append(artists[r])
        albums.append(albums[r] + " (copy)")
        duration = np.append(duration, dur)
        tags = np.vstack([tags, tags[r]])
        tempo = np.append(tempo, tempo[r])
        energy = np.append(energy, energy[r])
        label_list.append(int(labels[r]))
        originals[next_id] = int(ids[r])
        ids = np.append(ids, next_id)
        next_id += 1
    if extra_vectors:
        vectors = np.vstack([vectors, np.array(extra_vectors)])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    total = len(ids)
    cat = Catalogue(
        ids=ids.astype(np.int64),
        vectors=vectors.astype(np.float32),
        tags=tags.astype(np.float32),
        tempo=tempo.astype(np.float32),
        energy=energy.astype(np.float32),
        loudness=rng.uniform(-20, -6, total).astype(np.float32),
        key=rng.integers(0, 12, total).astype(np.int8),
        minor=rng.random(total) < 0.5,
        duration=duration.astype(np.float32),
        titles=titles,
        artists=artists,
        albums=albums,
    )
    return SyntheticLibrary(cat, np.array(label_list), centres.astype(np.float32), originals)


def make_catalogue(**kwargs: object) -> Catalogue:
    """Just the catalogue, for tests that do not care about the ground truth."""
    return make_library(**kwargs).cat  # type: ignore[arg-type]
