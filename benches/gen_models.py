#!/usr/bin/env python3
"""Synthetic transformer-shaped ONNX models for the emprune benchmark.

Each layer is  x += MatMul(MatMul(x, Wqkv[d,3d]), Wo[3d,d]);  x += MatMul(Relu(MatMul(x, Wup[d,4d])), Wdown[4d,d])
after a token embedding (Gather, not prunable) — 14·d² prunable parameters per layer,
shapes and sizes of a real decoder. Weight values: even layers Gaussian, odd layers
heavy-tailed (a Gaussian scale mixture z·e with e ~ Exp(1), kurtosis ≈ 21), each matrix
scaled by 1/sqrt(fan_in), plus a few large outlier columns in the heavy-tailed layers, as
seen in trained LLMs. Fixed seed; tensors are generated and written one at a time, so the
generator needs memory for one tensor (external data) or for the model (inline).

usage: gen_models.py OUT_DIR [small|medium|large ...]
  small   ~100 MB  f32, inline          (d=512,  6 layers)
  medium  ~1 GB    f32, inline          (d=1536, 7 layers)
  large   ~3.5 GB  f16, external data   (d=4096, 7 layers)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZES = {
    "small": dict(d=512, layers=6, vocab=8000, dtype=np.float32, external=False),
    "medium": dict(d=1536, layers=7, vocab=16000, dtype=np.float32, external=False),
    "large": dict(d=4096, layers=7, vocab=32000, dtype=np.float16, external=True),
}
ALIGN = 4096


def weight(rng, shape, heavy):
    fan_in = shape[0]
    z = rng.standard_normal(shape, dtype=np.float32)
    if heavy:
        z *= rng.standard_exponential(shape, dtype=np.float32)
        cols = rng.choice(shape[1], size=max(1, shape[1] // 512), replace=False)
        z[:, cols] *= 8.0
    z *= np.float32(1.0 / np.sqrt(fan_in))
    return z


class Writer:
    """Collects initializers, inline or streamed to one external data file."""

    def __init__(self, out_path, external):
        self.inits = []
        self.external = external
        if external:
            self.location = os.path.basename(out_path) + ".data"
            self.f = open(out_path + ".data", "wb")
            self.offset = 0

    def add(self, name, arr, onnx_type):
        arr = np.ascontiguousarray(arr)
        t = TensorProto(name=name, data_type=onnx_type, dims=list(arr.shape))
        if self.external:
            pad = (-self.offset) % ALIGN
            self.f.write(b"\0" * pad)
            self.offset += pad
            raw = arr.tobytes()
            self.f.write(raw)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.offset += len(raw)
        else:
            t.raw_data = arr.tobytes()
        self.inits.append(t)

    def close(self):
        if self.external:
            self.f.close()


def build(out_path, d, layers, vocab, dtype, external):
    rng = np.random.default_rng(20250925)
    ot = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    w = Writer(out_path, external)
    nodes = []
    w.add("embed", (rng.standard_normal((vocab, d), dtype=np.float32) * 0.02).astype(dtype), ot)
    nodes.append(helper.make_node("Gather", ["embed", "ids"], ["x0"], name="embed_gather"))
    x = "x0"
    for i in range(layers):
        heavy = i % 2 == 1
        p = f"layers.{i}"
        for nm, shape in (("qkv", (d, 3 * d)), ("o", (3 * d, d)), ("up", (d, 4 * d)), ("down", (4 * d, d))):
            w.add(f"{p}.{nm}.weight", weight(rng, shape, heavy).astype(dtype), ot)
            print(f"  {p}.{nm}.weight {shape}", file=sys.stderr, flush=True)
        nodes += [
            helper.make_node("MatMul", [x, f"{p}.qkv.weight"], [f"{p}.qkv"], name=f"{p}.qkv"),
            helper.make_node("MatMul", [f"{p}.qkv", f"{p}.o.weight"], [f"{p}.attn"], name=f"{p}.o"),
            helper.make_node("Add", [x, f"{p}.attn"], [f"{p}.h"], name=f"{p}.res1"),
            helper.make_node("MatMul", [f"{p}.h", f"{p}.up.weight"], [f"{p}.up"], name=f"{p}.up"),
            helper.make_node("Relu", [f"{p}.up"], [f"{p}.act"], name=f"{p}.act"),
            helper.make_node("MatMul", [f"{p}.act", f"{p}.down.weight"], [f"{p}.mlp"], name=f"{p}.down"),
            helper.make_node("Add", [f"{p}.h", f"{p}.mlp"], [f"{p}.out"], name=f"{p}.res2"),
        ]
        x = f"{p}.out"
    w.close()
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info(x, ot, [1, "seq", d])],
        initializer=w.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="emprune-bench")
    model.ir_version = 8
    with open(out_path, "wb") as f:
        f.write(model.SerializeToString())


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for size in sys.argv[2:] or list(SIZES):
        path = os.path.join(out, f"{size}.onnx")
        if os.path.exists(path):
            print(f"{path} exists, skipping", file=sys.stderr)
            continue
        print(f"generating {path}", file=sys.stderr)
        build(path, **SIZES[size])


if __name__ == "__main__":
    main()
