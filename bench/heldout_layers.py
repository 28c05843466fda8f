"""The network's pooled layer (before the 200-d dense one) for the held-out tuning split
and the dev corpus, cached per track, and its similarity quality.

    nice -n 10 .venv/bin/python bench/heldout_layers.py [--workers 2]

MSD-musicnn's back end max- and mean-pools the 753 mid-end feature maps over time
(``pool_max``, ``pool_mean``: 1,506 values per patch); the 200-d embedding musegate
stores is one dense layer on them. The bundled ONNX graph keeps those nodes but does
not output them, so this bench adds them as outputs with the ``onnx`` package (the
test extra's; in memory, the model file is not changed) and runs the 32 patches of musegate's sampled plan (the rows
bench/heldout_analyses.py cached) again. The final split is not analysed or scored.

Quality as bench/heldout_levers.py measures it (same-soundtrack p@5 on the tuning
split, p@10 on the dev corpus, leave-one-soundtrack-out within the family).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heldout_analyses import cache_file  # noqa: E402
from heldout_analyses import load as load_analysis  # noqa: E402

CACHE = Path.home() / ".cache" / "musegate" / "heldout-layers"
LAYERS = ("pool_max", "pool_mean", "embedding")

_session = None


def _worker_init() -> None:
    global _session
    import onnx
    import onnxruntime as ort

    from analysis.model import MODEL_PATH

    model = onnx.load(str(MODEL_PATH))
    have = {o.name for o in model.graph.output}
    for name in LAYERS:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    _session = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])


def analyse(path: str, grid: np.ndarray, dest: str) -> str:
    from analysis.decode import load_mono
    from analysis.melspec import patches
    from analysis.sampling import SAMPLE_RATE

    assert _session is not None
    x = patches([load_mono(path, SAMPLE_RATE)])[grid]
    out = {name: [] for name in LAYERS}
    for start in range(0, len(x), 4):
        got = _session.run(list(LAYERS), {"melspec": x[start: start + 4].astype(np.float32)})
        for name, v in zip(LAYERS, got, strict=True):
            out[name].append(v)
    tmp = dest + ".tmp.npz"
    np.savez(tmp, **{k: np.concatenate(v).astype(np.float16 if k != "embedding" else np.float32)
                     for k, v in out.items()})
    os.replace(tmp, dest)
    return path


def layer_file(path: Path) -> Path:
    return CACHE / cache_file(path, "layers1").name


def load_layers(path: Path) -> dict[str, np.ndarray] | None:
    f = layer_file(path)
    if not f.exists():
        return None
    with np.load(f) as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def tracks() -> list[Path]:
    from benchlib import corpus_dir, read_manifest
    from heldout_corpus import out_dir, read_heldout

    held = read_heldout(out_dir())
    return [p for p, _, s in held if s == "tuning"] + [p for p, _ in read_manifest(corpus_dir())]


def analyse_missing(workers: int) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = []
    for p in tracks():
        r = load_analysis(p)
        if r is not None and not layer_file(p).exists():
            todo.append((p, r["samp_grid"]))
    print(f"{len(todo)} tracks to run", flush=True)
    failed = 0
    if todo:
        with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
            futs = {pool.submit(analyse, str(p), g, str(layer_file(p))): p for p, g in todo}
            for i, fut in enumerate(as_completed(futs), 1):
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 - report and go on
                    failed += 1
                    print(f"  failed {futs[fut]}: {exc}", flush=True)
                if i % 20 == 0 or i == len(futs):
                    print(f"  {i}/{len(futs)}", flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if analyse_missing(args.workers):
        return 1
    from heldout_levers import (
        csls,
        dev_set,
        full_track_reference,
        loso,
        measure,
        paired,
        tuning_set,
        unit,
    )

    def layer_set(ps_paths: list[Path]) -> list[dict[str, np.ndarray]]:
        return [load_layers(p) for p in ps_paths]

    from benchlib import corpus_dir, read_manifest
    from heldout_corpus import out_dir, read_heldout

    held = read_heldout(out_dir())
    sets = {"tuning": ([p for p, _, s in held if s == "tuning"], tuning_set(), 5),
            "dev": ([p for p, _ in read_manifest(corpus_dir())], dev_set(), 10)}
    members = {
        "embedding (200-d, shipped), centred + CSLS": lambda L: L["embedding"].mean(0),
        "pool_mean (753), centred + CSLS": lambda L: L["pool_mean"].mean(0),
        "pool_max (753), centred + CSLS": lambda L: L["pool_max"].mean(0),
        "pooled max+mean (1506), centred + CSLS": lambda L: np.concatenate(
            [L["pool_max"].mean(0), L["pool_mean"].mean(0)]),
        "pooled, each half unit, centred + CSLS": lambda L: np.concatenate(
            [unit(L["pool_max"].mean(0)[None])[0], unit(L["pool_mean"].mean(0)[None])[0]]),
    }
    results: dict[str, dict[str, tuple[np.ndarray, dict[str, float]]]] = {}
    for sname, (paths, ps, k) in sets.items():
        layers = layer_set(paths)
        assert all(x is not None for x in layers), "a track's layers are missing"
        check = min(float(unit(L["embedding"].mean(0)[None])[0] @ unit(e.mean(0)[None])[0])
                    for L, e in zip(layers, ps.sampled, strict=True))
        print(f"{sname}: {len(layers)} tracks; embedding re-run vs cache, min cosine {check:.5f}")
        for name, fn in members.items():
            x = np.stack([fn(L) for L in layers])
            v = unit(unit(x) - unit(x).mean(0))
            for kk in (10, 20):
                results.setdefault(f"{name} k={kk}", {})[sname] = measure(
                    csls(v @ v.T, kk), ps.labels, k)
    full_pq, full_m = measure(full_track_reference(sets["tuning"][1]), sets["tuning"][1].labels, 5)
    print("| configuration | tuning p@5 | vs full-track | skew@5 | never top 5 | dev p@10 | "
          "dev skew@10 | dev never top 10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, per in results.items():
        m, dm = per["tuning"][1], per["dev"][1]
        print(f"| {name} | {m['p']:.3f} | {m['p'] / full_m['p'] - 1:+.1%} | {m['skew5']:.2f} | "
              f"{m['never5']:.1%} | {dm['p']:.3f} | {dm['skew10']:.2f} | {dm['never10']:.1%} |")
    labels = sets["tuning"][1].labels
    pq = np.stack([per["tuning"][0] for per in results.values()])
    lo, picks, got = loso(pq, labels)
    names = list(results)
    print(f"- LOSO p@5 over these {len(names)}: {lo:.3f} ({lo / full_m['p'] - 1:+.1%} over "
          f"full-track {full_m['p']:.3f}; {paired(got, full_pq, labels)}); chosen: "
          + "; ".join(f"{names[i]} ×{n}" for i, n in sorted(picks.items(), key=lambda x: -x[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
