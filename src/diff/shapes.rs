//! Shapes of the values of one graph, for MAC counting: declared shapes (graph inputs,
//! outputs, `value_info`) and initializer dims first, then a light forward propagation through
//! the ops that decide a matrix product's size (elementwise, MatMul, Gemm, Gather, Conv, pools,
//! Transpose). Every symbolic or unknown dimension counts as 1 ("dynamic batch = 1").
//! Anything not covered simply stays unknown; this is for cost estimates, not validation.

use std::collections::HashMap;

use crate::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use crate::onnx::proto::type_proto::Value as Ty;
use crate::onnx::proto::{GraphProto, NodeProto, ValueInfoProto};

pub type Shapes = HashMap<String, Vec<u64>>;

const UNARY: &[&str] = &[
    "Relu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Erf",
    "Cast",
    "Identity",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "Dropout",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Softplus",
    "Mish",
    "SimplifiedLayerNormalization",
];
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Where"];

/// Shapes known in `g` (including those captured from `outer`).
pub fn infer(g: &GraphProto, outer: &Shapes) -> Shapes {
    let mut s = outer.clone();
    for vi in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(dims) = declared(vi) {
            s.insert(vi.name.clone(), dims);
        }
    }
    for t in &g.initializer {
        s.insert(t.name.clone(), t.dims.iter().map(|&d| d.max(1) as u64).collect());
    }
    for sp in &g.sparse_initializer {
        if let Some(v) = &sp.values {
            s.insert(v.name.clone(), sp.dims.iter().map(|&d| d.max(1) as u64).collect());
        }
    }
    for n in &g.node {
        let Some(out) = n.output.first() else { continue };
        if s.contains_key(out) {
            continue;
        }
        if let Some(shape) = forward(n, &s) {
            s.insert(out.clone(), shape);
        }
    }
    s
}

fn declared(vi: &ValueInfoProto) -> Option<Vec<u64>> {
    let Some(Ty::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else { return None };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) if v > 0 => v as u64,
                _ => 1,
            })
            .collect(),
    )
}

fn int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
}

fn forward(n: &NodeProto, s: &Shapes) -> Option<Vec<u64>> {
    let input = |i: usize| n.input.get(i).filter(|x| !x.is_empty()).and_then(|x| s.get(x));
    let op = n.op_type.as_str();
    if UNARY.contains(&op) {
        return input(0).cloned();
    }
    if BINARY.contains(&op) {
        return (0..n.input.len()).map(input).collect::<Option<Vec<_>>>().and_then(|v| broadcast(&v));
    }
    match op {
        "MatMul" => matmul(input(0)?, input(1)?),
        "Gemm" => {
            let (a, b) = (input(0)?, input(1)?);
            let m = if int(n, "transA") == Some(1) { a.get(1)? } else { a.first()? };
            let nn = if int(n, "transB") == Some(1) { b.first()? } else { b.get(1)? };
            Some(vec![*m, *nn])
        }
        "Gather" => {
            let (data, idx) = (input(0)?, input(1)?);
            let axis = norm_axis(int(n, "axis").unwrap_or(0), data.len())?;
            Some([&data[..axis], idx, &data[axis + 1..]].concat())
        }
        "Transpose" => {
            let x = input(0)?;
            let perm = ints(n, "perm").unwrap_or_else(|| (0..x.len() as i64).rev().collect());
            perm.iter().map(|&p| x.get(p as usize).copied()).collect()
        }
        "Conv" | "MaxPool" | "AveragePool" => window(n, input(0)?, if op == "Conv" { input(1) } else { None }),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = input(0)?;
            Some(x.iter().enumerate().map(|(i, &d)| if i < 2 { d } else { 1 }).collect())
        }
        "Flatten" => {
            let x = input(0)?;
            let axis = norm_axis(int(n, "axis").unwrap_or(1), x.len() + 1)?;
            Some(vec![x[..axis].iter().product(), x[axis..].iter().product()])
        }
        _ => None,
    }
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn broadcast(shapes: &[&Vec<u64>]) -> Option<Vec<u64>> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = vec![1u64; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            *o = (*o).max(d);
        }
    }
    Some(out)
}

/// `[..., M, K] × [..., K, N] → [..., M, N]` (rank-1 operands as in numpy).
pub fn matmul(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    let (a2, b2) = (a.len().max(2), b.len().max(2));
    let a: Vec<u64> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b: Vec<u64> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let batch = broadcast(&[&a[..a2 - 2].to_vec(), &b[..b2 - 2].to_vec()])?;
    Some([batch, vec![a[a2 - 2], b[b2 - 1]]].concat())
}

/// Output shape of a Conv or pool from its input `[N, C, spatial…]`.
fn window(n: &NodeProto, x: &[u64], w: Option<&Vec<u64>>) -> Option<Vec<u64>> {
    let sp = x.len().checked_sub(2)?;
    let kernel: Vec<u64> = match ints(n, "kernel_shape") {
        Some(k) if k.len() == sp => k.iter().map(|&v| v.max(1) as u64).collect(),
        _ => w?.get(2..)?.to_vec(),
    };
    let strides = ints(n, "strides").unwrap_or_else(|| vec![1; sp]);
    let dil = ints(n, "dilations").unwrap_or_else(|| vec![1; sp]);
    let pads = ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
    let auto = n.attribute.iter().find(|a| a.name == "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string());
    let channels = match w {
        Some(w) => *w.first()?,
        None => x[1],
    };
    let mut out = vec![x[0], channels];
    for i in 0..sp {
        let (inp, k, st) = (x[i + 2] as i64, kernel.get(i).copied()? as i64, strides.get(i).copied()?.max(1));
        let d = dil.get(i).copied()?.max(1);
        let o = match auto.as_deref() {
            Some("SAME_UPPER") | Some("SAME_LOWER") => (inp + st - 1) / st,
            _ => {
                let pad = pads.get(i).copied().unwrap_or(0) + pads.get(i + sp).copied().unwrap_or(0);
                (inp + pad - d * (k - 1) - 1) / st + 1
            }
        };
        out.push(o.max(1) as u64);
    }
    Some(out)
}
