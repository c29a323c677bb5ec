"""Generate the small, trained ONNX test models used by emprune's tests.

Everything is trained from scratch on scikit-learn's bundled ``load_digits()``
data set (1797 8x8 grey-scale images, 10 classes, pixels scaled to [0, 1]),
split 70/30 with a stratified split (``random_state=0``).  Training uses plain
numpy plus ``autograd`` (no deep-learning framework) and a fixed seed, so the
script is deterministic: running it twice gives byte-identical files.

Written next to this script:

* ``digits_mlp.onnx``         64-128-64-10 MLP (Gemm/Relu)
* ``digits_cnn.onnx``         Conv-BN-Relu x2, MaxPool, Flatten, 2x Gemm
* ``digits_cnn_bnfold.onnx``  the same CNN with BatchNorm folded into the Convs
* ``tiny_encoder.onnx``       2-layer transformer encoder over 8 row tokens
* ``digits_resnet.onnx``      ResNet-style CNN (residual Adds, a Concat of two conv branches)
* ``tiny_encoder_msattn.onnx`` the encoder with fused com.microsoft.Attention nodes
* ``digits_mlp_blocked.onnx`` the MLP with an identity Einsum between relu1 and fc2
* ``digits_dct.onnx``         fixed (not trained) DCT basis MatMul, then a trained
  2-layer MLP: a model with a weight-shaped fixed transform, for ``--guard``
* storage variants of the MLP (f16/bf16/f16-full/f64 weights, external data,
  Constant nodes, an If node, typed ``float_data``)
* ``digits_*.npy``            test split and calibration inputs
* the generated table in ``README.md``

Every model is checked with ``onnx.checker`` (full check) and evaluated with
onnxruntime on the test split.

Usage: ``python models/generate.py``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import autograd.numpy as anp
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from autograd import grad
from autograd.tracer import getval
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

SEED = 0
OPSET = 17
IR_VERSION = 8
OUT_DIR = Path(__file__).resolve().parent
README = OUT_DIR / "README.md"
TABLE_BEGIN = "<!-- generated-table:begin -->"
TABLE_END = "<!-- generated-table:end -->"

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LN_EPS = 1e-5
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 64

# Transformer encoder dimensions.
SEQ, FEAT, DIM, HEADS, FFN = 8, 8, 32, 4, 64
HEAD_DIM = DIM // HEADS

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass
class Digits:
    """Stratified train/test split of the digits data, pixels in [0, 1]."""

    x_train: np.ndarray  # float32 [n_train, 64]
    y_train: np.ndarray  # int64 [n_train]
    x_test: np.ndarray  # float32 [n_test, 64]
    y_test: np.ndarray  # int64 [n_test]


def load_split() -> Digits:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=0
    )
    return Digits(x_train, y_train, x_test, y_test)


def as_images(x: np.ndarray) -> np.ndarray:
    """[n, 64] -> [n, 1, 8, 8] (NCHW)."""
    return x.reshape(-1, 1, 8, 8)


def as_sequences(x: np.ndarray) -> np.ndarray:
    """[n, 64] -> [n, 8, 8]: one token per image row."""
    return x.reshape(-1, SEQ, FEAT)


def write_data_files(data: Digits) -> dict[str, str]:
    """Write the .npy files; returns file name -> description."""
    calib = data.x_train[:128]
    files = {
        "digits_test_x.npy": (data.x_test, "test inputs, flat"),
        "digits_test_x_img.npy": (as_images(data.x_test), "test inputs, images"),
        "digits_test_x_seq.npy": (as_sequences(data.x_test), "test inputs, row sequences"),
        "digits_test_y.npy": (data.y_test, "test labels"),
        "digits_calib_x.npy": (calib, "calibration inputs (first 128 training samples), flat"),
        "digits_calib_x_img.npy": (as_images(calib), "calibration inputs, images"),
    }
    descriptions = {}
    for name, (array, what) in files.items():
        np.save(OUT_DIR / name, array)
        descriptions[name] = f"{what}, {array.dtype} {list(array.shape)}"
    return descriptions


# --------------------------------------------------------------------------
# Training (autograd, float64)
# --------------------------------------------------------------------------


def cross_entropy(logits, labels):
    shifted = logits - anp.max(logits, axis=1, keepdims=True)
    log_probs = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
    return -anp.mean(log_probs[anp.arange(len(labels)), labels])


def relu(x):
    return anp.maximum(x, 0.0)


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def train_adam(
    loss_fn: Callable,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    after_step: Callable[[], None] = lambda: None,
) -> Params:
    """Mini-batch AdamW with cosine learning-rate decay.

    Decoupled weight decay is applied to matrices and kernels only (not to
    biases or normalisation parameters).
    """
    rng = np.random.default_rng(SEED)
    grad_fn = grad(loss_fn)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            grads = grad_fn(params, x[batch], y[batch])
            step += 1
            lr_t = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total))
            for k, g in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                m_hat = m[k] / (1 - beta1**step)
                v_hat = v[k] / (1 - beta2**step)
                if params[k].ndim > 1:
                    params[k] = params[k] * (1 - lr_t * WEIGHT_DECAY)
                params[k] = params[k] - lr_t * m_hat / (np.sqrt(v_hat) + eps)
            after_step()
    return params


# --- MLP -------------------------------------------------------------------

MLP_LAYERS = [("fc1", 64, 128), ("fc2", 128, 64), ("fc3", 64, 10)]


def mlp_forward(p, x):
    h = x
    for i, (name, _, _) in enumerate(MLP_LAYERS):
        h = anp.dot(h, p[f"{name}.weight"].T) + p[f"{name}.bias"]
        if i < len(MLP_LAYERS) - 1:
            h = relu(h)
    return h


def train_mlp(data: Digits) -> Params:
    rng = np.random.default_rng(SEED)
    params = {}
    for name, n_in, n_out in MLP_LAYERS:
        params[f"{name}.weight"] = he_normal(rng, (n_out, n_in), n_in)
        params[f"{name}.bias"] = np.zeros(n_out)
    loss = lambda p, x, y: cross_entropy(mlp_forward(p, x), y)
    return train_adam(loss, params, data.x_train.astype(np.float64), data.y_train,
                      epochs=100, lr=1e-3)


# --- Fixed DCT front end + trained MLP (for --guard) -----------------------

DCT_SCALE = 1.0 / 16.0
DCT_LAYERS = [("fc1", 64, 32), ("fc2", 32, 10)]


def dct_basis() -> np.ndarray:
    """[64 pixels, 64 coefficients]: the orthonormal 2-D DCT-II of an 8x8 image,
    scaled by ``DCT_SCALE`` (small in absolute scale, like a normalised STFT
    analysis window). ``pixels @ basis`` gives the scaled coefficients."""
    n = 8
    k = np.arange(n)
    c = np.sqrt(np.where(k == 0, 1.0 / n, 2.0 / n))
    d1 = c[:, None] * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))  # [freq, pos]
    d2 = np.einsum("uy,vx->uvyx", d1, d1).reshape(n * n, n * n)  # [coef, pixel]
    return (d2.T * DCT_SCALE).astype(np.float64)


def dct_forward(p, x):
    h = anp.dot(x, dct_basis())
    h = relu(anp.dot(h, p["fc1.weight"].T) + p["fc1.bias"])
    return anp.dot(h, p["fc2.weight"].T) + p["fc2.bias"]


def train_dct_mlp(data: Digits) -> Params:
    rng = np.random.default_rng(SEED)
    params = {}
    for name, n_in, n_out in DCT_LAYERS:
        params[f"{name}.weight"] = he_normal(rng, (n_out, n_in), n_in)
        params[f"{name}.bias"] = np.zeros(n_out)
    loss = lambda p, x, y: cross_entropy(dct_forward(p, x), y)
    return train_adam(loss, params, data.x_train.astype(np.float64), data.y_train,
                      epochs=100, lr=3e-3)


# --- CNN -------------------------------------------------------------------


def im2col_matrix(size: int = 8) -> np.ndarray:
    """0/1 matrix [size*size, 9*size*size]: ``pixels @ M`` gathers, for each
    3x3 kernel offset (ky, kx) and each output pixel, the input pixel under it
    (zero outside the image, i.e. padding 1)."""
    m = np.zeros((size, size, 3, 3, size, size))
    for ky, kx, y, x in np.ndindex(3, 3, size, size):
        iy, ix = y + ky - 1, x + kx - 1
        if 0 <= iy < size and 0 <= ix < size:
            m[iy, ix, ky, kx, y, x] = 1.0
    return m.reshape(size * size, 9 * size * size)


IM2COL = im2col_matrix()


def conv3x3(x, w):
    """3x3 convolution, stride 1, zero padding 1, no bias (NCHW / OIHW, 8x8 images)."""
    n, c, height, width = x.shape
    out_channels = w.shape[0]
    cols = anp.dot(anp.reshape(x, (n * c, height * width)), IM2COL)  # [n * c, 9 * h * w]
    # -> [n * h * w, c * 9], columns in the (c, ky, kx) order of a flattened OIHW kernel
    cols = anp.reshape(anp.transpose(anp.reshape(cols, (n, c * 9, height * width)), (0, 2, 1)),
                       (n * height * width, c * 9))
    out = anp.dot(cols, anp.reshape(w, (out_channels, c * 9)).T)  # [n * h * w, o]
    return anp.transpose(anp.reshape(out, (n, height, width, out_channels)), (0, 3, 1, 2))


def channel(v):
    """Per-channel vector [c] -> broadcastable [1, c, 1, 1]."""
    return anp.reshape(v, (1, -1, 1, 1))


def batch_norm(h, p, state, name, batch_stats):
    """BatchNorm over NCHW.

    With ``batch_stats`` (a dict) it normalises with the batch statistics and
    records them there; otherwise it uses the running statistics in ``state``.
    """
    if batch_stats is None:
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
    else:
        mean, var = anp.mean(h, axis=(0, 2, 3)), anp.var(h, axis=(0, 2, 3))
        batch_stats[name] = (getval(mean), getval(var), h.shape[0] * h.shape[2] * h.shape[3])
    scale = p[f"{name}.weight"] / anp.sqrt(var + BN_EPS)
    return (h - channel(mean)) * channel(scale) + channel(p[f"{name}.bias"])


def cnn_forward(p, state, x, batch_stats=None):
    h = relu(batch_norm(conv3x3(x, p["conv1.weight"]), p, state, "bn1", batch_stats))
    h = relu(batch_norm(conv3x3(h, p["conv2.weight"]), p, state, "bn2", batch_stats))
    n, c, height, width = h.shape
    h = anp.max(anp.reshape(h, (n, c, height // 2, 2, width // 2, 2)), axis=(3, 5))
    h = anp.reshape(h, (n, -1))
    h = relu(anp.dot(h, p["fc1.weight"].T) + p["fc1.bias"])
    return anp.dot(h, p["fc2.weight"].T) + p["fc2.bias"]


def train_cnn(data: Digits) -> tuple[Params, Params]:
    """Returns (trainable parameters, BatchNorm running statistics)."""
    rng = np.random.default_rng(SEED)
    params = {
        "conv1.weight": he_normal(rng, (16, 1, 3, 3), 9),
        "bn1.weight": np.ones(16),
        "bn1.bias": np.zeros(16),
        "conv2.weight": he_normal(rng, (32, 16, 3, 3), 16 * 9),
        "bn2.weight": np.ones(32),
        "bn2.bias": np.zeros(32),
        "fc1.weight": he_normal(rng, (64, 512), 512),
        "fc1.bias": np.zeros(64),
        "fc2.weight": he_normal(rng, (10, 64), 64),
        "fc2.bias": np.zeros(10),
    }
    state = {}
    for name, c in [("bn1", 16), ("bn2", 32)]:
        state[f"{name}.running_mean"] = np.zeros(c)
        state[f"{name}.running_var"] = np.ones(c)
    batch_stats = {}

    def loss(p, x, y):
        return cross_entropy(cnn_forward(p, state, x, batch_stats), y)

    def update_running_stats():
        # PyTorch convention: the running variance uses the unbiased estimate.
        for name, (mean, var, count) in batch_stats.items():
            for stat, value in [("running_mean", mean), ("running_var", var * count / (count - 1))]:
                key = f"{name}.{stat}"
                state[key] = (1 - BN_MOMENTUM) * state[key] + BN_MOMENTUM * value

    x = as_images(data.x_train).astype(np.float64)
    params = train_adam(loss, params, x, data.y_train, epochs=30, lr=2e-3,
                        after_step=update_running_stats)
    return params, state


def fold_batch_norm(params: Params, state: Params) -> Params:
    """Fold bnK into convK: returns conv weights/biases plus the untouched Gemms."""
    folded = {k: v for k, v in params.items() if k.startswith("fc")}
    for conv, bn in [("conv1", "bn1"), ("conv2", "bn2")]:
        scale = params[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPS)
        folded[f"{conv}.weight"] = params[f"{conv}.weight"] * scale[:, None, None, None]
        folded[f"{conv}.bias"] = params[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return folded


# --- ResNet-style CNN --------------------------------------------------------

# (conv, bn, in channels, out channels, kernel size).  No Conv has a bias: a
# BatchNormalization follows each of them.
RESNET_CONVS = [
    ("conv1", "bn1", 1, 16, 3),
    ("block1.conv1", "block1.bn1", 16, 16, 3),
    ("block1.conv2", "block1.bn2", 16, 16, 3),
    ("branch3x3.conv", "branch3x3.bn", 16, 8, 3),
    ("branch1x1.conv", "branch1x1.bn", 16, 8, 1),
    ("block2.conv1", "block2.bn1", 16, 16, 3),
    ("block2.conv2", "block2.bn2", 16, 16, 3),
]
RESNET_FCS = [("fc1", 256, 32), ("fc2", 32, 10)]


def conv1x1(x, w):
    """1x1 convolution, no bias (NCHW / OIHW)."""
    return anp.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])


def resnet_forward(p, state, x, batch_stats=None):
    def conv_bn(h, conv, bn):
        w = p[f"{conv}.weight"]
        h = conv3x3(h, w) if w.shape[2] == 3 else conv1x1(h, w)
        return batch_norm(h, p, state, bn, batch_stats)

    def residual_block(h, name):
        out = relu(conv_bn(h, f"{name}.conv1", f"{name}.bn1"))
        return relu(conv_bn(out, f"{name}.conv2", f"{name}.bn2") + h)

    h = relu(conv_bn(x, "conv1", "bn1"))
    h = residual_block(h, "block1")
    h = anp.concatenate([relu(conv_bn(h, "branch3x3.conv", "branch3x3.bn")),
                         relu(conv_bn(h, "branch1x1.conv", "branch1x1.bn"))], axis=1)
    h = residual_block(h, "block2")
    n, c, height, width = h.shape
    h = anp.max(anp.reshape(h, (n, c, height // 2, 2, width // 2, 2)), axis=(3, 5))
    h = anp.reshape(h, (n, -1))
    h = relu(anp.dot(h, p["fc1.weight"].T) + p["fc1.bias"])
    return anp.dot(h, p["fc2.weight"].T) + p["fc2.bias"]


def train_resnet(data: Digits) -> tuple[Params, Params]:
    """Returns (trainable parameters, BatchNorm running statistics)."""
    rng = np.random.default_rng(SEED)
    params: Params = {}
    state: Params = {}
    for conv, bn, c_in, c_out, k in RESNET_CONVS:
        params[f"{conv}.weight"] = he_normal(rng, (c_out, c_in, k, k), c_in * k * k)
        params[f"{bn}.weight"] = np.ones(c_out)
        params[f"{bn}.bias"] = np.zeros(c_out)
        state[f"{bn}.running_mean"] = np.zeros(c_out)
        state[f"{bn}.running_var"] = np.ones(c_out)
    for name, n_in, n_out in RESNET_FCS:
        params[f"{name}.weight"] = he_normal(rng, (n_out, n_in), n_in)
        params[f"{name}.bias"] = np.zeros(n_out)
    batch_stats = {}

    def loss(p, x, y):
        return cross_entropy(resnet_forward(p, state, x, batch_stats), y)

    def update_running_stats():
        # As in train_cnn: PyTorch convention, unbiased running variance.
        for name, (mean, var, count) in batch_stats.items():
            for stat, value in [("running_mean", mean), ("running_var", var * count / (count - 1))]:
                key = f"{name}.{stat}"
                state[key] = (1 - BN_MOMENTUM) * state[key] + BN_MOMENTUM * value

    x = as_images(data.x_train).astype(np.float64)
    params = train_adam(loss, params, x, data.y_train, epochs=20, lr=2e-3,
                        after_step=update_running_stats)
    return params, state


# --- Transformer encoder ---------------------------------------------------

ENCODER_LAYERS = 2


def layer_norm(h, p, name):
    mean = anp.mean(h, axis=-1, keepdims=True)
    var = anp.var(h, axis=-1, keepdims=True)
    return (h - mean) / anp.sqrt(var + LN_EPS) * p[f"{name}.weight"] + p[f"{name}.bias"]


def linear(h, p, name):
    """MatMul with a [in, out] weight, then bias Add (the ONNX MatMul+Add form)."""
    return anp.matmul(h, p[f"{name}.weight"]) + p[f"{name}.bias"]


def self_attention(h, p, layer):
    b = h.shape[0]

    def heads(name, perm):
        return anp.transpose(anp.reshape(linear(h, p, f"{layer}.{name}"), (b, SEQ, HEADS, HEAD_DIM)), perm)

    q = heads("q_proj", (0, 2, 1, 3))  # [b, H, s, d]
    k = heads("k_proj", (0, 2, 3, 1))  # [b, H, d, s]
    v = heads("v_proj", (0, 2, 1, 3))  # [b, H, s, d]
    scores = anp.matmul(q, k) / math.sqrt(HEAD_DIM)
    scores = anp.exp(scores - anp.max(scores, axis=-1, keepdims=True))
    attn = scores / anp.sum(scores, axis=-1, keepdims=True)
    context = anp.reshape(anp.transpose(anp.matmul(attn, v), (0, 2, 1, 3)), (b, SEQ, DIM))
    return linear(context, p, f"{layer}.out_proj")


def encoder_forward(p, x):
    h = linear(x, p, "embed") + p["pos_embedding"]
    for i in range(ENCODER_LAYERS):
        layer = f"l{i}"
        h = layer_norm(h + self_attention(h, p, layer), p, f"{layer}.norm1")
        ffn = linear(relu(linear(h, p, f"{layer}.ffn1")), p, f"{layer}.ffn2")
        h = layer_norm(h + ffn, p, f"{layer}.norm2")
    return linear(anp.mean(h, axis=1), p, "head")


def train_encoder(data: Digits) -> Params:
    rng = np.random.default_rng(SEED)

    def dense(name, n_in, n_out):
        params[f"{name}.weight"] = rng.normal(0.0, math.sqrt(1.0 / n_in), size=(n_in, n_out))
        params[f"{name}.bias"] = np.zeros(n_out)

    params: Params = {}
    dense("embed", FEAT, DIM)
    params["pos_embedding"] = rng.normal(0.0, 0.1, size=(1, SEQ, DIM))
    for i in range(ENCODER_LAYERS):
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            dense(f"l{i}.{proj}", DIM, DIM)
        dense(f"l{i}.ffn1", DIM, FFN)
        dense(f"l{i}.ffn2", FFN, DIM)
        for norm in ["norm1", "norm2"]:
            params[f"l{i}.{norm}.weight"] = np.ones(DIM)
            params[f"l{i}.{norm}.bias"] = np.zeros(DIM)
    dense("head", DIM, 10)
    loss = lambda p, x, y: cross_entropy(encoder_forward(p, x), y)
    x = as_sequences(data.x_train).astype(np.float64)
    return train_adam(loss, params, x, data.y_train, epochs=60, lr=2e-3)


# --------------------------------------------------------------------------
# ONNX graph building
# --------------------------------------------------------------------------


class GraphBuilder:
    """Collects the nodes and initializers of one ONNX graph.

    ``op`` returns the name of the node's output value, which defaults to the
    node name plus ``_out``.
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        value = numpy_helper.from_array(array, name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const", value=value))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        output = output or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="emprune models/generate.py",
        doc_string=f"Trained on scikit-learn load_digits() (seed {SEED}).",
    )
    return model


def tensor_info(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


# --- Weight storage strategies for the MLP variants -------------------------
# Each takes (builder, name, float32 array) and returns the value name that
# carries the weight, as the consumer's dtype expects it.

WeightStore = Callable[[GraphBuilder, str, np.ndarray], str]


def store_initializer(b: GraphBuilder, name: str, w: np.ndarray) -> str:
    return b.initializer(name, w)


def store_constant(b: GraphBuilder, name: str, w: np.ndarray) -> str:
    return b.constant(name, w)


def store_typed(b: GraphBuilder, name: str, w: np.ndarray) -> str:
    b.initializers.append(helper.make_tensor(name, TensorProto.FLOAT, w.shape, w.ravel().tolist(), raw=False))
    return name


def store_as(dtype) -> WeightStore:
    """Store the weight as an initializer of ``dtype``; compute in ``dtype``."""
    return lambda b, name, w: b.initializer(name, w.astype(dtype))


def store_cast_to_float(dtype) -> WeightStore:
    """Store the weight as ``dtype`` and Cast it to FLOAT before use."""

    def store(b: GraphBuilder, name: str, w: np.ndarray) -> str:
        stored = b.initializer(name, w.astype(dtype))
        return b.op("Cast", [stored], f"{name}_cast", output=f"{name}_f32", to=TensorProto.FLOAT)

    return store


# --- Model graphs -----------------------------------------------------------


def mlp_layer(b: GraphBuilder, x: str, params: Params, index: int, store: WeightStore,
              prefix: str = "", output: str | None = None) -> str:
    """Gemm (transB=1) for layer fc<index>, followed by Relu except for the last layer."""
    name = f"fc{index}"
    weight = store(b, f"{prefix}{name}.weight", f32(params[f"{name}.weight"]))
    bias = store(b, f"{prefix}{name}.bias", f32(params[f"{name}.bias"]))
    if index == len(MLP_LAYERS):
        return b.op("Gemm", [x, weight, bias], f"{prefix}{name}", output=output, transB=1)
    h = b.op("Gemm", [x, weight, bias], f"{prefix}{name}", transB=1)
    return b.op("Relu", [h], f"{prefix}relu{index}", output=output)


def build_mlp(params: Params, store: WeightStore = store_initializer,
              elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    b = GraphBuilder()
    h = "input"
    for index in range(1, len(MLP_LAYERS) + 1):
        output = "logits" if index == len(MLP_LAYERS) else None
        h = mlp_layer(b, h, params, index, store, output=output)
    graph = b.graph("digits_mlp", [tensor_info("input", elem_type, ["N", 64])],
                    [tensor_info("logits", elem_type, ["N", 10])])
    return make_model(graph)


def build_mlp_if(params: Params) -> onnx.ModelProto:
    """MLP whose second layer (fc2 + relu2) lives inside both branches of an If.

    The then-branch holds its weights in Constant nodes, the else-branch in
    subgraph initializers; both compute the same function.
    """
    b = GraphBuilder()
    h1 = mlp_layer(b, "input", params, 1, store_initializer)
    cond = b.initializer("use_branch", np.array(True))
    branches = {}
    for branch, store in [("then", store_constant), ("else", store_initializer)]:
        sub = GraphBuilder()
        out = mlp_layer(sub, h1, params, 2, store, prefix=f"{branch}/", output=f"{branch}/relu2_out")
        branches[f"{branch}_branch"] = sub.graph(
            f"fc2_{branch}", [], [tensor_info(out, TensorProto.FLOAT, ["N", 64])]
        )
    h2 = b.op("If", [cond], "fc2_if", **branches)
    mlp_layer(b, h2, params, 3, store_initializer, output="logits")
    graph = b.graph("digits_mlp_if", [tensor_info("input", TensorProto.FLOAT, ["N", 64])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    return make_model(graph)


def build_dct(params: Params) -> onnx.ModelProto:
    """MatMul with the fixed ``dct.basis`` [64, 64], then Gemm 64→32, Relu, Gemm 32→10."""
    b = GraphBuilder()
    basis = b.initializer("dct.basis", f32(dct_basis()))
    h = b.op("MatMul", ["input", basis], "dct")
    w1 = b.initializer("fc1.weight", f32(params["fc1.weight"]))
    b1 = b.initializer("fc1.bias", f32(params["fc1.bias"]))
    h = b.op("Relu", [b.op("Gemm", [h, w1, b1], "fc1", transB=1)], "relu1")
    w2 = b.initializer("fc2.weight", f32(params["fc2.weight"]))
    b2 = b.initializer("fc2.bias", f32(params["fc2.bias"]))
    b.op("Gemm", [h, w2, b2], "fc2", output="logits", transB=1)
    graph = b.graph("digits_dct", [tensor_info("input", TensorProto.FLOAT, ["N", 64])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    return make_model(graph)


def build_cnn(params: Params, state: Params | None) -> onnx.ModelProto:
    """The digits CNN.  With ``state`` (BN running stats) the Convs have no bias
    and are followed by BatchNormalization; without it ``params`` must be
    BN-folded (Convs with bias, no BatchNormalization)."""
    b = GraphBuilder()
    h = "input"
    for i in (1, 2):
        conv, bn = f"conv{i}", f"bn{i}"
        inputs = [h, b.initializer(f"{conv}.weight", f32(params[f"{conv}.weight"]))]
        if state is None:
            inputs.append(b.initializer(f"{conv}.bias", f32(params[f"{conv}.bias"])))
        h = b.op("Conv", inputs, conv, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        if state is not None:
            bn_inputs = [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"]
            for key in bn_inputs:
                b.initializer(key, f32(params[key] if key in params else state[key]))
            h = b.op("BatchNormalization", [h, *bn_inputs], bn, epsilon=BN_EPS)
        h = b.op("Relu", [h], f"relu{i}")
    h = b.op("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h], "flatten", axis=1)
    for i, output in [(1, None), (2, "logits")]:
        fc = f"fc{i}"
        weight = b.initializer(f"{fc}.weight", f32(params[f"{fc}.weight"]))
        bias = b.initializer(f"{fc}.bias", f32(params[f"{fc}.bias"]))
        h = b.op("Gemm", [h, weight, bias], fc, output=output, transB=1)
        if output is None:
            h = b.op("Relu", [h], "relu3")
    name = "digits_cnn" if state is not None else "digits_cnn_bnfold"
    graph = b.graph(name, [tensor_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    return make_model(graph)


def build_mlp_blocked(params: Params) -> onnx.ModelProto:
    """The MLP with an identity ``Einsum("bi->bi")`` between relu1 and fc2: an op
    structured pruning does not know, so it must not propagate through it."""
    b = GraphBuilder()
    h = mlp_layer(b, "input", params, 1, store_initializer)
    h = b.op("Einsum", [h], "identity_einsum", equation="bi->bi")
    h = mlp_layer(b, h, params, 2, store_initializer)
    mlp_layer(b, h, params, 3, store_initializer, output="logits")
    graph = b.graph("digits_mlp_blocked", [tensor_info("input", TensorProto.FLOAT, ["N", 64])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    return make_model(graph)


def build_resnet(params: Params, state: Params) -> onnx.ModelProto:
    """The ResNet-style CNN; node names are the weight prefixes with '.' -> '_'."""
    b = GraphBuilder()

    def conv_bn(h: str, conv: str, bn: str) -> str:
        weight = f32(params[f"{conv}.weight"])
        k = weight.shape[2]
        h = b.op("Conv", [h, b.initializer(f"{conv}.weight", weight)], conv.replace(".", "_"),
                 kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1])
        bn_inputs = [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"]
        for key in bn_inputs:
            b.initializer(key, f32(params[key] if key in params else state[key]))
        return b.op("BatchNormalization", [h, *bn_inputs], bn.replace(".", "_"), epsilon=BN_EPS)

    def residual_block(x: str, name: str) -> str:
        h = b.op("Relu", [conv_bn(x, f"{name}.conv1", f"{name}.bn1")], f"{name}_relu1")
        h = b.op("Add", [conv_bn(h, f"{name}.conv2", f"{name}.bn2"), x], f"{name}_add")
        return b.op("Relu", [h], f"{name}_relu2")

    h = b.op("Relu", [conv_bn("input", "conv1", "bn1")], "relu1")
    h = residual_block(h, "block1")
    branches = [b.op("Relu", [conv_bn(h, f"{branch}.conv", f"{branch}.bn")], f"{branch}_relu")
                for branch in ("branch3x3", "branch1x1")]
    h = b.op("Concat", branches, "concat", axis=1)
    h = residual_block(h, "block2")
    h = b.op("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h], "flatten", axis=1)
    for name, output in [("fc1", None), ("fc2", "logits")]:
        weight = b.initializer(f"{name}.weight", f32(params[f"{name}.weight"]))
        bias = b.initializer(f"{name}.bias", f32(params[f"{name}.bias"]))
        h = b.op("Gemm", [h, weight, bias], name, output=output, transB=1)
        if output is None:
            h = b.op("Relu", [h], "fc1_relu")
    graph = b.graph("digits_resnet", [tensor_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    return make_model(graph)


def onnx_linear(b: GraphBuilder, x: str, params: Params, name: str, output: str | None = None) -> str:
    """MatMul with a [in, out] initializer followed by a bias Add."""
    node = name.replace(".", "_")
    weight = b.initializer(f"{name}.weight", f32(params[f"{name}.weight"]))
    bias = b.initializer(f"{name}.bias", f32(params[f"{name}.bias"]))
    h = b.op("MatMul", [x, weight], node)
    return b.op("Add", [h, bias], f"{node}_bias", output=output)


def onnx_attention(b: GraphBuilder, h: str, params: Params, layer: str,
                   heads_shape: str, merge_shape: str) -> str:
    def heads(proj: str, perm: list[int]) -> str:
        x = onnx_linear(b, h, params, f"{layer}.{proj}")
        x = b.op("Reshape", [x, heads_shape], f"{layer}_{proj[0]}_reshape")
        return b.op("Transpose", [x], f"{layer}_{proj[0]}_transpose", perm=perm)

    q = heads("q_proj", [0, 2, 1, 3])
    k = heads("k_proj", [0, 2, 3, 1])
    v = heads("v_proj", [0, 2, 1, 3])
    scale = b.initializer(f"{layer}.attn_scale", np.array(math.sqrt(HEAD_DIM), dtype=np.float32))
    scores = b.op("MatMul", [q, k], f"{layer}_scores")
    scores = b.op("Div", [scores, scale], f"{layer}_scale")
    attn = b.op("Softmax", [scores], f"{layer}_softmax", axis=-1)
    context = b.op("MatMul", [attn, v], f"{layer}_context")
    context = b.op("Transpose", [context], f"{layer}_context_transpose", perm=[0, 2, 1, 3])
    context = b.op("Reshape", [context, merge_shape], f"{layer}_context_reshape")
    return onnx_linear(b, context, params, f"{layer}.out_proj")


MS_DOMAIN = "com.microsoft"


def onnx_ms_attention(b: GraphBuilder, h: str, params: Params, layer: str) -> str:
    """Self-attention as one fused ``com.microsoft.Attention`` node (packed Q|K|V
    weight [32, 96] and bias [96], ``num_heads``), then the out_proj MatMul + Add."""
    weight = np.concatenate([params[f"{layer}.{x}_proj.weight"] for x in "qkv"], axis=1)
    bias = np.concatenate([params[f"{layer}.{x}_proj.bias"] for x in "qkv"])
    inputs = [h, b.initializer(f"{layer}.qkv.weight", f32(weight)),
              b.initializer(f"{layer}.qkv.bias", f32(bias))]
    context = b.op("Attention", inputs, f"{layer}_attention", domain=MS_DOMAIN, num_heads=HEADS)
    return onnx_linear(b, context, params, f"{layer}.out_proj")


def onnx_layer_norm(b: GraphBuilder, x: str, params: Params, name: str) -> str:
    scale = b.initializer(f"{name}.weight", f32(params[f"{name}.weight"]))
    bias = b.initializer(f"{name}.bias", f32(params[f"{name}.bias"]))
    return b.op("LayerNormalization", [x, scale, bias], name.replace(".", "_"), axis=-1, epsilon=LN_EPS)


def reshape_shapes(b: GraphBuilder, layer: int) -> tuple[str, str]:
    """Layer 0: int64 initializers with H explicit; later layers: Constant nodes with -1."""
    if layer == 0:
        return (b.initializer("l0.heads_shape", np.array([0, 0, HEADS, HEAD_DIM], dtype=np.int64)),
                b.initializer("l0.merge_shape", np.array([0, 0, DIM], dtype=np.int64)))
    return (b.constant(f"l{layer}.heads_shape", np.array([0, 0, -1, HEAD_DIM], dtype=np.int64)),
            b.constant(f"l{layer}.merge_shape", np.array([0, 0, -1], dtype=np.int64)))


def build_encoder(params: Params, fused_attention: bool = False) -> onnx.ModelProto:
    """With ``fused_attention`` each self-attention is one com.microsoft.Attention."""
    b = GraphBuilder()
    h = onnx_linear(b, "input", params, "embed")
    pos = b.initializer("pos_embedding", f32(params["pos_embedding"]))
    h = b.op("Add", [h, pos], "pos_add")
    for i in range(ENCODER_LAYERS):
        layer = f"l{i}"
        if fused_attention:
            attn = onnx_ms_attention(b, h, params, layer)
        else:
            heads_shape, merge_shape = reshape_shapes(b, i)
            attn = onnx_attention(b, h, params, layer, heads_shape, merge_shape)
        h = b.op("Add", [h, attn], f"{layer}_residual1")
        h = onnx_layer_norm(b, h, params, f"{layer}.norm1")
        ffn = onnx_linear(b, h, params, f"{layer}.ffn1")
        ffn = b.op("Relu", [ffn], f"{layer}_ffn_relu")
        ffn = onnx_linear(b, ffn, params, f"{layer}.ffn2")
        h = b.op("Add", [h, ffn], f"{layer}_residual2")
        h = onnx_layer_norm(b, h, params, f"{layer}.norm2")
    h = b.op("ReduceMean", [h], "pool", axes=[1], keepdims=0)
    onnx_linear(b, h, params, "head", output="logits")
    name = "tiny_encoder_msattn" if fused_attention else "tiny_encoder"
    graph = b.graph(name, [tensor_info("input", TensorProto.FLOAT, ["N", SEQ, FEAT])],
                    [tensor_info("logits", TensorProto.FLOAT, ["N", 10])])
    model = make_model(graph)
    if fused_attention:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


# --------------------------------------------------------------------------
# Saving, checking and evaluating
# --------------------------------------------------------------------------


def save(model: onnx.ModelProto, file: str, external_data: bool = False) -> Path:
    path = OUT_DIR / file
    if external_data:
        data_file = OUT_DIR / f"{file}.data"
        data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=0)
    else:
        onnx.save_model(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def weight_count(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements in initializers and Constant
    nodes, subgraphs included (BN running statistics count, shape constants don't)."""
    int_types = {TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL}

    def count(graph: onnx.GraphProto) -> int:
        tensors = list(graph.initializer)
        total = 0
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    total += count(attr.g)
        return total + sum(math.prod(t.dims) for t in tensors if t.data_type not in int_types)

    return count(model.graph)


@dataclass
class ModelResult:
    file: str
    what: str
    architecture: str
    io: str
    weights: int
    accuracy: float
    logits: np.ndarray


def evaluate(model: onnx.ModelProto, file: str, what: str, architecture: str, io: str,
             x: np.ndarray, y: np.ndarray, external_data: bool = False) -> ModelResult:
    path = save(model, file, external_data)
    logits = run(path, x)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    print(f"{file:28s} acc {accuracy:.4f}")
    return ModelResult(file, what, architecture, io, weight_count(model), accuracy,
                       logits.astype(np.float64))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"check failed: {message}")


def compare(result: ModelResult, reference: ModelResult, atol: float) -> None:
    """The variant must compute the reference's function (within ``atol``)."""
    diff = float(np.max(np.abs(result.logits - reference.logits)))
    agree = float(np.mean(result.logits.argmax(1) == reference.logits.argmax(1)))
    print(f"{result.file:28s} vs {reference.file}: max |diff| {diff:.2e}, argmax agreement {agree:.4f}")
    require(diff <= atol, f"{result.file} differs from {reference.file} by {diff}")
    require(agree >= 0.99, f"{result.file} argmax agreement {agree}")


# --------------------------------------------------------------------------
# README table
# --------------------------------------------------------------------------


def size_of(file: str) -> str:
    return f"{(OUT_DIR / file).stat().st_size / 1024:.1f} KiB"


def write_readme_table(results: list[ModelResult], data_files: dict[str, str]) -> None:
    rows = [
        "| File | What | Architecture | Input → output | Weights | Test accuracy | Size |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        rows.append(f"| `{r.file}` | {r.what} | {r.architecture} | {r.io} | {r.weights:,} "
                    f"| {100 * r.accuracy:.2f}% | {size_of(r.file)} |")
        if (OUT_DIR / f"{r.file}.data").exists():
            rows.append(f"| `{r.file}.data` | external tensor data of `{r.file}` | | | | "
                        f"| {size_of(r.file + '.data')} |")
    for file, description in data_files.items():
        rows.append(f"| `{file}` | {description} | | | | | {size_of(file)} |")
    text = README.read_text()
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    README.write_text(f"{head}{TABLE_BEGIN}\n" + "\n".join(rows) + f"\n{TABLE_END}{tail}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

FLAT_IO = "`input` [N,64] → `logits` [N,10]"
MLP_ARCH = "Gemm 64→128, Relu, Gemm 128→64, Relu, Gemm 64→10"


def main() -> None:
    data = load_split()
    data_files = write_data_files(data)
    x_flat, x_img, x_seq, y = (data.x_test, as_images(data.x_test),
                               as_sequences(data.x_test), data.y_test)

    mlp = train_mlp(data)
    cnn, cnn_state = train_cnn(data)
    encoder = train_encoder(data)

    reference = evaluate(build_mlp(mlp), "digits_mlp.onnx", "trained MLP", MLP_ARCH, FLAT_IO, x_flat, y)
    cnn_result = evaluate(
        build_cnn(cnn, cnn_state), "digits_cnn.onnx", "trained CNN with BatchNormalization",
        "Conv 1→16 3x3, BN, Relu, Conv 16→32 3x3, BN, Relu, MaxPool 2x2, Flatten, "
        "Gemm 512→64, Relu, Gemm 64→10",
        "`input` [N,1,8,8] → `logits` [N,10]", x_img, y)
    folded = evaluate(
        build_cnn(fold_batch_norm(cnn, cnn_state), None), "digits_cnn_bnfold.onnx",
        "`digits_cnn.onnx` with BN folded into the Convs",
        "Conv+bias 1→16, Relu, Conv+bias 16→32, Relu, MaxPool, Flatten, Gemm, Relu, Gemm",
        "`input` [N,1,8,8] → `logits` [N,10]", x_img, y)
    encoder_result = evaluate(
        build_encoder(encoder), "tiny_encoder.onnx", "trained transformer encoder classifier",
        "rows as 8 tokens; MatMul 8→32 + pos. embedding; 2 post-LN layers (MHA H=4, d=8; "
        "FFN 32→64→32); ReduceMean over tokens; MatMul 32→10",
        "`input` [N,8,8] → `logits` [N,10]", x_seq, y)
    require(reference.accuracy >= 0.95, "MLP accuracy")
    require(cnn_result.accuracy >= 0.95, "CNN accuracy")
    require(encoder_result.accuracy >= 0.90, "encoder accuracy")
    compare(folded, cnn_result, atol=1e-4)

    f16_io = "`input` f16 [N,64] → `logits` f16 [N,10]"
    f64_io = "`input` f64 [N,64] → `logits` f64 [N,10]"
    variants = [
        # (model, file, what, io, inputs, tolerance vs digits_mlp.onnx, external data)
        (build_mlp(mlp, store_cast_to_float(np.float16)), "digits_mlp_f16.onnx",
         "MLP, FLOAT16 initializers + Cast to FLOAT", FLAT_IO, x_flat, 0.05, False),
        (build_mlp(mlp, store_cast_to_float(ml_dtypes.bfloat16)), "digits_mlp_bf16.onnx",
         "MLP, BFLOAT16 initializers + Cast to FLOAT", FLAT_IO, x_flat, 0.5, False),
        (build_mlp(mlp, store_as(np.float16), TensorProto.FLOAT16), "digits_mlp_f16full.onnx",
         "MLP, FLOAT16 weights, compute and IO", f16_io, x_flat.astype(np.float16), 0.1, False),
        (build_mlp(mlp, store_as(np.float64), TensorProto.DOUBLE), "digits_mlp_f64.onnx",
         "MLP, DOUBLE weights, compute and IO", f64_io, x_flat.astype(np.float64), 1e-4, False),
        (build_mlp(mlp), "digits_mlp_ext.onnx",
         "MLP, all initializers in external data", FLAT_IO, x_flat, 0.0, True),
        (build_mlp(mlp, store_constant), "digits_mlp_const.onnx",
         "MLP, weights as Constant nodes (no initializers)", FLAT_IO, x_flat, 0.0, False),
        (build_mlp_if(mlp), "digits_mlp_if.onnx",
         "MLP, fc2+relu2 inside both branches of an If (cond initializer `use_branch`=true)",
         FLAT_IO, x_flat, 0.0, False),
        (build_mlp(mlp, store_typed), "digits_mlp_typed.onnx",
         "MLP, initializers in typed `float_data` (not `raw_data`)", FLAT_IO, x_flat, 0.0, False),
    ]
    results = [reference, cnn_result, folded, encoder_result]
    for model, file, what, io, x, atol, external in variants:
        result = evaluate(model, file, what, "as `digits_mlp.onnx`", io, x, y, external)
        compare(result, reference, atol)
        results.append(result)

    # Trained last so that every other model's random stream is unchanged.
    dct = evaluate(
        build_dct(train_dct_mlp(data)), "digits_dct.onnx",
        "fixed DCT front end (not trained) + trained MLP",
        "MatMul with fixed 2-D DCT-II basis `dct.basis` [64,64] (scaled 1/16), Gemm 64→32, Relu, "
        "Gemm 32→10", FLAT_IO, x_flat, y)
    require(dct.accuracy >= 0.95, "DCT MLP accuracy")
    results.append(dct)

    # Models for structured pruning (conv channels, MLP neurons, attention heads).
    resnet, resnet_state = train_resnet(data)
    resnet_result = evaluate(
        build_resnet(resnet, resnet_state), "digits_resnet.onnx",
        "trained ResNet-style CNN: residual `Add`s and a `Concat` of two conv branches",
        "Conv 1→16 3x3, BN, Relu; residual block (2x Conv 16→16 3x3 + BN, Add, Relu); "
        "Concat(Conv 16→8 3x3, Conv 16→8 1x1, each + BN, Relu); residual block; "
        "MaxPool 2x2, Flatten, Gemm 256→32, Relu, Gemm 32→10",
        "`input` [N,1,8,8] → `logits` [N,10]", x_img, y)
    require(resnet_result.accuracy >= 0.95, "ResNet accuracy")
    msattn = evaluate(
        build_encoder(encoder, fused_attention=True), "tiny_encoder_msattn.onnx",
        "`tiny_encoder.onnx` with each self-attention as one fused `com.microsoft.Attention`",
        "as `tiny_encoder.onnx`; Attention (packed QKV [32,96], `num_heads=4`) + out_proj",
        "`input` [N,8,8] → `logits` [N,10]", x_seq, y)
    compare(msattn, encoder_result, atol=1e-4)
    blocked = evaluate(
        build_mlp_blocked(mlp), "digits_mlp_blocked.onnx",
        "MLP with an identity `Einsum` (`bi->bi`) between relu1 and fc2",
        "as `digits_mlp.onnx`", FLAT_IO, x_flat, y)
    compare(blocked, reference, atol=0.0)
    results += [resnet_result, msattn, blocked]

    write_readme_table(results, data_files)


if __name__ == "__main__":
    # Single-threaded BLAS: much faster for these tiny matrices, and it keeps the
    # floating-point reduction order (hence the trained weights) reproducible.
    with threadpool_limits(limits=1):
        main()
