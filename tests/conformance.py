"""onnxruntime conformance check of emprune's pruned models.

For every bundled model (``models/*.onnx``) and every scope (global, tensor, row) this
runs ``emprune prune MODEL -o OUT --scope S --save-io IO --json`` and then checks, with
tools independent of emprune:

(a) ``onnx.checker.check_model(OUT, full_check=True)`` accepts the output (loaded by
    path, so external data is checked too);
(b) onnxruntime (CPUExecutionProvider) fed the saved inputs reproduces tract's
    ``pruned_output_i.npy`` within a tolerance fitting the output dtype (looser when
    emprune's ``precision_note`` says tract ran the model widened to f32);
(c) every reported tensor (initializers, ``Constant`` nodes, subgraphs, external data)
    has exactly ``kept`` non-zeros, every entry is either bit-identical to the original
    or 0, and no other tensor of the model changed;
(d) the input model and its external data files are byte-for-byte unchanged.

Every model is also pruned with ``--format sparse --beta 0.5`` (``run_sparse_case``):
onnxruntime must load the sparse output and give exactly the dense-format output's
results, and every sparse tensor must densify to the dense output's tensor bit for bit.
Models listed in ``GUARDED`` (a fixed transform that must not be pruned) run with ``--guard``.

Models whose single input matches a bundled test array (``models/digits_test_x*.npy``)
are validated on those 540 real samples; any other model on emprune's seeded random
inputs. Prints one line per case and ends with ``N passed, M failed``; exits non-zero
if anything failed. Missing onnx/onnxruntime/numpy is an error, never a skip.

Usage: python tests/conformance.py --emprune target/release/emprune [--models DIR]
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
except ImportError as e:  # fail loudly: a conformance run without its checkers is no run
    sys.exit(f"conformance: missing Python package ({e}); install tests/requirements.txt")

SCOPES = ("global", "tensor", "row")
REPO = Path(__file__).resolve().parent.parent
TEST_ARRAYS = ("digits_test_x.npy", "digits_test_x_img.npy", "digits_test_x_seq.npy")
LABELS = "digits_test_y.npy"

# (rtol, atol relative to the output's largest |value|) per dtype of the compared output.
TOLERANCE = {
    np.dtype(np.float64): (1e-9, 1e-9),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float16): (1e-2, 5e-3),
}
# When tract ran an f16/f64 model widened to f32 (emprune's `precision_note`), the two
# runtimes compute in different precisions: the coarser of the two sets the tolerance.
WIDENED = {np.dtype(np.float64): TOLERANCE[np.dtype(np.float32)], np.dtype(np.float16): (1e-2, 5e-3)}


class CaseError(Exception):
    """A conformance check failed; the message says which and why."""


# ---------------------------------------------------------------------------- helpers


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def input_files(model_path):
    """The model file and every external data file it references."""
    proto = onnx.load(str(model_path), load_external_data=False)
    files = {Path(model_path)}
    for t in all_tensors(proto.graph).values():
        for entry in t.external_data:
            if entry.key == "location":
                files.add(Path(model_path).parent / entry.value)
    return sorted(files)


def node_label(node, index):
    return node.name or f"{node.op_type}#{index}"


def all_tensors(graph, path="main"):
    """{(graph path, value name): TensorProto} for initializers and Constant values,
    subgraphs included; graph paths follow emprune's report (`main/if_node.then_branch`)."""
    out = {(path, t.name): t for t in graph.initializer}
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[(path, node.output[0])] = a.t
        for a in node.attribute:
            subs = [(a.name, a.g)] if a.HasField("g") else []
            subs += [(f"{a.name}[{k}]", g) for k, g in enumerate(a.graphs)]
            for attr, g in subs:
                out.update(all_tensors(g, f"{path}/{node_label(node, i)}.{attr}"))
    return out


def bits(a):
    """The raw bit patterns of an array, one unsigned integer per entry."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a


def nonzero_mask(a):
    """Entries that are not ±0 (bf16/f16 go through f64, which holds them exactly)."""
    return a.astype(np.float64) != 0


def real_inputs(model_path):
    """`--input`/`--labels` flags for a model whose only input fits a bundled test array."""
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        return []
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    for name in TEST_ARRAYS:
        path = model_path.parent / name
        if not path.exists():
            continue
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) == len(dims) and all(d in (None, s) for d, s in zip(dims, shape)):
            flags = ["--input", f"{inputs[0].name}={path}"]
            labels = model_path.parent / LABELS
            return flags + (["--labels", str(labels)] if labels.exists() else [])
    return []


# ----------------------------------------------------------------------------- checks


def run_emprune(binary, model, out, io_dir, scope, extra=()):
    cmd = [str(binary), "prune", str(model), "-o", str(out), "--scope", scope,
           "--save-io", str(io_dir), "--json", *real_inputs(model), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise CaseError(f"emprune exited {proc.returncode}: {' | '.join(tail)}")
    return json.loads(proc.stdout)


def check_onnx(out):
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as e:  # noqa: BLE001 — the checker raises several types
        raise CaseError(f"onnx.checker: {str(e).splitlines()[0]}") from e


def check_ort(out, io_dir, report):
    """Runs the pruned model in onnxruntime; returns max |ORT − tract| over all outputs."""
    io = json.loads((io_dir / "io.json").read_text())
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    dtypes = {i.name: ort_numpy_dtype(i.type) for i in sess.get_inputs()}
    feeds = {}
    for key, name in io.items():
        if key.startswith("input_"):
            feeds[name] = np.load(io_dir / f"{key}.npy").astype(dtypes[name])
    results = sess.run(None, feeds)
    widened = bool(report["validation"].get("precision_note"))
    worst = 0.0
    for i, got in enumerate(results):
        want = np.load(io_dir / f"pruned_output_{i}.npy")
        worst = max(worst, compare_output(io[f"output_{i}"], got, want, widened))
    return worst


def ort_numpy_dtype(type_str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    if type_str not in table:
        raise CaseError(f"unsupported input type {type_str}")
    return table[type_str]


def compare_output(name, got, want, widened):
    if got.shape != want.shape:
        raise CaseError(f"output {name}: ORT shape {got.shape} vs tract {want.shape}")
    table = WIDENED if widened and got.dtype in WIDENED else TOLERANCE
    rtol, atol = table.get(got.dtype, (0.0, 0.0))
    g, w = got.astype(np.float64), want.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
    diff = np.abs(g - w)
    if not np.all(np.isfinite(g) == np.isfinite(w)) or np.any(diff > atol * scale + rtol * np.abs(w)):
        raise CaseError(f"output {name}: max |ORT-tract| {np.nanmax(diff):.3e} "
                        f"exceeds rtol {rtol:g}, atol {atol:g}x{scale:.3g}")
    return float(np.nanmax(diff, initial=0.0))


def check_tensors(original, pruned, report):
    """Recounts non-zeros independently and compares every tensor against the original."""
    before, after = all_tensors(original.graph), all_tensors(pruned.graph)
    if before.keys() != after.keys():
        raise CaseError(f"tensor set changed: {sorted(before.keys() ^ after.keys())[:3]}")
    reported = {}
    for t in report["tensors"]:
        key = (t["graph"], t["name"])
        if key not in after:
            raise CaseError(f"reported tensor {key} not found in the pruned model")
        reported[key] = t
    total_kept = 0
    for key, proto in after.items():
        old, new = numpy_helper.to_array(before[key]), numpy_helper.to_array(proto)
        if old.shape != new.shape or old.dtype != new.dtype:
            raise CaseError(f"{key}: {old.dtype}{list(old.shape)} became {new.dtype}{list(new.shape)}")
        if key not in reported:
            if not np.array_equal(bits(old), bits(new)):
                raise CaseError(f"{key} is not a reported weight but changed")
            continue
        total_kept += check_pruned_tensor(key, old, new, reported[key])
    if total_kept != report["totals"]["kept"]:
        raise CaseError(f"totals.kept {report['totals']['kept']} != recounted {total_kept}")


def check_pruned_tensor(key, old, new, entry):
    """Kept entries bit-identical, the rest 0, and counts as reported; returns kept."""
    kept_mask = nonzero_mask(new)
    same = bits(old) == bits(new)
    if not np.all(same | ~kept_mask):
        raise CaseError(f"{key}: {int(np.sum(~same & kept_mask))} non-zero entries differ from the original")
    counts = {"n": new.size, "nonzero_before": int(nonzero_mask(old).sum()), "kept": int(kept_mask.sum())}
    for field, value in counts.items():
        if entry[field] != value:
            raise CaseError(f"{key}: report {field}={entry[field]}, recounted {value}")
    if list(entry["shape"]) != list(new.shape):
        raise CaseError(f"{key}: report shape {entry['shape']} != {list(new.shape)}")
    return counts["kept"]


def check_unchanged(hashes):
    for path, digest in hashes.items():
        if sha256(path) != digest:
            raise CaseError(f"input file {path.name} was modified")


# ------------------------------------------------------------------------------ driver


def run_case(binary, model, scope, tmp):
    """Runs every check on one model×scope; returns (sparsity, max |ORT−tract|)."""
    hashes = {p: sha256(p) for p in input_files(model)}
    out, io_dir = tmp / f"{model.stem}.{scope}.onnx", tmp / f"{model.stem}.{scope}.io"
    if model.stem in NO_TRACT:
        report = run_unvalidated(binary, model, out, ("--scope", scope))
        check_onnx(out)
        worst = check_ort_runs(out)
        check_tensors(onnx.load(str(model)), onnx.load(str(out)), report)
        check_unchanged(hashes)
        return report["totals"]["sparsity"], worst
    report = run_emprune(binary, model, out, io_dir, scope, guard_flags(model))
    check_onnx(out)
    worst = check_ort(out, io_dir, report)
    check_tensors(onnx.load(str(model)), onnx.load(str(out)), report)
    check_unchanged(hashes)
    return report["totals"]["sparsity"], worst


# Models tract 0.23 cannot run (it takes com.microsoft.Attention for ONNX's own Attention
# and panics; emprune reports that as an error): pruned with --no-validate, and onnxruntime
# alone checks that the output loads, runs and matches the original's output shape.
NO_TRACT = ("tiny_encoder_msattn",)


def run_unvalidated(binary, model, out, extra):
    cmd = [str(binary), "prune", str(model), "-o", str(out), "--no-validate", "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CaseError(f"emprune exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def check_ort_runs(out):
    """onnxruntime loads and runs `out` on seeded random inputs; returns 0 (no tract reference)."""
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 8 for d in i.shape]
        feed[i.name] = rng.standard_normal(shape).astype(ort_numpy_dtype(i.type))
    for o in sess.run(None, feed):
        if not np.all(np.isfinite(o)):
            raise CaseError("onnxruntime produced non-finite outputs")
    return 0.0


# Models holding a fixed, weight-shaped transform (not trained): pruning it fails validation
# by design, so they are pruned with --guard, which restores it.
GUARDED = ("digits_dct",)


def guard_flags(model):
    return ("--guard",) if model.stem in GUARDED else ()


def sparse_tensors_dense(graph, path="main"):
    """{(graph path, name): dense ndarray} of every sparse initializer / sparse Constant."""
    out = {}
    for s in graph.sparse_initializer:
        out[(path, s.values.name)] = densify(s)
    for i, node in enumerate(graph.node):
        for a in node.attribute:
            if a.name == "sparse_value" and a.HasField("sparse_tensor"):
                out[(path, node.output[0])] = densify(a.sparse_tensor)
            subs = [(a.name, a.g)] if a.HasField("g") else []
            subs += [(f"{a.name}[{k}]", g) for k, g in enumerate(a.graphs)]
            for attr, g in subs:
                out.update(sparse_tensors_dense(g, f"{path}/{node_label(node, i)}.{attr}"))
    return out


def densify(s):
    """Dense array of a SparseTensorProto with INT64 linear indices [NNZ] (ascending)."""
    values, indices = numpy_helper.to_array(s.values), numpy_helper.to_array(s.indices)
    if s.indices.data_type != onnx.TensorProto.INT64 or indices.ndim != 1:
        raise CaseError(f"{s.values.name}: indices are not INT64 [NNZ]")
    if np.any(np.diff(indices) <= 0):
        raise CaseError(f"{s.values.name}: indices are not strictly ascending")
    dense = np.zeros(int(np.prod(s.dims)), dtype=values.dtype)
    dense[indices] = values
    return dense.reshape(tuple(s.dims))


def run_sparse_case(binary, model, tmp):
    """`--format sparse --beta 0.5`: onnxruntime loads and runs the sparse output with the
    same outputs as the dense-format output and as tract; every sparse tensor densifies to
    the dense output's tensor bit for bit; the reported sparse tensors are the ones on disk.
    (onnx.checker's full check does not accept sparse initializers: the plain check runs.)
    Returns (sparse tensors, bytes saved, max |ORT sparse − ORT dense|)."""
    hashes = {p: sha256(p) for p in input_files(model)}
    extra = ("--beta", "0.5", "--min-cosine", "0", *guard_flags(model))
    dense, dense_io = tmp / f"{model.stem}.dense.onnx", tmp / f"{model.stem}.dense.io"
    sparse, sparse_io = tmp / f"{model.stem}.sparse.onnx", tmp / f"{model.stem}.sparse.io"
    run_emprune(binary, model, dense, dense_io, "global", extra)
    report = run_emprune(binary, model, sparse, sparse_io, "global", (*extra, "--format", "sparse"))
    onnx.checker.check_model(onnx.load(str(sparse)))
    check_ort(sparse, sparse_io, report)
    io = json.loads((sparse_io / "io.json").read_text())
    worst = 0.0
    for i in range(sum(1 for k in io if k.startswith("output_"))):
        a = np.load(sparse_io / f"pruned_output_{i}.npy").astype(np.float64)
        b = np.load(dense_io / f"pruned_output_{i}.npy").astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
    feeds_dtype = {i.name: ort_numpy_dtype(i.type) for i in ort.InferenceSession(str(dense)).get_inputs()}
    feeds = {n: np.load(sparse_io / f"{k}.npy").astype(feeds_dtype[n]) for k, n in io.items() if k.startswith("input_")}
    got = ort.InferenceSession(str(sparse), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = ort.InferenceSession(str(dense), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        if not np.array_equal(g, w):
            raise CaseError(f"ORT sparse vs dense output differs by {np.max(np.abs(g.astype(np.float64) - w)):.3e}")
    on_disk = sparse_tensors_dense(onnx.load(str(sparse)).graph)
    dense_tensors = all_tensors(onnx.load(str(dense)).graph)
    for key, arr in on_disk.items():
        ref = numpy_helper.to_array(dense_tensors[key])
        if arr.shape != ref.shape or not np.array_equal(bits(arr.astype(ref.dtype)), bits(ref)):
            raise CaseError(f"sparse {key} does not densify to the dense output's tensor")
    reported = {(t["graph"], t["name"]) for t in report["tensors"] if t["format"] == "sparse"}
    if reported != set(on_disk):
        raise CaseError(f"reported sparse tensors {sorted(reported)} != on disk {sorted(on_disk)}")
    check_unchanged(hashes)
    return len(on_disk), report["totals"]["sparse_bytes_saved"], worst


# Structured pruning (--level): models and levels whose outputs must load and run in
# onnxruntime, pass the full checker, and match tract. β < 1 for heads so some are removed.
STRUCTURED = (
    ("digits_mlp", "channel", "1"),
    ("digits_cnn", "channel", "1"),
    ("digits_cnn_bnfold", "channel", "1"),
    ("digits_resnet", "channel", "1"),
    ("tiny_encoder", "channel", "1"),
    ("tiny_encoder", "head", "0.75"),
    ("tiny_encoder_msattn", "head", "0.75"),
)


def run_structured_case(binary, model, level, beta, tmp):
    """Checks (a), (b), (d) on a structurally pruned model; returns (removed, max |ORT−tract|)."""
    hashes = {p: sha256(p) for p in input_files(model)}
    out, io_dir = tmp / f"{model.stem}.{level}.onnx", tmp / f"{model.stem}.{level}.io"
    flags = ("--scope", "layer", "--level", level, "--beta", beta)
    if model.stem in NO_TRACT:
        report = run_unvalidated(binary, model, out, flags)
        check_onnx(out)
        worst = check_ort_runs(out)
    else:
        report = run_emprune(binary, model, out, io_dir, "layer", flags[2:] + ("--min-cosine", "0"))
        check_onnx(out)
        worst = check_ort(out, io_dir, report)
    check_unchanged(hashes)
    removed = sum(len(s["removed"]) for s in report["structures"])
    before = sum(numpy_helper.to_array(t).size for t in onnx.load(str(model)).graph.initializer)
    after = sum(numpy_helper.to_array(t).size for t in onnx.load(str(out)).graph.initializer)
    if removed and after >= before:
        raise CaseError(f"{removed} structures removed but parameters went {before} -> {after}")
    return removed, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emprune", required=True, type=Path, help="the emprune binary")
    ap.add_argument("--models", type=Path, default=REPO / "models", help="folder of .onnx models")
    args = ap.parse_args()
    if not args.emprune.is_file():
        sys.exit(f"conformance: no emprune binary at {args.emprune}")
    models = sorted(args.models.glob("*.onnx"))
    if not models:
        sys.exit(f"conformance: no .onnx models in {args.models}")
    ort.set_default_logger_severity(3)
    print(f"{'model':<22} {'scope':<7} {'sparsity':>8} {'max|ORT-tract|':>15}  status")
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="emprune-conformance-") as tmp:
        for model in models:
            for scope in SCOPES:
                try:
                    sparsity, worst = run_case(args.emprune, model, scope, Path(tmp))
                    print(f"{model.stem:<22} {scope:<7} {sparsity:>8.2%} {worst:>15.2e}  ok")
                    passed += 1
                except Exception as e:  # noqa: BLE001 — any error fails this case only
                    why = e if isinstance(e, CaseError) else f"{type(e).__name__}: {e}"
                    print(f"{model.stem:<22} {scope:<7} {'-':>8} {'-':>15}  FAIL: {why}")
                    failed += 1
        for stem, level, beta in STRUCTURED:
            model = args.models / f"{stem}.onnx"
            if not model.exists():
                print(f"{stem:<22} {level:<7} {'-':>8} {'-':>15}  FAIL: model missing")
                failed += 1
                continue
            try:
                removed, worst = run_structured_case(args.emprune, model, level, beta, Path(tmp))
                print(f"{stem:<22} {level:<7} {removed:>7}r {worst:>15.2e}  ok")
                passed += 1
            except Exception as e:  # noqa: BLE001 — any error fails this case only
                why = e if isinstance(e, CaseError) else f"{type(e).__name__}: {e}"
                print(f"{stem:<22} {level:<7} {'-':>8} {'-':>15}  FAIL: {why}")
                failed += 1
        # The sparse case compares against tract's outputs, which NO_TRACT models cannot give.
        for model in (m for m in models if m.stem not in NO_TRACT):
            try:
                n, saved, worst = run_sparse_case(args.emprune, model, Path(tmp))
                print(f"{model.stem:<22} {'sparse':<7} {n:>7}t {worst:>15.2e}  ok ({saved} bytes saved)")
                passed += 1
            except Exception as e:  # noqa: BLE001 — any error fails this case only
                why = e if isinstance(e, CaseError) else f"{type(e).__name__}: {e}"
                print(f"{model.stem:<22} {'sparse':<7} {'-':>8} {'-':>15}  FAIL: {why}")
                failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
