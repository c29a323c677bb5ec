#!/usr/bin/env python3
"""The straightforward Python implementation of EMP a user would write first (onnx + numpy):
load the whole model, prune every constant MatMul/Gemm/Conv weight with the same rule and
tie-break as emprune (keep floor(N_eff) largest |w|; ties at the cut kept in ascending flat
order, earliest weight first for `global`), save. Prints {"kept": {name: count}} as JSON.

usage: py_emp.py MODEL OUT SCOPE   (SCOPE: tensor | row | global)
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

TOL = 1e-12


def keep_count(l1, l2, n):
    if l2 <= 0:
        return n
    x = min(max(l1 * l1 / l2, 1.0), n)
    return min(max(int(np.floor(x + TOL * max(x, 1.0))), 1), n)


def mask_top(s, k):
    """Keep the k largest of flat |scores| s; ties at the cut in ascending index order."""
    n = s.size
    if k >= n:
        return np.ones(n, bool)
    thr = np.partition(s, n - k)[n - k]
    m = s > thr
    ties = k - int(m.sum())
    m[np.flatnonzero(s == thr)[:ties]] = True
    return m


def weights(model):
    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for n in model.graph.node:
        slot = {"MatMul": 1, "Gemm": 1, "Conv": 1}.get(n.op_type)
        if slot is not None and len(n.input) > slot and n.input[slot] in inits and n.input[slot] not in names:
            names.append(n.input[slot])
    return inits, names


def main():
    path, out, scope = sys.argv[1:4]
    model = onnx.load(path)
    inits, names = weights(model)
    arrays = {nm: numpy_helper.to_array(inits[nm]) for nm in names}
    kept = {}
    if scope == "global":
        s = np.concatenate([np.abs(arrays[nm]).astype(np.float32).ravel() for nm in names])
        l1 = sum(np.abs(arrays[nm]).astype(np.float64).sum() for nm in names)
        l2 = sum(np.square(arrays[nm].astype(np.float64)).sum() for nm in names)
        k = keep_count(l1, l2, s.size)
        m = mask_top(s, k)
        off = 0
        for nm in names:
            w = arrays[nm]
            mm = m[off : off + w.size].reshape(w.shape)
            off += w.size
            arrays[nm] = np.where(mm, w, 0).astype(w.dtype)
    else:
        for nm in names:
            w = arrays[nm]
            a = np.abs(w).astype(np.float32)
            if scope == "tensor":
                s64 = a.astype(np.float64).ravel()
                m = mask_top(a.ravel(), keep_count(s64.sum(), (s64 * s64).sum(), a.size)).reshape(w.shape)
            else:  # row: MatMul B is [in, out]: one vector per output column
                m = np.zeros(w.shape, bool)
                for j in range(w.shape[1]):
                    col = a[:, j]
                    c64 = col.astype(np.float64)
                    m[:, j] = mask_top(col, keep_count(c64.sum(), (c64 * c64).sum(), col.size))
            arrays[nm] = np.where(m, w, 0).astype(w.dtype)
    for nm in names:
        kept[nm] = int(np.count_nonzero(arrays[nm]))
        inits[nm].CopyFrom(numpy_helper.from_array(arrays[nm], nm))
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer) or os.path.exists(path + ".data")
    if external:
        onnx.save_model(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(out) + ".data")
    else:
        onnx.save_model(model, out)
    print(json.dumps({"kept": kept}))


if __name__ == "__main__":
    main()
