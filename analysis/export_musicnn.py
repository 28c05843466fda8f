"""Re-export musicnn's MSD_musicnn checkpoint as a hand-built, CPU-friendly ONNX graph.

Dev-only: needs TensorFlow, tf-keras, onnx, onnxruntime and ``musicnn==0.1.0``
(installed with ``--no-deps``; the wheel carries the checkpoint). The runtime
never imports this module. Run it from such an environment with the repository
on ``PYTHONPATH``::

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/main /tmp/tfenv/bin/python -m analysis.export_musicnn

Why build the graph by hand instead of using tf2onnx: the generic conversion keeps
TensorFlow's NHWC layout (Transposes around every conv), the stand-alone batch
norms and the midend's "conv over the full width, then transpose" trick, and runs
2.5-6x slower on one CPU thread. Here every batch norm is folded into a linear
layer (exactly, including edge padding and negative scales) and the midend is a
plain 1-D convolution over the channel axis.

Then the dead filters go: 497 of the 561 front-end filters have (numerically)
zero weights, so each outputs a constant. Those constants are folded into the
mid-end convolution (position by position, because of its zero padding) and into
the dense layer's bias, which leaves 64 front-end channels and about a tenth of
the arithmetic, with the same outputs. The unpruned graph is written too, for
the benchmark's AudioMuse-AI-style reference.

Besides the model it writes the checksum, the licence notice and the parity
fixture used by ``tests/test_model.py``, and it checks ONNX Runtime against
TensorFlow before returning.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow running as a plain file
    sys.path.insert(0, str(REPO))

from analysis.labels import MSD_LABELS  # noqa: E402

MODEL_NAME = "MSD_musicnn"
N_FRAMES = 187
N_MELS = 96
SR = 16000
N_FFT = 512
HOP = 256
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default
OPSET = 17
TOL = 1e-4
# Filters weaker than this fraction of their layer's strongest are dead (see live_filters).
DEAD_FILTER_RATIO = 1e-8

OUT_MODEL = REPO / "analysis" / "models" / "msd_musicnn.onnx"
# The same network without pruning: what AudioMuse-AI computes, for bench/analysis.py.
OUT_UNPRUNED = REPO / "bench" / "models" / "msd_musicnn_unpruned.onnx"
OUT_LICENSE = OUT_MODEL.with_name("LICENSE-msd_musicnn.txt")
OUT_FIXTURE = REPO / "tests" / "fixtures" / "musicnn_reference.npz"

LICENSE_TEXT = """\
MSD_musicnn model weights -- licence notice

analysis/models/msd_musicnn.onnx is a format conversion (TensorFlow checkpoint ->
ONNX, batch normalisation folded into adjacent layers, front-end filters whose
weights are zero replaced by the constants they output) of the MSD_musicnn weights
shipped in the musicnn 0.1.0 wheel (https://github.com/jordipons/musicnn), by
Jordi Pons and Xavier Serra, "musicnn: pre-trained convolutional neural networks
for music audio tagging" (ISMIR 2019 LBD). The weights are distributed under the
ISC licence reproduced below.

----------------------------------------------------------------------------------
Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed
by Jordi Pons (www.jordipons.me).

Permission to use, copy, modify, and/or distribute this software for any purpose
with or without fee is hereby granted, provided that the above copyright notice and
this permission notice appear in all copies.

THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD
TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN
NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR
CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR
PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION,
ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
"""


# --------------------------------------------------------------------------- TF side


def _checkpoint_prefix() -> str:
    import musicnn

    # The wheel stores the checkpoint with an empty file prefix inside the folder.
    return os.path.join(os.path.dirname(musicnn.__file__), MODEL_NAME) + "/"


class TFReference:
    """The original musicnn graph, restored from the wheel's checkpoint."""

    def __init__(self) -> None:
        import tensorflow as tf
        from musicnn import models

        tf.compat.v1.disable_eager_execution()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, N_MELS])
            logits, *_ = models.define_model(self.x, False, MODEL_NAME, len(MSD_LABELS))
            self.tags = tf.nn.sigmoid(logits)
            dense = [op for op in self.graph.get_operations() if op.name.endswith("dense/BiasAdd")]
            if len(dense) != 1:
                raise RuntimeError(f"expected one dense/BiasAdd op, found {dense}")
            self.embedding = dense[0].outputs[0]
            self.sess = tf.compat.v1.Session(graph=self.graph)
            tf.compat.v1.train.Saver().restore(self.sess, _checkpoint_prefix())
        reader = tf.compat.v1.train.NewCheckpointReader(_checkpoint_prefix())
        self.weights = {
            name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if "Adam" not in name and not name.endswith("_power")
        }

    def run(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tags, emb = self.sess.run([self.tags, self.embedding], {self.x: patches})
        return tags.astype(np.float32), emb.astype(np.float32)


# ------------------------------------------------------------------------ ONNX side


def _bn(w: dict[str, np.ndarray], idx: int) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as y = a*x + b (float64 for folding)."""
    p = "batch_normalization" + (f"_{idx}" if idx else "")
    gamma, beta = w[f"{p}/gamma"].astype(np.float64), w[f"{p}/beta"].astype(np.float64)
    mean, var = (
        w[f"{p}/moving_mean"].astype(np.float64),
        w[f"{p}/moving_variance"].astype(np.float64),
    )
    a = gamma / np.sqrt(var + BN_EPS)
    return a, beta - mean * a


class _Builder:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _signed_relu_then_shift(
    b: _Builder, x: str, scale: np.ndarray, shift: np.ndarray, tag: str, trailing: int
) -> str:
    """Finish ``BN(ReLU(z))`` given ``x = scale*z`` (scale already folded into the conv).

    For scale >= 0, scale*ReLU(z) = ReLU(scale*z); for scale < 0 it is
    min(scale*z, 0) = -ReLU(-scale*z). Both become s*ReLU(s*x) with s = sign(scale),
    and the same holds after a max over frequency (max and ReLU commute, and for
    s < 0 min(max(x), 0) = max over min(x, 0)). The shift is added last.
    """
    shape = (-1,) + (1,) * trailing
    s = np.where(scale < 0, -1.0, 1.0)
    if np.all(s > 0):
        y = b.op("Relu", [x], name=f"{tag}_relu")
    else:
        sc = b.const(f"{tag}_sign", s.reshape(shape))
        y = b.op("Mul", [x, sc], name=f"{tag}_sign_in")
        y = b.op("Relu", [y], name=f"{tag}_relu")
        y = b.op("Mul", [y, sc], name=f"{tag}_sign_out")
    return b.op("Add", [y, b.const(f"{tag}_shift", shift.reshape(shape))], name=f"{tag}_bn")


def live_filters(weights: np.ndarray) -> np.ndarray:
    """Front-end filters that respond to their input.

    Training left most of MSD_musicnn's front-end filters dead: 497 of 561 have
    weights below 1e-10 while the live ones are above 1e-4 (the smallest) and
    mostly near 1. A dead filter only ever outputs its bias, so computing it is
    ~90 % of the network's arithmetic spent on constants.
    """
    norms = np.linalg.norm(weights.reshape(len(weights), -1), axis=1)
    return norms > DEAD_FILTER_RATIO * norms.max()


def _constant_channels_through_conv(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """What constant input channels add to a 7-tap, zero-padded 1-D conv, per output and time.

    Away from the edges it is a plain bias; within 3 frames of either end the zero
    padding cuts taps off, so the term depends on the position.
    """
    taps = np.einsum("ock,c->ok", weights, values)  # [out, 7]
    t = np.arange(N_FRAMES)[:, None] + np.arange(taps.shape[1])[None, :] - 3
    inside = ((t >= 0) & (t < N_FRAMES)).astype(np.float64)  # [T, 7]
    return taps @ inside.T  # [out, T]


def build_onnx(w: dict[str, np.ndarray], prune: bool = True):
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    f64 = {k: v.astype(np.float64) for k, v in w.items()}

    # Input BN (one scalar scale/shift). Folding it into the convs is exact if the
    # zero padding of the *normalised* input is reproduced: pad the raw input with
    # the value that normalises to zero, -b0/a0.
    a0, b0 = _bn(w, 0)
    a0, b0 = float(a0[0]), float(b0[0])
    pad_value = b.const("input_pad_value", np.array(-b0 / a0))
    x = b.op("Unsqueeze", ["melspec", b.const("axis1", np.array([1]), np.int64)], name="x_nchw")

    def padded(before: int, after: int) -> str:
        pads = b.const(f"pads_t{before}_{after}", [0, 0, before, 0, 0, 0, after, 0], np.int64)
        return b.op("Pad", [x, pads, pad_value], name=f"x_pad_t{before}_{after}", mode="constant")

    # Front-end: conv -> ReLU -> BN -> max over frequency, five branches.
    # (conv name, BN index, time pads before/after); 'same' padding in TF puts the
    # extra row after.
    branches = [
        ("conv2d", 1, 3, 3),  # timbral 7x38, valid on a 3/3 time-padded input
        ("conv2d_1", 2, 3, 3),  # timbral 7x67
        ("conv2d_2", 3, 63, 64),  # temporal 128x1, 'same'
        ("conv2d_3", 4, 31, 32),  # temporal 64x1
        ("conv2d_4", 5, 15, 16),  # temporal 32x1
    ]
    pad_cache: dict[tuple[int, int], str] = {}
    maxed, scales, shifts, consts = [], [], [], []
    for conv, bn_idx, before, after in branches:
        kernel = f64[f"{conv}/kernel"]  # [kh, kw, 1, out]
        bias = f64[f"{conv}/bias"]
        g, s = _bn(w, bn_idx)
        wt = kernel.transpose(3, 2, 0, 1)  # [out, 1, kh, kw]
        # z = conv(W, a0*x_pad + b0) + bias = conv(a0*W, x_pad) + b0*sum(W) + bias
        z_bias = bias + b0 * wt.sum(axis=(1, 2, 3))
        w_fold, b_fold = wt * a0 * g[:, None, None, None], z_bias * g
        live = live_filters(w_fold) if prune else np.ones(len(g), dtype=bool)
        # A dead filter outputs its bias everywhere: after ReLU, BN and the max it is a
        # constant, remembered here and folded into the layers that read it.
        sign = np.where(g < 0, -1.0, 1.0)
        consts.append(np.where(live, np.nan, sign * np.maximum(sign * b_fold, 0) + s))
        if not live.any():
            continue
        wc = b.const(f"{conv}_W", w_fold[live])
        bc = b.const(f"{conv}_B", b_fold[live])
        key = (before, after)
        if key not in pad_cache:
            pad_cache[key] = padded(before, after)
        y = b.op(
            "Conv", [pad_cache[key], wc, bc], name=f"{conv}_conv", kernel_shape=list(wt.shape[2:])
        )
        # ReduceMax, not MaxPool: measured faster with ORT 1.32 (its NCHWc MaxPool with
        # a 1xF window is slower than re-ordering the conv output and reducing).
        y = b.op("ReduceMax", [y], name=f"{conv}_fmax", axes=[3], keepdims=0)
        maxed.append(y)
        scales.append(g[live])
        shifts.append(s[live])
    const = np.concatenate(consts)  # per front-end channel: NaN if live, else its value
    dead = ~np.isnan(const)
    front = b.op("Concat", maxed, name="frontend_pre", axis=1)  # [N, live channels, T]
    front = _signed_relu_then_shift(
        b, front, np.concatenate(scales), np.concatenate(shifts), "frontend", 1
    )

    # Mid-end: TF convolves a [T, C, 1] image with a [7, C] kernel and transposes the
    # result back; that is a 1-D convolution over time with C input channels.
    def midend_conv(inp: str, conv: str, bn_idx: int, keep: np.ndarray | None = None) -> str:
        kernel = f64[f"{conv}/kernel"]  # [7, C, 1, 64]
        g, s = _bn(w, bn_idx)
        wt = kernel[:, :, 0, :].transpose(2, 1, 0) * g[:, None, None]  # [64, C, 7]
        extra = None
        if keep is not None:
            extra = _constant_channels_through_conv(wt[:, ~keep], const[~keep])
            wt = wt[:, keep]
        wc = b.const(f"{conv}_W", wt)
        bc = b.const(f"{conv}_B", f64[f"{conv}/bias"] * g)
        y = b.op("Conv", [inp, wc, bc], name=f"{conv}_conv", kernel_shape=[7], pads=[3, 3])
        if extra is not None and np.any(extra):
            y = b.op("Add", [y, b.const(f"{conv}_const_in", extra[None])], name=f"{conv}_const")
        return _signed_relu_then_shift(b, y, g, s, conv, 1)

    m1 = midend_conv(front, "conv2d_5", 6, keep=~dead)
    m2 = b.op("Add", [midend_conv(m1, "conv2d_6", 7), m1], name="midend_res2")
    m3 = b.op("Add", [midend_conv(m2, "conv2d_7", 8), m2], name="midend_res3")
    feats = b.op("Concat", [front, m1, m2, m3], name="midend_features", axis=1)  # [N,753,T]

    # Back-end: TF flattens concat([max, mean], axis=2) of shape [N, 753, 2], i.e. the
    # dense input interleaves max_c, mean_c. Re-order the dense rows instead, and fold
    # the BN in front of the dense layer into its weights.
    pmax = b.op("ReduceMax", [feats], name="pool_max", axes=[2], keepdims=0)
    pmean = b.op("ReduceMean", [feats], name="pool_mean", axes=[2], keepdims=0)
    pooled = b.op("Concat", [pmax, pmean], name="pooled", axis=1)  # [N, 1506]
    a9, b9 = _bn(w, 9)
    wd, bd = f64["dense/kernel"], f64["dense/bias"]
    wd_f = wd * a9[:, None]
    bd_f = bd + b9 @ wd
    wd_max, wd_mean = wd_f[0::2], wd_f[1::2]
    # A constant channel's max and mean are the constant: fold it into the bias.
    n_front = len(const)
    dead_rows = np.concatenate([dead, np.zeros(len(wd_max) - n_front, dtype=bool)])
    bd_f = bd_f + np.nan_to_num(const) @ (wd_max[:n_front] + wd_mean[:n_front])
    wd_f = np.concatenate([wd_max[~dead_rows], wd_mean[~dead_rows]], axis=0)
    emb = b.op(
        "Gemm", [pooled, b.const("dense_W", wd_f), b.const("dense_B", bd_f)], name="embedding"
    )
    # ReLU -> BN -> dense_1: the BN is affine, so it folds into dense_1 for any sign.
    a10, b10 = _bn(w, 10)
    wo, bo = f64["dense_1/kernel"], f64["dense_1/bias"]
    h = b.op("Relu", [emb], name="dense_relu")
    logits = b.op(
        "Gemm",
        [h, b.const("dense_1_W", wo * a10[:, None]), b.const("dense_1_B", bo + b10 @ wo)],
        name="logits",
    )
    b.op("Sigmoid", [logits], name="tags")

    graph = helper.make_graph(
        b.nodes,
        "msd_musicnn",
        [helper.make_tensor_value_info("melspec", TensorProto.FLOAT, ["N", N_FRAMES, N_MELS])],
        [
            helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["N", len(MSD_LABELS)]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 200]),
        ],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="musegate analysis.export_musicnn",
        doc_string=(
            "MSD_musicnn (musicnn 0.1.0, Pons & Serra, ISC licence; "
            "https://github.com/jordipons/musicnn) converted by hand to ONNX with "
            "batch norms folded"
            + (" and dead front-end filters folded into constants" if prune else "")
            + ". Input melspec [N,187,96] = log10(1+10000*mel), 16 kHz, "
            "n_fft 512, hop 256, 96 mel bands. Outputs: tags [N,50] sigmoid scores in "
            "MSD_LABELS order; embedding [N,200] = penultimate dense layer pre-activation."
        ),
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "source": "musicnn 0.1.0 MSD_musicnn (Jordi Pons, Xavier Serra), ISC licence",
            "labels": ",".join(MSD_LABELS),
            "input": "melspec float32 [N,187,96] log10(1+10000*mel) 16kHz/512/256/96",
            "embedding": "dense (200) BiasAdd before ReLU/BN",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------- fixture


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mel = f / f_sp
    min_log_hz = 1000.0
    logstep = np.log(6.4) / 27.0
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _mel_filters() -> np.ndarray:
    """Slaney-normalised triangular filters, as librosa.filters.mel(16000, 512, 96)."""
    fft_freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SR / 2), N_MELS + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : N_MELS + 2] - mel_pts[:N_MELS]))[:, None]
    return weights


def log_mel(audio: np.ndarray) -> np.ndarray:
    """musicnn's input features: centred STFT power -> mel -> float16 -> log10(1+1e4*x)."""
    y = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    n = 1 + (len(y) - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    frames = np.stack([y[i * HOP : i * HOP + N_FFT] for i in range(n)]) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = power @ _mel_filters().T
    return np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1).astype(np.float32)


def fixture_inputs() -> np.ndarray:
    rng = np.random.default_rng(20190701)
    random = rng.uniform(0.0, 4.0, size=(2, N_FRAMES, N_MELS)).astype(np.float32)
    t = np.arange(3 * SR) / SR
    # A synthetic "song": a chord with vibrato, a decaying kick every 0.5 s, some noise.
    sig = sum(
        0.2 * np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * 5 * t))
        for f in (220.0, 277.2, 329.6, 880.0)
    )
    beat = np.exp(-30 * (t % 0.5)) * np.sin(2 * np.pi * 60 * t)
    sig = sig + 0.8 * beat + 0.02 * rng.standard_normal(t.size)
    real = log_mel(sig)[None, :N_FRAMES]
    return np.concatenate([random, real], axis=0).astype(np.float32)


# -------------------------------------------------------------------------- checks


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def benchmark(path: Path, batch: int = 32, repeats: int = 3) -> float:
    sess = ort_session(path)
    x = np.random.default_rng(0).uniform(0, 4, (batch, N_FRAMES, N_MELS)).astype(np.float32)
    sess.run(None, {"melspec": x[:2]})
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"melspec": x})
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / batch


def write_model(model, path: Path) -> None:
    """The model and its pinned checksum, side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    print(f"wrote {path} ({len(data) / 1e6:.2f} MB, sha256 {digest})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bench", action="store_true", help="skip the timing run")
    args = ap.parse_args(argv)

    ref = TFReference()
    write_model(build_onnx(ref.weights), OUT_MODEL)
    write_model(build_onnx(ref.weights, prune=False), OUT_UNPRUNED)
    OUT_LICENSE.write_text(LICENSE_TEXT)

    x = fixture_inputs()
    tags, emb = ref.run(x)
    OUT_FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT_FIXTURE, melspec=x, tags=tags, embedding=emb)
    print(f"wrote {OUT_FIXTURE} ({OUT_FIXTURE.stat().st_size / 1e3:.0f} kB)")

    # Parity on the fixture and on a larger random batch of realistic inputs.
    rng = np.random.default_rng(1)
    extra = rng.uniform(0, 4, (16, N_FRAMES, N_MELS)).astype(np.float32)
    xs = np.concatenate([x, extra])
    t_tf, e_tf = ref.run(xs)
    worst = 0.0
    for path in (OUT_MODEL, OUT_UNPRUNED):
        t_ox, e_ox = ort_session(path).run(["tags", "embedding"], {"melspec": xs})
        d_tags = float(np.abs(t_tf - t_ox).max())
        d_emb = float(np.abs(e_tf - e_ox).max())
        worst = max(worst, d_tags, d_emb)
        print(f"{path.name}: parity over {len(xs)} patches: max|dtags|={d_tags:.2e} "
              f"max|dembedding|={d_emb:.2e}")
        if not args.no_bench:
            print(f"  onnxruntime, 1 thread, batch 32: {benchmark(path):.1f} ms/patch")
    if worst > TOL:
        print(f"FAIL: ONNX differs from TensorFlow by more than {TOL}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
