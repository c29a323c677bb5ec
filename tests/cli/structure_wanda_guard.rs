//! Structured pruning with activation-aware scores (`--level channel --criterion wanda`), the
//! validation guard over structure groups (`--level … --guard`), and `emprune diff` between an
//! original and its structured output.

use std::path::{Path, PathBuf};

use emprune::onnx::proto::tensor_proto::DataType;
use emprune::onnx::proto::{AttributeProto, NodeProto, TensorProto};
use serde_json::{json, Value};

use crate::sparse_wanda_guard::{tiny_model, write_npy_f32};
use crate::support::*;

fn init(name: &str, dims: &[i64], v: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: v,
        ..Default::default()
    }
}

fn gemm(name: &str, ins: [&str; 3], out: &str) -> NodeProto {
    NodeProto {
        op_type: "Gemm".into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: vec![AttributeProto { name: "transB".into(), r#type: 2, i: 1, ..Default::default() }],
        ..Default::default()
    }
}

/// `x[8] → fc1 (4 neurons) → Relu → fc2 → y`. Neurons 0–2 are identical and read pixels 0–5;
/// neuron 3 has by far the largest weights but reads only pixels 6 and 7, which are 0 in every
/// calibration sample (its bias is 0, so it is dead on that data). Returns (model, calib).
fn dead_neuron_mlp(dir: &Path) -> (PathBuf, PathBuf) {
    let w1: Vec<f32> = (0..32)
        .map(|i| {
            if i / 8 < 3 {
                if i % 8 < 6 {
                    0.5
                } else {
                    0.0
                }
            } else if i % 8 >= 6 {
                4.0
            } else {
                0.0
            }
        })
        .collect();
    let w2: Vec<f32> = (0..8).map(|i| if i % 4 == 3 { 2.0 } else { 0.5 + 0.25 * (i / 4) as f32 }).collect();
    let nodes = vec![
        gemm("fc1", ["x", "w1", "b1"], "h"),
        NodeProto {
            op_type: "Relu".into(),
            name: "relu".into(),
            input: vec!["h".into()],
            output: vec!["r".into()],
            ..Default::default()
        },
        gemm("fc2", ["r", "w2", "b2"], "y"),
    ];
    let inits = vec![
        init("w1", &[4, 8], w1),
        init("b1", &[4], vec![0.0; 4]),
        init("w2", &[2, 4], w2),
        init("b2", &[2], vec![0.1, -0.1]),
    ];
    let path = dir.join("dead_neuron.onnx");
    write_model(&path, &tiny_model(inits, nodes, "x", &[8], "y", &[2]));
    let x: Vec<f32> = (0..16 * 8).map(|i| if i % 8 >= 6 { 0.0 } else { 1.0 + ((i * 7) % 5) as f32 }).collect();
    let calib = dir.join("calib.npy");
    write_npy_f32(&calib, &[16, 8], &x);
    (path, calib)
}

fn fc1(r: &Value) -> &Value {
    r["structures"].as_array().unwrap().iter().find(|s| s["producer"] == "fc1").expect("an fc1 group")
}

#[test]
fn wanda_removes_the_neuron_that_reads_only_dead_inputs() {
    let dir = tmp();
    let (m, calib) = dead_neuron_mlp(dir.path());
    let (c, x) = (format!("x={}", p(&calib)), format!("x={}", p(&calib)));
    let out = dir.path().join("wanda.onnx");
    let args = ["--level", "channel", "--input", &x, "--min-cosine", "0.99999", "--json"];
    let mut w = vec!["prune", p(&m), "-o", p(&out), "--criterion", "wanda", "--calib", &c];
    w.extend(args);
    let r = ok_json(&w);
    assert_eq!(r["criterion"], "wanda");
    // Three equal scores and a zero: N_eff = 3, exactly the dead neuron goes.
    assert_eq!(fc1(&r)["removed"], json!([3]), "{}", fc1(&r));
    assert_eq!(r["validation"]["passed"], true, "removing a dead neuron is exact on its data");
    assert_eq!(load_proto(&out).graph.unwrap().initializer.iter().find(|t| t.name == "w1").unwrap().dims, [3, 8]);
    // L2 sees only weights: the dead neuron has the largest norm and survives.
    let l2 = ok_json(&["inspect", p(&m), "--level", "channel", "--json"]);
    let removed = fc1(&l2)["removed"].as_array().unwrap().clone();
    assert!(!removed.is_empty() && !removed.contains(&json!(3)), "l2 removed {removed:?}");
}

#[test]
fn wanda_channels_shrink_the_trained_mlp_and_need_calibration_data() {
    let dir = tmp();
    let mlp = model("digits_mlp.onnx");
    let calib = format!("input={}", p(&model("digits_calib_x.npy")));
    let input = format!("input={}", p(&model("digits_test_x.npy")));
    let labels = model("digits_test_y.npy");
    let run = |criterion: &str, out: &Path| {
        let mut a = vec!["prune", p(&mlp), "-o", p(out), "--level", "channel", "--criterion", criterion];
        if criterion == "wanda" {
            a.extend(["--calib", &calib]);
        }
        a.extend(["--input", &input, "--labels", p(&labels), "--json"]);
        ok_json(&a)
    };
    let (wo, lo) = (dir.path().join("w.onnx"), dir.path().join("l.onnx"));
    let (w, l) = (run("wanda", &wo), run("l2", &lo));
    assert_eq!(w["validation"]["passed"], true);
    let params = |r: &Value, k: &str| r["totals"][k].as_u64().unwrap();
    assert!(params(&w, "kept") < params(&w, "params"), "wanda removed nothing");
    assert!(w["totals"]["macs_after"].as_u64() < w["totals"]["macs_before"].as_u64());
    // Activation-aware scores are less uniform than the weight norms: EMP keeps fewer neurons.
    assert!(params(&w, "kept") < params(&l, "kept"), "wanda {} vs l2 {}", params(&w, "kept"), params(&l, "kept"));
    let acc = &w["validation"]["accuracy"];
    assert!(acc["pruned"].as_f64().unwrap() >= acc["original"].as_f64().unwrap() - 0.02, "{acc}");
    // The written file is what the report says.
    let d = ok_json_code(&["diff", p(&mlp), p(&wo), "--json"], 1);
    assert_eq!(d["b"]["params"].as_u64().unwrap(), params(&w, "kept"));
    // Calibration data is required, and magnitude is not a structure criterion.
    for bad in [&["--criterion", "wanda"][..], &["--criterion", "magnitude"][..]] {
        let mut a = vec!["inspect", p(&mlp), "--level", "channel"];
        a.extend(bad);
        let o = emprune(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(if bad[1] == "wanda" { "--calib" } else { "l2, l1 or wanda" }), "{err}");
    }
}

fn ok_json_code(args: &[&str], code: i32) -> Value {
    let o = emprune(args);
    assert_eq!(o.status.code(), Some(code), "emprune {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("stdout is not JSON")
}

#[test]
fn guard_restores_the_structure_group_of_a_fixed_transform() {
    let dir = tmp();
    let dct = model("digits_dct.onnx");
    let input = format!("input={}", p(&model("digits_test_x.npy")));
    let out = dir.path().join("plain.onnx");
    let base = ["--level", "channel", "--input", &input, "--min-cosine", "0.998", "--json"];
    let mut a = vec!["prune", p(&dct), "-o", p(&out)];
    a.extend(base);
    let plain = ok_json_code(&a, 1);
    assert_eq!(plain["validation"]["passed"], false, "removing DCT basis rows must fail validation");
    a.push("--guard");
    let r = ok_json(&a);
    let g = &r["guard"];
    assert_eq!(g["restored"], json!(["dct"]), "{g}");
    assert_eq!(g["passed"], true);
    assert!(g["validations"].as_u64().unwrap() >= 2);
    let (before, after) = (g["params_before"].as_u64().unwrap(), g["params_after"].as_u64().unwrap());
    let original = r["totals"]["params"].as_u64().unwrap();
    assert!(before < after && after < original, "{before} -> {after} of {original}");
    assert_eq!(r["totals"]["kept"].as_u64().unwrap(), after, "the written model is the restored one");
    assert_eq!(r["validation"]["passed"], true);
    let rows = r["structures"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|s| s["producer"] == name).unwrap();
    assert_eq!((row("dct")["kept"].clone(), row("dct")["removed"].clone()), (row("dct")["n"].clone(), json!([])));
    assert!(row("dct")["blocked"].as_str().unwrap().contains("--guard"));
    assert!(row("fc1")["kept"].as_u64() < row("fc1")["n"].as_u64(), "fc1 stays pruned");
    let written = load_proto(&out).graph.unwrap();
    let original = load_proto(&dct).graph.unwrap();
    let dims = |g: &emprune::onnx::proto::GraphProto, n: &str| {
        g.initializer.iter().find(|t| t.name == n).unwrap().dims.clone()
    };
    assert_eq!(dims(&written, "dct.basis"), dims(&original, "dct.basis"));
    // Nothing to restore: one validation; and the guard needs validation.
    let ok = ok_json(&["prune", p(&dct), "-o", p(&out), "--level", "channel", "--guard", "--input", &input, "--json"]);
    assert_eq!((ok["guard"]["restored"].clone(), ok["guard"]["validations"].clone()), (json!([]), json!(1)));
    let o = emprune(&["prune", p(&dct), "-o", p(&out), "--level", "channel", "--guard", "--no-validate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn diff_shows_the_shapes_and_costs_structured_pruning_changed() {
    let dir = tmp();
    let cnn = model("digits_cnn.onnx");
    let out = dir.path().join("s.onnx");
    let r = ok_json(&["prune", p(&cnn), "-o", p(&out), "--level", "channel", "--no-validate", "--json"]);
    let d = ok_json_code(&["diff", p(&cnn), p(&out), "--json"], 1);
    assert_eq!(d["equivalent"], false);
    let get = |s: &str, k: &str| d[s][k].as_u64().unwrap();
    assert!(get("b", "params") < get("a", "params") && get("b", "macs") < get("a", "macs"));
    assert_eq!(get("a", "params"), r["totals"]["params"].as_u64().unwrap());
    assert_eq!(get("b", "params"), r["totals"]["kept"].as_u64().unwrap());
    assert_eq!(get("b", "macs"), r["totals"]["macs_after"].as_u64().unwrap());
    let rows = d["tensors"].as_array().unwrap();
    let row = |n: &str| rows.iter().find(|t| t["name"] == n).unwrap_or_else(|| panic!("no row for {n}"));
    let conv1 = row("conv1.weight");
    assert!(conv1["changed"].as_array().unwrap().contains(&json!("shape")), "{conv1}");
    let kept = r["structures"][0]["kept"].as_i64().unwrap();
    assert_eq!(conv1["b"]["shape"], json!([kept, 1, 3, 3]));
    // conv2 loses output channels and the input channels conv1 lost.
    assert!(row("conv2.weight")["b"]["shape"][1].as_i64() == Some(kept));
    assert_eq!(row("fc2.bias")["change"], "same", "the logits layer is untouched");
    let text = emprune(&["diff", p(&cnn), p(&out)]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("models differ"));
}
