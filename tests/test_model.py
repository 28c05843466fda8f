"""The bundled ONNX musicnn must reproduce the TensorFlow original and refuse tampered files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from analysis.labels import MSD_LABELS
from analysis.model import (
    MODEL_PATH,
    ModelChecksumError,
    MusicnnModel,
    expected_sha256,
    select_providers,
)

FIXTURE = Path(__file__).parent / "fixtures" / "musicnn_reference.npz"
TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> MusicnnModel:
    return MusicnnModel(threads=1, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def test_parity_with_tensorflow(model: MusicnnModel, reference: dict[str, np.ndarray]) -> None:
    # batch_size=2 also exercises the split over several session runs.
    tags, emb = model.run(reference["melspec"], batch_size=2)
    assert tags.dtype == np.float32 and emb.dtype == np.float32
    assert tags.shape == reference["tags"].shape == (len(reference["melspec"]), len(MSD_LABELS))
    assert emb.shape == reference["embedding"].shape == (len(reference["melspec"]), 200)
    np.testing.assert_allclose(tags, reference["tags"], rtol=0, atol=TOL)
    np.testing.assert_allclose(emb, reference["embedding"], rtol=0, atol=TOL)


def test_tags_are_probabilities(model: MusicnnModel, reference: dict[str, np.ndarray]) -> None:
    tags, _ = model.run(reference["melspec"])
    assert np.all((tags >= 0) & (tags <= 1))


def test_metadata_and_version(model: MusicnnModel) -> None:
    assert model.sha256 == expected_sha256()
    assert model.version == f"msd-musicnn-onnx1-{model.sha256[:8]}"
    assert model.providers == ["CPUExecutionProvider"]
    meta = model._session.get_modelmeta().custom_metadata_map
    assert tuple(meta["labels"].split(",")) == MSD_LABELS


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / MODEL_PATH.name
    shutil.copyfile(MODEL_PATH, bad)
    shutil.copyfile(
        MODEL_PATH.with_name(MODEL_PATH.name + ".sha256"), bad.with_name(bad.name + ".sha256")
    )
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelChecksumError) as err:
        MusicnnModel(bad)
    msg = str(err.value)
    assert str(bad) in msg and expected_sha256() in msg


def test_select_providers_prefers_cuda() -> None:
    assert select_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers([]) == ["CPUExecutionProvider"]
    assert select_providers()[-1] == "CPUExecutionProvider"


def test_empty_batch(model: MusicnnModel) -> None:
    tags, emb = model.run(np.zeros((0, 187, 96), dtype=np.float32))
    assert tags.shape == (0, 50) and emb.shape == (0, 200)
    assert tags.dtype == np.float32 and emb.dtype == np.float32


@pytest.mark.parametrize("shape", [(187, 96), (1, 96, 187), (2, 186, 96), (1, 187, 96, 1)])
def test_bad_shape_raises(model: MusicnnModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, 187, 96\)"):
        model.run(np.zeros(shape, dtype=np.float32))


def test_shipped_model_has_no_dead_filters() -> None:
    # A re-export that forgot the pruning would still pass parity but run ~6x slower.
    import onnx
    from onnx import numpy_helper

    from analysis.export_musicnn import DEAD_FILTER_RATIO

    graph = onnx.load(str(MODEL_PATH)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    front = [n for n in graph.node if n.op_type == "Conv" and weights[n.input[1]].shape[1] == 1]
    assert len(front) == 5
    channels = 0
    for node in front:
        w = weights[node.input[1]]
        norms = np.linalg.norm(w.reshape(len(w), -1), axis=1)
        assert norms.min() > DEAD_FILTER_RATIO * norms.max(), node.name
        channels += len(w)
    assert channels == 64


def test_pruned_model_matches_unpruned_on_music_like_input(
    model: MusicnnModel, reference: dict[str, np.ndarray]
) -> None:
    unpruned = MusicnnModel(Path(__file__).parents[1] / "bench" / "models" / "msd_musicnn_unpruned.onnx")
    # The fixture's synthetic song plus quiet and loud extremes (silence, clipping-level mel).
    x = np.concatenate([
        reference["melspec"],
        np.zeros((1, 187, 96), np.float32),
        np.full((1, 187, 96), 6.0, np.float32),
    ])
    for got, want in zip(model.run(x), unpruned.run(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_batch_size_follows_the_provider(model: MusicnnModel, reference: dict[str, np.ndarray]) -> None:
    from analysis.model import DEFAULT_BATCH

    assert model.batch_size == DEFAULT_BATCH  # CPU here; a CUDA session would batch more
    tags, emb = model.run(reference["melspec"])  # default batching gives the same outputs
    want_tags, want_emb = model.run(reference["melspec"], batch_size=len(reference["melspec"]))
    np.testing.assert_allclose(emb, want_emb, rtol=0, atol=1e-5)
    np.testing.assert_allclose(tags, want_tags, rtol=0, atol=1e-6)
