"""Per-track analyses for the held-out quality bench, cached one file per track.

    nice -n 10 .venv/bin/python bench/heldout_analyses.py [--workers 2]

Every track of the held-out set (bench/heldout_corpus.py) and of the dev corpus is
run through the network once, and that run gives both analyses (the product's own
decoder, mel patches and model):

* ``full``: every patch of the whole track (AudioMuse-AI's way: all patches, the
  mean is its embedding); the per-patch embeddings and tag scores are kept, so any
  patch plan (more patches, other spreads) and any pooling (mean+std, …) can be
  measured from them without running the network again;
* ``sampled``: musegate's default plan, whose patches lie on the same grid (its rows
  of the full batch), with the scalar features (tempo, key, energy, loudness)
  computed from its excerpts as the pipeline does. Every tenth track also goes
  through the analyzer's own pipeline, to check that this is what the product stores.

Analysis is most of the cost (a 4-minute track is ~80 patches at ~40 ms each), so
each track's result is written to ~/.cache/musegate/heldout-analyses/ as soon as it
is done: an interrupted run loses at most the tracks in flight and a rerun only
analyses what is missing or changed (the key holds the file's size, mtime and the
analysis version).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE = Path.home() / ".cache" / "musegate" / "heldout-analyses"
KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

_model = None


class _Recording:
    """The model, keeping every batch's per-patch outputs (analyse_file keeps only means)."""

    def __init__(self, model) -> None:  # noqa: ANN001 - a MusicnnModel
        self.model = model
        self.version = model.version
        self.tags: list[np.ndarray] = []
        self.emb: list[np.ndarray] = []

    def run(self, batch: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        tags, emb = self.model.run(batch, batch_size)
        self.tags.append(tags)
        self.emb.append(emb)
        return tags, emb


def _worker_init() -> None:
    global _model
    from analysis.model import MusicnnModel

    _model = MusicnnModel(threads=1)


@functools.lru_cache(maxsize=1)
def version() -> str:
    from analysis.model import model_version
    from analysis.pipeline import analysis_version
    from analysis.sampling import DEFAULT, FULL

    mv = model_version()
    return f"{analysis_version(mv, DEFAULT)}|{analysis_version(mv, FULL)}|perpatch2"


def cache_file(path: Path, ver: str) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ver}"
    return CACHE / (hashlib.sha1(key.encode()).hexdigest() + ".npz")


def analyse(path: str, dest: str, check: bool) -> str:
    """Every patch of the whole track, and musegate's sampled plan read off the same grid,
    into ``dest`` (written atomically).

    The sampled plan's excerpts start on the full plan's patch grid (analysis/sampling.py),
    so its patches are rows of the full-track batch: the network runs once per track.
    ``check`` also runs the analyzer's own pipeline (analyse_file) and keeps its mean, so
    the bench can show that the rows taken here give the embedding the product stores.
    """
    from analysis import features
    from analysis.decode import load_mono, probe
    from analysis.melspec import patches
    from analysis.pipeline import FEATURE_EXCERPTS, analyse_file
    from analysis.sampling import DEFAULT, PATCH_SECONDS, SAMPLE_RATE, excerpt_spans

    assert _model is not None
    y = load_mono(path, SAMPLE_RATE)
    tags, emb = _model.run(patches([y]))
    duration = probe(path).duration
    spans = excerpt_spans(duration, DEFAULT)
    if spans:
        grid = np.clip([round(s / PATCH_SECONDS) for s, _ in spans], 0, len(emb) - 1)
        excerpts = [y[int(s * SAMPLE_RATE): int((s + n) * SAMPLE_RATE)] for s, n in spans]
    else:
        grid = np.arange(len(emb))
        excerpts = [y]
    step = max(1, len(excerpts) // FEATURE_EXCERPTS)
    heard = excerpts[step // 2 :: step] if len(excerpts) > FEATURE_EXCERPTS else excerpts
    key, scale, strength = features.estimate_key(heard, SAMPLE_RATE)
    env = features.onset_envelopes(heard, SAMPLE_RATE)
    feats = np.array([features.tempo_bpm(heard, SAMPLE_RATE, env),
                      features.energy(heard, SAMPLE_RATE, env), features.loudness_db(heard),
                      KEYS.index(key) if key in KEYS else -1,
                      1.0 if scale == "minor" else 0.0, strength, duration], np.float32)
    extra = {}
    if check:
        extra["pipeline_mean"] = analyse_file(path, _model, DEFAULT).embedding
    tmp = dest + ".tmp.npz"
    np.savez(tmp, full_emb=emb, full_tags=tags, samp_emb=emb[grid], samp_tags=tags[grid],
             samp_grid=np.asarray(grid, np.int32), feats=feats, **extra)
    os.replace(tmp, dest)
    return path


def all_tracks() -> list[Path]:
    """Held-out tracks first (tuning, then final), then the dev corpus."""
    from benchlib import corpus_dir, read_manifest
    from heldout_corpus import out_dir, read_heldout

    held = read_heldout(out_dir())
    order = [p for p, _, s in held if s == "tuning"] + [p for p, _, s in held if s == "final"]
    order += [p for p, _ in read_manifest(corpus_dir())]
    return order


def load(path: Path, ver: str | None = None) -> dict[str, np.ndarray] | None:
    f = cache_file(path, ver or version())
    if not f.exists():
        return None
    with np.load(f) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ver = version()
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = [(p, cache_file(p, ver)) for p in all_tracks()]
    todo = [(p, f) for p, f in todo if not f.exists()]
    print(f"{len(todo)} tracks to analyse", flush=True)
    if not todo:
        return 0
    failed = 0
    with ProcessPoolExecutor(args.workers, initializer=_worker_init) as pool:
        futs = {pool.submit(analyse, str(p), str(f), i % 10 == 0): p
                for i, (p, f) in enumerate(todo)}
        for i, fut in enumerate(as_completed(futs), 1):
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - report and go on with the rest
                failed += 1
                print(f"  failed {futs[fut]}: {exc}", flush=True)
            if i % 10 == 0 or i == len(futs):
                print(f"  {i}/{len(futs)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
