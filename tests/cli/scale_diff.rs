//! `emprune diff` on real pairs (original vs pruned, storage variants, a sparse encoding, one
//! changed attribute, errors) and byte-identical output whatever the thread count.

use std::path::Path;
use std::process::{Command, Output};

use emprune::onnx::proto::tensor_proto::DataType;
use emprune::onnx::proto::{AttributeProto, ModelProto, SparseTensorProto, TensorProto};
use serde_json::Value;

use crate::support::*;

fn diff(a: &Path, b: &Path, extra: &[&str]) -> (i32, Output) {
    let mut args = vec!["diff", p(a), p(b)];
    args.extend_from_slice(extra);
    let out = emprune(&args);
    (out.status.code().unwrap_or(-1), out)
}

fn diff_json(a: &Path, b: &Path) -> (i32, Value) {
    let (code, out) = diff(a, b, &["--json"]);
    assert!(code == 0 || code == 1, "diff failed: {}", String::from_utf8_lossy(&out.stderr));
    (code, serde_json::from_slice(&out.stdout).expect("diff --json prints JSON"))
}

fn prune(m: &Path, out: &Path, scope: &str) -> Value {
    ok_json(&["prune", p(m), "-o", p(out), "--scope", scope, "--no-validate", "--json", "--quiet"])
}

#[test]
fn a_model_is_equivalent_to_itself() {
    let m = model("digits_cnn.onnx");
    let (code, r) = diff_json(&m, &m);
    assert_eq!(code, 0);
    assert_eq!(r["equivalent"], true);
    assert_eq!(r["tensors_changed"], 0);
    assert!(r["a"]["params"].as_u64().unwrap() > 0);
    assert_eq!(r["a"]["macs"], r["b"]["macs"]);
    let (code, text) = diff(&m, &m, &[]);
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&text.stdout).contains("models are equivalent"));
}

#[test]
fn original_vs_dense_pruned_shows_every_pruned_weight() {
    for (m, scope) in [("digits_mlp.onnx", "global"), ("digits_cnn.onnx", "row"), ("digits_mlp_ext.onnx", "tensor")] {
        let dir = tmp();
        let out = dir.path().join("out.onnx");
        let rep = prune(&model(m), &out, scope);
        let (code, d) = diff_json(&model(m), &out);
        assert_eq!(code, 1, "{m}: a pruned model differs");
        assert_eq!(d["equivalent"], false);
        assert_eq!(d["nodes_changed"].as_u64().unwrap() + d["nodes_added"].as_u64().unwrap(), 0, "{m}");
        let rows = d["tensors"].as_array().unwrap();
        for t in rep["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let row = rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{m}: no row for {name}"));
            assert_eq!(row["change"], "changed", "{m} {name}");
            assert_eq!(row["changed"], serde_json::json!(["values"]), "{m} {name}: dense keeps shape/dtype/storage");
            assert_eq!(row["a"]["nonzero"], t["nonzero_before"], "{m} {name}");
            assert_eq!(row["b"]["nonzero"], t["kept"], "{m} {name}");
            assert!(row["b"]["n_eff"].as_f64().unwrap() <= row["b"]["nonzero"].as_f64().unwrap() + 1e-6);
            assert!(row["a"]["n_eff"].as_f64().unwrap() >= 1.0);
        }
        assert_eq!(d["a"]["params"], d["b"]["params"]);
        assert_eq!(
            d["b"]["nonzero_params"].as_u64().unwrap() + rep_dropped(&rep),
            d["a"]["nonzero_params"].as_u64().unwrap()
        );
        assert_eq!(d["a"]["macs"], d["b"]["macs"]);
        assert!(d["b"]["nonzero_macs"].as_u64().unwrap() < d["a"]["nonzero_macs"].as_u64().unwrap(), "{m}");
        let (_, text) = diff(&model(m), &out, &[]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("models differ") && text.contains("non-zero A -> B"), "{text}");
    }
}

fn rep_dropped(rep: &Value) -> u64 {
    rep["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["nonzero_before"].as_u64().unwrap() - t["kept"].as_u64().unwrap())
        .sum()
}

#[test]
fn storage_only_differences_are_reported_but_equivalent() {
    // The external-data and typed-field variants hold the same weights as digits_mlp.onnx.
    for other in ["digits_mlp_ext.onnx", "digits_mlp_typed.onnx"] {
        let (code, d) = diff_json(&model("digits_mlp.onnx"), &model(other));
        let changed: Vec<&Value> = d["tensors"].as_array().unwrap().iter().filter(|r| r["change"] != "same").collect();
        assert!(!changed.is_empty(), "{other}: storage changes are listed");
        for r in &changed {
            assert_eq!(r["changed"], serde_json::json!(["storage"]), "{other}: {r}");
        }
        assert_eq!(code, 0, "{other}: same values in another storage are equivalent");
    }
}

/// `src` with its first 2-D float initializer moved to `sparse_initializer`: only non-zero
/// entries, linear INT64 indices, values in typed `float_data`.
fn sparse_variant(src: &Path, dir: &Path) -> (std::path::PathBuf, String) {
    let mut m: ModelProto = load_proto(src);
    m.ir_version = m.ir_version.max(8);
    let g = m.graph.as_mut().unwrap();
    let pos = g.initializer.iter().position(|t| t.dims.len() == 2).unwrap();
    let t = g.initializer.remove(pos);
    let vals: Vec<f32> = t.raw_data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let kept: Vec<(i64, f32)> =
        vals.iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(i, &v)| (i as i64, v)).collect();
    let values = TensorProto {
        name: t.name.clone(),
        dims: vec![kept.len() as i64],
        data_type: DataType::Float as i32,
        float_data: kept.iter().map(|k| k.1).collect(),
        ..Default::default()
    };
    let indices = TensorProto {
        dims: vec![kept.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: kept.iter().map(|k| k.0).collect(),
        ..Default::default()
    };
    g.sparse_initializer.push(SparseTensorProto { values: Some(values), indices: Some(indices), dims: t.dims.clone() });
    let path = dir.join("sparse.onnx");
    write_model(&path, &m);
    (path, t.name)
}

fn row_of(d: &Value, name: &str) -> Value {
    d["tensors"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone()
}

#[test]
fn sparse_initializers_are_read_without_densifying() {
    let dir = tmp();
    let pruned = dir.path().join("pruned.onnx");
    prune(&model("digits_mlp.onnx"), &pruned, "tensor");
    let (sparse, name) = sparse_variant(&pruned, dir.path());
    // Dense zeros vs the same weight as a sparse initializer: storage only.
    let (code, d) = diff_json(&pruned, &sparse);
    let row = row_of(&d, &name);
    assert_eq!(row["changed"], serde_json::json!(["storage"]), "{row}");
    assert_eq!(row["b"]["storage"], "sparse");
    assert_eq!(row["a"]["nonzero"], row["b"]["nonzero"]);
    assert_eq!(row["a"]["shape"], row["b"]["shape"]);
    assert!(row["b"]["sparsity"].as_f64().unwrap() > 0.1);
    assert_eq!(row["a"]["n_eff"], row["b"]["n_eff"]);
    assert_eq!(code, 0, "the same values as a sparse initializer are equivalent");
    // The original against the sparse pruned model: values differ, MACs still counted.
    let (code, d) = diff_json(&model("digits_mlp.onnx"), &sparse);
    assert_eq!(code, 1);
    let row = row_of(&d, &name);
    assert_eq!(row["changed"], serde_json::json!(["storage", "values"]), "{row}");
    assert_eq!(d["a"]["macs"], d["b"]["macs"]);
}

#[test]
fn one_changed_attribute_is_a_node_change() {
    let dir = tmp();
    let mut m = load_proto(&model("digits_cnn.onnx"));
    let g = m.graph.as_mut().unwrap();
    let conv = g.node.iter_mut().find(|n| n.op_type == "Conv").expect("a Conv node");
    let conv_name = conv.name.clone();
    match conv.attribute.iter_mut().find(|a| a.name == "strides") {
        Some(a) => a.ints = vec![2; a.ints.len()],
        None => conv.attribute.push(AttributeProto {
            name: "strides".into(),
            r#type: 7,
            ints: vec![2, 2],
            ..Default::default()
        }),
    }
    let b = dir.path().join("strided.onnx");
    write_model(&b, &m);
    let (code, d) = diff_json(&model("digits_cnn.onnx"), &b);
    assert_eq!(code, 1);
    assert_eq!(d["nodes_changed"], 1);
    assert_eq!(d["tensors_changed"], 0);
    let node = &d["nodes"][0];
    assert_eq!(node["op_a"], "Conv");
    if !conv_name.is_empty() {
        assert_eq!(node["node"], conv_name.as_str());
    }
    let details = node["details"].as_array().unwrap();
    assert!(details.iter().any(|x| x.as_str().unwrap().contains("strides")), "{details:?}");
    let (_, text) = diff(&model("digits_cnn.onnx"), &b, &[]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("strides"));
}

#[test]
fn diff_errors_exit_2() {
    let dir = tmp();
    let missing = dir.path().join("nope.onnx");
    let (code, out) = diff(&model("digits_mlp.onnx"), &missing, &[]);
    assert_eq!(code, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.onnx"));
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    assert_eq!(diff(&junk, &model("digits_mlp.onnx"), &[]).0, 2);
}

fn prune_with_threads(m: &Path, out: &Path, scope: &str, threads: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_emprune"))
        .args(["prune", p(m), "-o", p(out), "--scope", scope, "--no-validate", "--json"])
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn output_is_byte_identical_whatever_the_thread_count() {
    for m in ["digits_cnn.onnx", "tiny_encoder.onnx", "digits_mlp_ext.onnx", "digits_mlp_f16.onnx"] {
        for scope in SCOPES {
            // Same file name in two folders: the data file's name is part of the model file.
            let (x, y) = (tmp(), tmp());
            let (one, two) = (x.path().join("out.onnx"), y.path().join("out.onnx"));
            prune_with_threads(&model(m), &one, scope, "1");
            prune_with_threads(&model(m), &two, scope, "2");
            assert!(std::fs::read(&one).unwrap() == std::fs::read(&two).unwrap(), "{m} {scope}: model files differ");
            let (d1, d2) = (x.path().join("out.onnx.data"), y.path().join("out.onnx.data"));
            assert_eq!(d1.exists(), d2.exists());
            if d1.exists() {
                assert!(std::fs::read(&d1).unwrap() == std::fs::read(&d2).unwrap(), "{m} {scope}: data files differ");
            }
        }
    }
}

/// A two-MatMul model whose f16 weights are large enough for the streaming paths: exact
/// 16-bit histograms (≥ 65,536 entries), parallel blocks under one cut (> 262,144 entries) and
/// several blocks of rows. Values repeat (ties everywhere) and every 97th is an outlier.
fn large_f16_model(path: &Path) -> Vec<(String, [usize; 2], Vec<f64>)> {
    use emprune::onnx::proto::{GraphProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
    let shapes = [("w1", [640usize, 512usize]), ("w2", [512, 160])];
    let mut weights = vec![];
    let mut inits = vec![];
    for (k, (name, shape)) in shapes.iter().enumerate() {
        let n = shape[0] * shape[1];
        let vals: Vec<half::f16> = (0..n)
            .map(|i| {
                let u = ((i as u64 * 2_654_435_761 + k as u64 * 97) % 1000) as f32 / 1000.0 - 0.5;
                half::f16::from_f32(if i % 97 == 0 { 8.0 * u } else { u })
            })
            .collect();
        inits.push(TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float16 as i32,
            raw_data: vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
            ..Default::default()
        });
        weights.push((name.to_string(), *shape, vals.iter().map(|v| v.to_f64()).collect()));
    }
    let io = |name: &str, d: i64| ValueInfoProto {
        name: name.into(),
        r#type: Some(emprune::onnx::proto::TypeProto {
            value: Some(emprune::onnx::proto::type_proto::Value::TensorType(
                emprune::onnx::proto::type_proto::Tensor {
                    elem_type: DataType::Float16 as i32,
                    shape: Some(emprune::onnx::proto::TensorShapeProto {
                        dim: [1, d]
                            .iter()
                            .map(|&v| emprune::onnx::proto::tensor_shape_proto::Dimension {
                                value: Some(emprune::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |a: &str, b: &str, y: &str| NodeProto {
        op_type: "MatMul".into(),
        name: format!("mm_{y}"),
        input: vec![a.into(), b.into()],
        output: vec![y.into()],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            name: "large_f16".into(),
            node: vec![node("x", "w1", "h"), node("h", "w2", "y")],
            initializer: inits,
            input: vec![io("x", 640)],
            output: vec![io("y", 160)],
            ..Default::default()
        }),
        ..Default::default()
    };
    write_model(path, &m);
    weights
}

/// `⌊N_eff⌋` of `v`, or `None` when `N_eff` is too close to an integer to call.
fn floor_n_eff<'a>(v: impl Iterator<Item = &'a f64>) -> Option<usize> {
    let (l1, l2) = v.fold((0.0, 0.0), |(a, b), x| (a + x.abs(), b + x * x));
    let n_eff = l1 * l1 / l2;
    ((n_eff - n_eff.round()).abs() > 1e-9 * n_eff).then(|| n_eff.floor() as usize)
}

#[test]
fn large_f16_weights_keep_the_rule_s_counts_in_every_scope_and_thread_count() {
    let dir = tmp();
    let src = dir.path().join("large_f16.onnx");
    let weights = large_f16_model(&src);
    for scope in SCOPES {
        let (x, y) = (tmp(), tmp());
        let (one, two) = (x.path().join("out.onnx"), y.path().join("out.onnx"));
        prune_with_threads(&src, &one, scope, "1");
        prune_with_threads(&src, &two, scope, "2");
        assert!(std::fs::read(&one).unwrap() == std::fs::read(&two).unwrap(), "{scope}: outputs differ");
        let nz = nonzeros(&one);
        // Independent reference: the rule on the decoded values, in f64.
        let want: Vec<Option<usize>> = match scope {
            "tensor" => weights.iter().map(|(_, _, v)| floor_n_eff(v.iter())).collect(),
            "global" => {
                let all = floor_n_eff(weights.iter().flat_map(|(_, _, v)| v.iter()));
                let kept: usize = weights.iter().map(|(n, _, _)| nz[n]).sum();
                assert_eq!(Some(kept), all, "global: kept entries");
                continue;
            }
            _ => weights
                .iter()
                .map(|(_, [k, n], v)| {
                    // Rows of a MatMul weight [k, n] are its columns.
                    (0..*n).map(|c| floor_n_eff((0..*k).map(|r| &v[r * n + c]))).sum::<Option<usize>>()
                })
                .collect(),
        };
        for ((name, _, _), want) in weights.iter().zip(want) {
            if let Some(want) = want {
                assert_eq!(nz[name], want, "{scope}: kept entries of {name}");
            }
        }
    }
}

#[test]
fn deciding_while_writing_reports_what_planning_up_front_reports() {
    // `prune` with a local scope decides each weight as it is written; `inspect` plans first.
    let dir = tmp();
    let big = dir.path().join("large_f16.onnx");
    large_f16_model(&big);
    for m in [model("digits_cnn.onnx"), model("digits_mlp_ext.onnx"), big] {
        for scope in ["tensor", "row"] {
            let out = dir.path().join(format!("out_{scope}.onnx"));
            let pruned = prune(&m, &out, scope);
            let planned = ok_json(&["inspect", p(&m), "--scope", scope, "--json"]);
            assert_eq!(pruned["groups"], planned["groups"], "{m:?} {scope}: groups");
            assert_eq!(pruned["tensors"], planned["tensors"], "{m:?} {scope}: tensors");
            assert_eq!(pruned["totals"]["kept"], planned["totals"]["kept"]);
            check_counts(&pruned, &out);
        }
    }
}
