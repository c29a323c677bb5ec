//! Structured pruning: exactness of removal (structures zeroed beforehand give the same
//! outputs once removed) on the bundled models and on random conv/MLP graphs, accuracy and size
//! on the trained models, attention heads, and blocking by unknown ops.

use std::path::Path;

use emprune::onnx::proto::tensor_proto::DataType;
use emprune::onnx::proto::{
    tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use emprune::onnx::Model;
use emprune::rewrite::remove::{self, Keeps};
use emprune::rng::Rng;
use emprune::structure::{analyse, Analysis, Level, Role};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::*;

/// Zeroes, in a copy of the model, every scored slice (producer rows, biases, consumer
/// columns) and parameter slice of the structures `keeps` drops.
fn zero_dropped(model: &Model, a: &Analysis, keeps: &Keeps) -> ModelProto {
    let mut proto = model.proto.clone();
    let g = proto.graph.as_mut().unwrap();
    for (group, keep) in a.groups.iter().zip(keeps) {
        let Some(keep) = keep else { continue };
        for (&s, &o) in group.spaces.iter().zip(&group.offsets) {
            let space = &a.spaces[s];
            let keep: Vec<usize> = keep.iter().filter(|&&k| k >= o && k < o + space.n).map(|&k| k - o).collect();
            for slice in space.slices.iter().filter(|s| s.role != Role::Param) {
                let t = g.initializer.iter_mut().find(|t| t.name == slice.tensor).expect("slice of an initializer");
                let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
                let mut vals: Vec<f32> =
                    t.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                let inner: usize = dims[slice.axis + 1..].iter().product();
                for (i, v) in vals.iter_mut().enumerate() {
                    let idx = (i / inner) % dims[slice.axis];
                    let covered = slice.covers(space.n);
                    if idx >= slice.offset && idx < slice.offset + covered.len() * slice.width {
                        let c = covered.start + (idx - slice.offset) / slice.width;
                        if !keep.contains(&c) {
                            *v = 0.0;
                        }
                    }
                }
                t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into();
            }
        }
    }
    proto
}

/// Writes the zeroed and the structurally pruned versions of `path` and compares them with
/// `emprune validate`; returns the validation JSON, or `None` when no structure can go
/// (e.g. a 2-channel conv split in two: each part must keep its only channel).
fn try_exactness(path: &Path, level: Level, pick: impl Fn(usize, usize) -> Option<Vec<usize>>) -> Option<Value> {
    let model = Model::load(path).unwrap();
    let ix = emprune::onnx::walk::Index::build(&model.proto);
    let a = analyse(&ix, &model.external, level);
    let keeps: Keeps = a
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut keep = if g.blocked.is_none() && g.n > 1 { pick(i, g.n)? } else { return None };
            // The planner never empties a producer or a Split/Slice part; neither may the test.
            emprune::structure::plan::cover_every_range(&a, g, &mut keep, |_| 0.0);
            (keep.len() < g.n).then_some(keep)
        })
        .collect();
    if !keeps.iter().any(Option::is_some) {
        return None;
    }
    let dir = tmp();
    let zeroed = dir.path().join("zeroed.onnx");
    write_model(&zeroed, &zero_dropped(&model, &a, &keeps));
    let mut removed = model.proto.clone();
    remove::remove(&mut removed, &model.external, &a, &keeps).unwrap();
    let pruned = dir.path().join("removed.onnx");
    write_model(&pruned, &removed);
    let r = ok_json(&["validate", p(&zeroed), p(&pruned), "--min-cosine", "0.9999", "--json"]);
    Some(r["validation"].clone())
}

/// [`try_exactness`] on a model where something must be removable.
fn exactness(path: &Path, level: Level, pick: impl Fn(usize, usize) -> Option<Vec<usize>>) -> Value {
    try_exactness(path, level, pick).unwrap_or_else(|| panic!("{path:?}: nothing to remove"))
}

/// Keeps every other structure (at least one).
fn every_other(_: usize, n: usize) -> Option<Vec<usize>> {
    Some((0..n).step_by(2).collect())
}

fn max_abs(v: &Value) -> f64 {
    v["outputs"].as_array().unwrap().iter().map(|o| o["max_abs"].as_f64().unwrap()).fold(0.0, f64::max)
}

#[test]
fn removal_is_exact_on_bundled_models() {
    for (m, level) in [
        ("digits_mlp.onnx", Level::Channel),
        ("digits_cnn.onnx", Level::Channel),
        ("digits_cnn_bnfold.onnx", Level::Channel),
        ("tiny_encoder.onnx", Level::Channel),
        ("tiny_encoder.onnx", Level::Head),
        ("digits_resnet.onnx", Level::Channel),
    ] {
        let v = exactness(&model(m), level, every_other);
        assert!(max_abs(&v) < 1e-4, "{m} {level:?}: max |Δ| {} — removal changed the function", max_abs(&v));
    }
}

#[test]
fn trained_mlp_and_cnn_shrink_with_little_accuracy_loss() {
    for (m, x) in [("digits_mlp.onnx", "digits_test_x.npy"), ("digits_cnn.onnx", "digits_test_x_img.npy")] {
        let dir = tmp();
        let out = dir.path().join("s.onnx");
        let input = format!("input={}", p(&model(x)));
        let r = ok_json(&[
            "prune",
            p(&model(m)),
            "-o",
            p(&out),
            "--level",
            "channel",
            "--input",
            &input,
            "--labels",
            p(&model("digits_test_y.npy")),
            "--json",
        ]);
        assert_eq!(r["format"], "structured");
        assert_eq!(r["level"], "channel");
        let removed: usize =
            r["structures"].as_array().unwrap().iter().map(|s| s["removed"].as_array().unwrap().len()).sum();
        assert!(removed > 0, "{m}: nothing removed");
        let t = &r["totals"];
        assert!(t["bytes_after"].as_u64() < t["bytes_before"].as_u64(), "{m}: file did not shrink");
        assert!(t["macs_after"].as_u64() < t["macs_before"].as_u64(), "{m}: MACs did not drop");
        assert!(t["kept"].as_u64() < t["params"].as_u64());
        assert_eq!(std::fs::metadata(&out).unwrap().len(), t["bytes_after"].as_u64().unwrap());
        let v = &r["validation"];
        let acc = &v["accuracy"];
        let (dense, pruned) = (acc["original"].as_f64().unwrap(), acc["pruned"].as_f64().unwrap());
        let speed = v["latency_original_ms"].as_f64().unwrap() / v["latency_pruned_ms"].as_f64().unwrap();
        eprintln!(
            "{m}: removed {removed} structures, accuracy {dense:.4} -> {pruned:.4}, tract speed ratio {speed:.2}"
        );
        if m == "digits_mlp.onnx" {
            assert!(pruned >= dense - 0.02, "{m}: accuracy fell from {dense} to {pruned}");
        }
        // The graph output keeps its width: the last layer is reported as blocked.
        let last = r["structures"].as_array().unwrap().last().unwrap();
        assert!(last["blocked"].as_str().unwrap().contains("graph output"));
    }
}

#[test]
fn encoder_loses_heads_below_beta_one_and_reports_them() {
    let dir = tmp();
    let out = dir.path().join("h.onnx");
    let r = ok_json(&[
        "prune",
        p(&model("tiny_encoder.onnx")),
        "-o",
        p(&out),
        "--level",
        "head",
        "--beta",
        "0.75",
        "--min-cosine",
        "0",
        "--json",
    ]);
    let heads = r["structures"].as_array().unwrap();
    assert_eq!(heads.len(), 2, "two attention layers");
    for h in heads {
        assert_eq!(h["kind"], "head");
        assert_eq!(h["n"], 4);
        assert!(h["kept"].as_u64().unwrap() < 4 && h["kept"].as_u64().unwrap() >= 1);
        assert_eq!(h["removed"].as_array().unwrap().len() as u64 + h["kept"].as_u64().unwrap(), 4);
    }
    let cos = r["validation"]["outputs"][0]["cosine"].as_f64().unwrap();
    eprintln!("tiny_encoder heads at beta 0.75: cosine {cos:.4}");
    assert!(cos > 0.0);
    // Both Reshape forms were rewritten: the pruned model runs (validation ran) and its
    // projections are narrower.
    let m = load_proto(&out);
    let q =
        m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name.contains("q_proj") && t.dims.len() == 2).unwrap();
    assert!(q.dims[1] < 32, "Q projection still has {} columns", q.dims[1]);
}

#[test]
fn global_head_scope_never_empties_a_layer() {
    let r = ok_json(&[
        "inspect",
        p(&model("tiny_encoder.onnx")),
        "--level",
        "head",
        "--scope",
        "global",
        "--beta",
        "0.3",
        "--json",
    ]);
    for h in r["structures"].as_array().unwrap() {
        assert!(h["kept"].as_u64().unwrap() >= 1);
    }
    assert!(r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("global EMP over 8 structures")));
}

#[test]
fn an_unknown_op_blocks_only_its_chain_and_is_named() {
    let r = ok_json(&["inspect", p(&model("digits_mlp_blocked.onnx")), "--level", "channel", "--json"]);
    let rows = r["structures"].as_array().unwrap();
    let fc1 = rows.iter().find(|s| s["producer"] == "fc1").unwrap();
    assert!(fc1["blocked"].as_str().unwrap().contains("Einsum node \"identity_einsum\""), "{fc1}");
    assert_eq!(fc1["kept"], 128);
    let fc2 = rows.iter().find(|s| s["producer"] == "fc2").unwrap();
    assert!(fc2["blocked"].is_null() && !fc2["removed"].as_array().unwrap().is_empty(), "the rest is pruned: {fc2}");
}

#[test]
fn resnet_couples_residual_producers_across_a_concat() {
    let r = ok_json(&["inspect", p(&model("digits_resnet.onnx")), "--level", "channel", "--json"]);
    let rows = r["structures"].as_array().unwrap();
    // The stem conv and the first block's second conv feed one residual Add: one group.
    assert!(rows.iter().any(|s| s["producer"] == "conv1+block1_conv2" && s["blocked"].is_null()));
    // The second block adds a single conv to a Concat of two 8-channel branches: one group of
    // 16 in which each branch owns half of the conv's channels.
    let g = rows.iter().find(|s| s["producer"].as_str().unwrap().ends_with("branch1x1_conv+block2_conv2")).unwrap();
    assert!(g["blocked"].is_null(), "{g}");
    assert_eq!(g["n"], 16);
    assert!(rows.iter().all(|s| s["blocked"].is_null() || s["producer"] == "fc2"), "only the output layer is blocked");
}

#[test]
fn fused_attention_heads_are_found_and_tract_failures_leave_no_output() {
    let dir = tmp();
    let out = dir.path().join("ms.onnx");
    let r = ok_json(&[
        "prune",
        p(&model("tiny_encoder_msattn.onnx")),
        "-o",
        p(&out),
        "--level",
        "head",
        "--beta",
        "0.75",
        "--no-validate",
        "--json",
    ]);
    let heads = r["structures"].as_array().unwrap();
    assert_eq!(heads.len(), 2);
    let kept: Vec<u64> = heads.iter().map(|h| h["kept"].as_u64().unwrap()).collect();
    let m = load_proto(&out);
    let attn: Vec<i64> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "Attention")
        .map(|n| n.attribute.iter().find(|a| a.name == "num_heads").unwrap().i)
        .collect();
    assert_eq!(attn, kept.iter().map(|&k| k as i64).collect::<Vec<_>>(), "num_heads rewritten");
    // tract 0.23 cannot run com.microsoft.Attention: validation is an error (exit 2, no file).
    let out2 = dir.path().join("ms2.onnx");
    let e = emprune(&["prune", p(&model("tiny_encoder_msattn.onnx")), "-o", p(&out2), "--level", "head"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("tract"));
    assert!(!out2.exists());
}

/// tiny_encoder with layer 0's head-split and merge shapes built at run time, as dynamic-axis
/// exports do: `Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [4], [8])`.
fn encoder_with_concat_shapes() -> ModelProto {
    let mut m = load_proto(&model("tiny_encoder.onnx"));
    let g = m.graph.as_mut().unwrap();
    g.initializer.extend([
        i64_init("c.idx0", &[0]),
        i64_init("c.idx1", &[1]),
        i64_init("c.axes", &[0]),
        i64_init("c.heads", &[4]),
        i64_init("c.dim", &[8]),
        i64_init("c.width", &[32]),
    ]);
    // Gather with a 1-element index gives a [1] tensor; Unsqueeze needs a scalar, so take the
    // sizes with Slice-free Gather of a scalar index instead.
    for t in g.initializer.iter_mut().filter(|t| t.name == "c.idx0" || t.name == "c.idx1") {
        t.dims.clear();
    }
    let start = g.node.iter().position(|n| n.name == "l0_q_reshape").unwrap();
    let x = "l0_q_proj_bias_out";
    let built = vec![
        node("Shape", "c_shape", &[x], &["c.sh"], vec![]),
        node("Gather", "c_g0", &["c.sh", "c.idx0"], &["c.b"], vec![]),
        node("Gather", "c_g1", &["c.sh", "c.idx1"], &["c.s"], vec![]),
        node("Unsqueeze", "c_u0", &["c.b", "c.axes"], &["c.ub"], vec![]),
        node("Unsqueeze", "c_u1", &["c.s", "c.axes"], &["c.us"], vec![]),
        node("Concat", "c_split", &["c.ub", "c.us", "c.heads", "c.dim"], &["c.split_shape"], vec![int("axis", 0)]),
        node("Concat", "c_merge", &["c.ub", "c.us", "c.width"], &["c.merge_shape"], vec![int("axis", 0)]),
    ];
    for (i, n) in built.into_iter().enumerate() {
        g.node.insert(start + i, n);
    }
    for n in g.node.iter_mut() {
        match n.name.as_str() {
            "l0_q_reshape" | "l0_k_reshape" | "l0_v_reshape" => n.input[1] = "c.split_shape".into(),
            "l0_context_reshape" => n.input[1] = "c.merge_shape".into(),
            _ => {}
        }
    }
    m
}

#[test]
fn heads_are_removed_when_shapes_are_built_by_concat() {
    let dir = tmp();
    let path = dir.path().join("enc_concat.onnx");
    write_model(&path, &encoder_with_concat_shapes());
    let same = ok_json(&["validate", p(&model("tiny_encoder.onnx")), p(&path), "--min-cosine", "0.99999", "--json"]);
    assert!(max_abs(&same["validation"]) < 1e-5, "the crafted model must compute the same function");
    let r = ok_json(&["inspect", p(&path), "--level", "head", "--json"]);
    assert!(r["structures"].as_array().unwrap().iter().all(|h| h["blocked"].is_null()), "{}", r["structures"]);
    let v = exactness(&path, Level::Head, every_other);
    assert!(max_abs(&v) < 1e-4, "max |Δ| {}", max_abs(&v));
    // The rewritten Concat part says 2 heads and 16 merged features.
    let out = dir.path().join("pruned.onnx");
    ok_json(&["prune", p(&path), "-o", p(&out), "--level", "head", "--beta", "0.75", "--min-cosine", "0", "--json"]);
    let m = load_proto(&out);
    let g = m.graph.as_ref().unwrap();
    let cat = g.node.iter().find(|n| n.name == "c_split").unwrap();
    let heads = g.initializer.iter().find(|t| t.name == cat.input[2]).unwrap();
    assert_eq!(i64::from_le_bytes(heads.raw_data[..8].try_into().unwrap()), 2);
}

// ---------- random graphs ----------

fn f32_init(name: &str, dims: &[usize], rng: &mut Rng) -> TensorProto {
    let n: usize = dims.iter().product();
    let raw: Vec<u8> = (0..n).flat_map(|_| ((rng.normal() * 0.5) as f32).to_le_bytes()).collect();
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: raw.into(),
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64]) -> TensorProto {
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: DataType::Int64 as i32,
        raw_data: raw.into(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: 2, ..Default::default() }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Which optional blocks a random graph has.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    residual: bool,
    concat: bool,
    depthwise: bool,
    /// Split the channels in two and Concat them back swapped.
    split: bool,
    /// Slice off the first channel.
    slice: bool,
}

/// conv → BN → Relu → [residual conv + Add] → [two convs + Concat] → [Split + swapped
/// Concat] → [Slice] → [depthwise conv] → GlobalAveragePool → Flatten → Gemm → Relu → Gemm.
fn random_graph(seed: u64, c: usize, b: Blocks, hidden: usize) -> ModelProto {
    let Blocks { residual, concat, depthwise, split, slice } = b;
    let mut rng = Rng::new(seed);
    let pads = || ints("pads", &[1, 1, 1, 1]);
    let mut inits = vec![f32_init("w0", &[c, 2, 3, 3], &mut rng), f32_init("b0", &[c], &mut rng)];
    for p in ["bn_s", "bn_b", "bn_m"] {
        inits.push(f32_init(p, &[c], &mut rng));
    }
    let var: Vec<u8> = (0..c).flat_map(|i| (1.0f32 + i as f32 * 0.1).to_le_bytes()).collect();
    inits.push(TensorProto {
        name: "bn_v".into(),
        dims: vec![c as i64],
        data_type: 1,
        raw_data: var.into(),
        ..Default::default()
    });
    let mut nodes = vec![
        node("Conv", "conv0", &["x", "w0", "b0"], &["c0"], vec![pads()]),
        node("BatchNormalization", "bn0", &["c0", "bn_s", "bn_b", "bn_m", "bn_v"], &["n0"], vec![]),
        node("Relu", "relu0", &["n0"], &["h"], vec![]),
    ];
    let mut cur = "h".to_string();
    let mut width = c;
    if residual {
        inits.push(f32_init("w1", &[c, c, 3, 3], &mut rng));
        nodes.push(node("Conv", "conv1", &[&cur, "w1"], &["c1"], vec![pads()]));
        nodes.push(node("Add", "res", &["c1", &cur], &["r"], vec![]));
        cur = "r".into();
    }
    if concat {
        inits.push(f32_init("wa", &[3, c, 3, 3], &mut rng));
        inits.push(f32_init("wb", &[2, c, 1, 1], &mut rng));
        nodes.push(node("Conv", "conva", &[&cur, "wa"], &["ca"], vec![pads()]));
        nodes.push(node("Conv", "convb", &[&cur, "wb"], &["cb"], vec![]));
        nodes.push(node("Concat", "cat", &["ca", "cb"], &["cat"], vec![int("axis", 1)]));
        cur = "cat".into();
        width = 5;
    }
    if split {
        inits.push(i64_init("split_sizes", &[1, width as i64 - 1]));
        nodes.push(node("Split", "split", &[&cur, "split_sizes"], &["s0", "s1"], vec![int("axis", 1)]));
        nodes.push(node("Concat", "swap", &["s1", "s0"], &["sw"], vec![int("axis", 1)]));
        cur = "sw".into();
    }
    if slice {
        inits.push(i64_init("sl_starts", &[1]));
        inits.push(i64_init("sl_ends", &[width as i64]));
        inits.push(i64_init("sl_axes", &[1]));
        nodes.push(node("Slice", "slice", &[&cur, "sl_starts", "sl_ends", "sl_axes"], &["sl"], vec![]));
        cur = "sl".into();
        width -= 1;
    }
    if depthwise {
        inits.push(f32_init("wd", &[width, 1, 3, 3], &mut rng));
        nodes.push(node("Conv", "dw", &[&cur, "wd"], &["d"], vec![pads(), int("group", width as i64)]));
        cur = "d".into();
    }
    inits.push(f32_init("f1", &[width, hidden], &mut rng));
    inits.push(f32_init("f1b", &[hidden], &mut rng));
    inits.push(f32_init("f2", &[hidden, 5], &mut rng));
    nodes.push(node("GlobalAveragePool", "gap", &[&cur], &["g"], vec![]));
    nodes.push(node("Flatten", "flat", &["g"], &["f"], vec![int("axis", 1)]));
    nodes.push(node("Gemm", "fc1", &["f", "f1", "f1b"], &["z"], vec![]));
    nodes.push(node("Relu", "relu1", &["z"], &["a"], vec![]));
    nodes.push(node("Gemm", "fc2", &["a", "f2"], &["y"], vec![]));
    let graph = GraphProto {
        name: "random".into(),
        node: nodes,
        initializer: inits,
        input: vec![value("x", &[2, 2, 6, 6])],
        output: vec![value("y", &[2, 5])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn removal_is_exact_on_random_graphs(
        seed in 0u64..1000, c in 2usize..7, residual in any::<bool>(), concat in any::<bool>(),
        depthwise in any::<bool>(), split in any::<bool>(), slice in any::<bool>(), hidden in 2usize..9,
        keep_seed in 0u64..1000,
    ) {
        let dir = tmp();
        let path = dir.path().join("g.onnx");
        let blocks = Blocks { residual, concat, depthwise, split, slice };
        write_model(&path, &random_graph(seed, c, blocks, hidden));
        let pick = |i: usize, n: usize| {
            let mut rng = Rng::new(keep_seed + i as u64);
            let mut keep: Vec<usize> = (0..n).filter(|_| rng.uniform() < 0.6).collect();
            if keep.is_empty() { keep.push((rng.next_u64() % n as u64) as usize); }
            Some(keep)
        };
        let v = try_exactness(&path, Level::Channel, pick);
        prop_assume!(v.is_some(), "nothing removable in this graph");
        let v = v.unwrap();
        prop_assert!(max_abs(&v) < 1e-4, "max |Δ| {}", max_abs(&v));
    }
}
