#!/usr/bin/env python3
"""onnxsim 0.8.1's own magnitude pruning (`onnxsim.prune_magnitude_cpp`) at a given sparsity:
per-row by default (its only non-global mode), or pooled over all weights with `global`.

usage: sim_prune.py MODEL OUT SPARSITY row|global
"""
import sys

import onnx
import onnxsim


def main():
    path, out, sparsity, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    model = onnx.load(path)
    pruned = onnxsim.prune_magnitude_cpp(model, sparsity=sparsity, global_sparsity=(mode == "global"))
    onnx.save_model(pruned, out)


if __name__ == "__main__":
    main()
