//! Issue #4 through the real CLI: `--format sparse` (round trip, CSR, sizes, re-reading),
//! `--criterion wanda` with calibration data, and the validation guard `--guard`.

use std::collections::HashMap;
use std::path::Path;

use emprune::onnx::proto::tensor_proto::DataType;
use emprune::onnx::proto::{ModelProto, NodeProto, TensorProto};
use emprune::onnx::walk::Index;
use emprune::onnx::Model;
use emprune::weights::{self, Filter};
use serde_json::Value;

use crate::support::*;

const SPARSE_MODELS: [&str; 7] = [
    "digits_mlp.onnx",
    "digits_mlp_const.onnx",
    "digits_mlp_if.onnx",
    "digits_mlp_ext.onnx",
    "digits_mlp_f16.onnx",
    "digits_cnn.onnx",
    "tiny_encoder.onnx",
];

fn prune_to(m: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["prune", p(m), "-o", p(out), "--no-validate", "--json"];
    args.extend_from_slice(extra);
    ok_json(&args)
}

/// Element bytes of every tensor, by value name (sparse tensors densified by the loader).
fn tensors(path: &Path) -> HashMap<String, Vec<u8>> {
    let m = Model::load(path).unwrap();
    let ix = Index::build(&m.proto);
    ix.tensors
        .iter()
        .map(|e| (e.value.clone(), emprune::onnx::tensor::element_bytes(e.tensor, &m.external).unwrap().to_vec()))
        .collect()
}

fn size(path: &Path) -> u64 {
    let data = emprune::onnx::save::data_path(path);
    std::fs::metadata(path).unwrap().len() + std::fs::metadata(data).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn sparse_round_trips_to_the_dense_output_bit_for_bit() {
    for m in SPARSE_MODELS {
        for beta in ["1", "0.5"] {
            let dir = tmp();
            let (dense, sparse) = (dir.path().join("dense.onnx"), dir.path().join("sparse.onnx"));
            prune_to(&model(m), &dense, &["--beta", beta]);
            let r = prune_to(&model(m), &sparse, &["--beta", beta, "--format", "sparse"]);
            assert_eq!(r["format"], "sparse");
            assert_eq!(tensors(&dense), tensors(&sparse), "{m} beta {beta}: sparse != dense");
            check_counts(&r, &sparse);
            let raw = load_proto(&sparse);
            let on_disk = sparse_tensors(&raw);
            let reported: Vec<&str> = r["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["format"] == "sparse")
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            assert_eq!(on_disk.len(), reported.len(), "{m}: {on_disk:?} vs {reported:?}");
            assert_eq!(r["totals"]["sparse_tensors"].as_u64().unwrap() as usize, reported.len());
            if !reported.is_empty() {
                assert!(raw.ir_version >= 6);
                assert!(r["totals"]["sparse_bytes_saved"].as_u64().unwrap() > 0);
            }
            let (sd, ss) = (size(&dense), size(&sparse));
            eprintln!("{m:<24} beta {beta:<3} dense {sd:>7} B  sparse {ss:>7} B  ({} sparse tensors)", reported.len());
            assert!(ss <= sd + 64, "{m}: sparse output larger ({ss} > {sd})");
            if beta == "0.5" {
                assert!(!reported.is_empty() && ss < sd, "{m}: β=0.5 should shrink the file");
            }
        }
    }
}

/// The sparse tensors of a raw (not densified) model, checking the on-disk encoding.
fn sparse_tensors(m: &ModelProto) -> Vec<String> {
    fn go(g: &emprune::onnx::proto::GraphProto, out: &mut Vec<String>) {
        let mut all: Vec<&emprune::onnx::proto::SparseTensorProto> = g.sparse_initializer.iter().collect();
        for n in &g.node {
            for a in &n.attribute {
                all.extend(a.sparse_tensor.as_ref());
                if let Some(sub) = &a.g {
                    go(sub, out);
                }
            }
        }
        for s in all {
            let v = s.values.as_ref().unwrap();
            let ix = s.indices.as_ref().unwrap();
            assert_eq!(ix.data_type, DataType::Int64 as i32);
            let idx: Vec<i64> = if ix.int64_data.is_empty() {
                ix.raw_data.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
            } else {
                ix.int64_data.clone()
            };
            assert_eq!(ix.dims, [idx.len() as i64]);
            assert_eq!(v.dims, [idx.len() as i64]);
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "{}: indices not strictly ascending", v.name);
            out.push(v.name.clone());
        }
    }
    let mut out = vec![];
    go(m.graph.as_ref().unwrap(), &mut out);
    out
}

#[test]
fn csr_times_a_vector_equals_the_dense_masked_product() {
    for m in ["digits_mlp.onnx", "tiny_encoder.onnx", "digits_cnn.onnx"] {
        let dir = tmp();
        let out = dir.path().join("sparse.onnx");
        prune_to(&model(m), &out, &["--format", "sparse", "--beta", "0.5"]);
        let pruned = Model::load(&out).unwrap();
        let ix = Index::build(&pruned.proto);
        let sel = weights::select(&ix, &Filter::default()).unwrap();
        for w in sel.weights {
            let csr = emprune::rewrite::sparse::weight_csr(&pruned, &ix, &w).unwrap();
            let (_, vals) = emprune::onnx::tensor::read_floats(ix.tensors[w.id].tensor, &pruned.external).unwrap();
            let (rows, cols) = csr.shape();
            let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.4).collect();
            let xv = sprs::CsVec::new(cols, (0..cols).collect(), x.clone());
            let mut y = vec![0f32; rows];
            for (i, &v) in (&csr * &xv).iter() {
                y[i] = v;
            }
            // Dense product in the weight's own layout: [out, in] (unit axis 0, also Conv
            // [M, C, k, k] flattened) or MatMul B [in, out] (unit axis 1).
            for r in 0..rows {
                let dense: f64 = (0..cols)
                    .map(|c| {
                        let flat = if w.unit_axes == [0] { r * cols + c } else { c * rows + r };
                        vals[flat] as f64 * x[c] as f64
                    })
                    .sum();
                assert!((dense - y[r] as f64).abs() < 1e-4, "{m} {} row {r}: {dense} vs {}", w.name, y[r]);
            }
            assert_eq!(csr.nnz(), vals.iter().filter(|v| v.to_bits() != 0).count());
        }
    }
}

#[test]
fn sparse_outputs_validate_and_can_be_pruned_again() {
    let dir = tmp();
    let out = dir.path().join("sparse.onnx");
    prune_to(&model("digits_mlp_if.onnx"), &out, &["--format", "sparse", "--beta", "0.5"]);
    let v = ok_json(&["validate", p(&model("digits_mlp_if.onnx")), p(&out), "--json"]);
    assert_eq!(v["validation"]["passed"], true);
    let again = dir.path().join("again.onnx");
    let r = prune_to(&out, &again, &["--format", "sparse"]);
    assert!(r["totals"]["sparsity"].as_f64().unwrap() > 0.69, "re-pruning keeps the zeros");
    check_counts(&r, &again);
}

fn accuracy_run(criterion: &str) -> (f64, f64, f64) {
    let dir = tmp();
    let out = dir.path().join("out.onnx");
    let input = format!("input={}", p(&model("digits_test_x.npy")));
    let calib = format!("input={}", p(&model("digits_calib_x.npy")));
    let (mlp, labels) = (model("digits_mlp.onnx"), model("digits_test_y.npy"));
    let mut args = vec!["prune", p(&mlp), "-o", p(&out), "--criterion", criterion];
    args.extend(["--scope", "row", "--input", &input, "--labels", p(&labels), "--json"]);
    if criterion == "wanda" {
        args.extend(["--calib", &calib]);
    }
    let r = ok_json(&args);
    assert_eq!(r["criterion"], criterion);
    let acc = &r["validation"]["accuracy"];
    (r["totals"]["sparsity"].as_f64().unwrap(), acc["original"].as_f64().unwrap(), acc["pruned"].as_f64().unwrap())
}

#[test]
fn wanda_prunes_more_than_magnitude_per_row_at_no_worse_accuracy() {
    let (sm, dense, am) = accuracy_run("magnitude");
    let (sw, _, aw) = accuracy_run("wanda");
    eprintln!("digits_mlp row β=1: dense accuracy {:.2}%", 100.0 * dense);
    eprintln!("  magnitude: sparsity {:.1}%, accuracy {:.2}%", 100.0 * sm, 100.0 * am);
    eprintln!("  wanda:     sparsity {:.1}%, accuracy {:.2}%", 100.0 * sw, 100.0 * aw);
    assert!(sw > sm, "wanda sparsity {sw} <= magnitude {sm}");
    assert!(aw >= am - 0.01, "wanda accuracy {aw} more than 1 pp below magnitude {am}");
}

#[test]
fn wanda_defaults_to_row_scope_and_needs_calibration_data() {
    let dir = tmp();
    let out = dir.path().join("out.onnx");
    let o = emprune(&["prune", p(&model("digits_mlp.onnx")), "-o", p(&out), "--criterion", "wanda"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--calib") && err.contains("random"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
    let calib = format!("input={}", p(&model("digits_calib_x.npy")));
    let r = ok_json(&["inspect", p(&model("digits_mlp.onnx")), "--criterion", "wanda", "--calib", &calib, "--json"]);
    assert_eq!(r["scope"], "row");
    let o = emprune(&["inspect", p(&model("digits_mlp.onnx")), "--calib", &calib]);
    assert_eq!(o.status.code(), Some(2), "--calib without wanda is refused");
}

#[test]
fn wanda_runs_on_conv_and_matmul_models() {
    for (m, x) in [("digits_cnn.onnx", "digits_calib_x_img.npy"), ("tiny_encoder.onnx", "digits_test_x_seq.npy")] {
        let calib = format!("input={}", p(&model(x)));
        let r = ok_json(&["inspect", p(&model(m)), "--criterion", "wanda", "--calib", &calib, "--json"]);
        let sp = r["totals"]["sparsity"].as_f64().unwrap();
        eprintln!("{m}: wanda row sparsity {:.1}%", 100.0 * sp);
        assert!(sp > 0.2 && sp < 0.9, "{m}: {sp}");
    }
}

/// Gemm `y = x · Wᵀ` with W [3, 4] whose column 2 holds the largest weights, and calibration
/// data in which input feature 2 is always 0.
fn dead_feature_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let w: Vec<f32> = (0..12).map(|i| if i % 4 == 2 { 5.0 } else { 0.5 + 0.1 * i as f32 }).collect();
    let init = TensorProto {
        name: "w".into(),
        dims: vec![3, 4],
        data_type: DataType::Float as i32,
        float_data: w,
        ..Default::default()
    };
    let node = NodeProto {
        op_type: "Gemm".into(),
        name: "fc".into(),
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        attribute: vec![emprune::onnx::proto::AttributeProto {
            name: "transB".into(),
            r#type: 2,
            i: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let m = tiny_model(vec![init], vec![node], "x", &[4], "y", &[3]);
    let path = dir.join("dead.onnx");
    write_model(&path, &m);
    let mut x = vec![0f32; 16 * 4];
    for (i, v) in x.iter_mut().enumerate() {
        if i % 4 != 2 {
            *v = 1.0 + (i % 5) as f32;
        }
    }
    let calib = dir.join("calib.npy");
    write_npy_f32(&calib, &[16, 4], &x);
    (path, calib)
}

#[test]
fn a_feature_whose_activations_are_all_zero_is_pruned_first() {
    let dir = tmp();
    let (m, calib) = dead_feature_model(dir.path());
    let out = dir.path().join("out.onnx");
    let c = format!("x={}", p(&calib));
    let r = prune_to(&m, &out, &["--criterion", "wanda", "--calib", &c]);
    let w = &tensors(&out)["w"];
    let vals: Vec<f32> = w.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    for row in vals.chunks(4) {
        assert_eq!(row[2], 0.0, "the dead feature's (largest) weight survived: {row:?}");
    }
    assert!(r["totals"]["kept"].as_u64().unwrap() >= 3);
    // Magnitude keeps exactly those entries.
    let out2 = dir.path().join("mag.onnx");
    prune_to(&m, &out2, &["--scope", "row"]);
    let w = &tensors(&out2)["w"];
    let vals: Vec<f32> = w.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(vals.chunks(4).all(|row| row[2] == 5.0));
}

#[test]
fn guard_restores_the_fixed_transform_and_passes() {
    let dir = tmp();
    let input = format!("input={}", p(&model("digits_test_x.npy")));
    let labels = model("digits_test_y.npy");
    let plain = dir.path().join("plain.onnx");
    let o = emprune(&["prune", p(&model("digits_dct.onnx")), "-o", p(&plain), "--input", &input, "--json"]);
    assert_eq!(o.status.code(), Some(1), "pruning the fixed DCT basis should fail validation");
    let out = dir.path().join("guarded.onnx");
    let r = ok_json(&[
        "prune",
        p(&model("digits_dct.onnx")),
        "-o",
        p(&out),
        "--guard",
        "--format",
        "sparse",
        "--input",
        &input,
        "--labels",
        p(&labels),
        "--json",
    ]);
    let g = &r["guard"];
    eprintln!("guard: {g}");
    assert_eq!(g["restored"], serde_json::json!(["dct.basis"]));
    assert_eq!(g["passed"], true);
    assert!(g["validations"].as_u64().unwrap() >= 2);
    let (before, after) = (g["sparsity_before"].as_f64().unwrap(), g["sparsity_after"].as_f64().unwrap());
    assert!(before > after && after > 0.1, "{before} -> {after}");
    assert_eq!(r["validation"]["passed"], true);
    let acc = &r["validation"]["accuracy"];
    assert!(acc["pruned"].as_f64().unwrap() >= acc["original"].as_f64().unwrap() - 0.02);
    check_counts(&r, &out);
    assert_eq!(tensors(&out)["dct.basis"], tensors(&model("digits_dct.onnx"))["dct.basis"]);
    // No culprit: nothing restored, one validation.
    let out2 = dir.path().join("mlp.onnx");
    let r = ok_json(&["prune", p(&model("digits_mlp.onnx")), "-o", p(&out2), "--guard", "--input", &input, "--json"]);
    assert_eq!(r["guard"]["restored"], serde_json::json!([]));
    assert_eq!(r["guard"]["validations"], 1);
    let o = emprune(&["prune", p(&model("digits_mlp.onnx")), "-o", p(&out2), "--guard", "--no-validate"]);
    assert_eq!(o.status.code(), Some(2));
}

pub fn tiny_model(
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    input: &str,
    in_dims: &[i64],
    output: &str,
    out_dims: &[i64],
) -> ModelProto {
    use emprune::onnx::proto::{
        tensor_shape_proto::{dimension::Value as Dim, Dimension},
        type_proto, GraphProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    let vi = |name: &str, dims: &[i64]| {
        let mut d = vec![Dimension { value: Some(Dim::DimParam("N".into())), ..Default::default() }];
        d.extend(dims.iter().map(|&v| Dimension { value: Some(Dim::DimValue(v)), ..Default::default() }));
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto { dim: d }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![vi(input, in_dims)],
            output: vec![vi(output, out_dims)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims = match shape {
        [d] => format!("{d},"),
        _ => shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}
