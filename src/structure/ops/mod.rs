//! The op registry for structure propagation: for each op type, how it treats an input that
//! carries a structure axis. One file per op family; an op that is not registered blocks.

mod conv;
mod elementwise;
mod linear;
mod norm;
mod pool;
mod shape;

use super::graph::{Ctx, Tracked};
use super::Kind;
use crate::onnx::proto::NodeProto;
use crate::onnx::walk::is_default_domain;

/// What a node does with its tracked inputs: which outputs carry which layout.
pub struct Flow {
    pub outputs: Vec<(usize, Tracked)>,
}

impl Flow {
    pub fn none() -> Flow {
        Flow { outputs: vec![] }
    }
    pub fn to_first(t: Tracked) -> Flow {
        Flow { outputs: vec![(0, t)] }
    }
}

/// A behaviour: `Err(reason)` blocks every tracked input.
pub type Behaviour = fn(&mut Ctx, usize, &NodeProto, &[Option<Tracked>]) -> Result<Flow, String>;

/// The registry: op type → behaviour.
const REGISTRY: &[(&str, Behaviour)] = &[
    ("Conv", conv::flow),
    ("Gemm", linear::gemm_flow),
    ("MatMul", linear::matmul_flow),
    ("BatchNormalization", norm::batch_norm),
    ("InstanceNormalization", norm::instance_norm),
    ("LayerNormalization", norm::layer_norm),
    ("Flatten", shape::flatten),
    ("Reshape", shape::reshape),
    ("Concat", shape::concat),
    ("Transpose", shape::transpose),
    ("Split", shape::split),
    ("Slice", shape::slice),
    ("MaxPool", pool::spatial),
    ("AveragePool", pool::spatial),
    ("LpPool", pool::spatial),
    ("GlobalAveragePool", pool::spatial),
    ("GlobalMaxPool", pool::spatial),
    ("Pad", pool::pad),
    ("Resize", pool::resize),
    ("Add", elementwise::binary),
    ("Sub", elementwise::binary),
    ("Mul", elementwise::binary),
    ("Div", elementwise::binary),
    ("Max", elementwise::binary),
    ("Min", elementwise::binary),
    ("Sum", elementwise::binary),
    ("PRelu", elementwise::binary),
    ("Pow", elementwise::binary),
    ("Clip", elementwise::clip),
    ("Dropout", elementwise::unary),
];

/// Dispatches `node` to its behaviour; unary activations are a family of their own.
pub fn flow(ctx: &mut Ctx, index: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    if !is_default_domain(&node.domain) {
        return Err(format!("custom op of domain {:?} is not in the registry", node.domain));
    }
    if elementwise::UNARY.contains(&node.op_type.as_str()) {
        return elementwise::unary(ctx, index, node, inputs);
    }
    match REGISTRY.iter().find(|(op, _)| *op == node.op_type) {
        Some((_, f)) => f(ctx, index, node, inputs),
        None => Err("op not in the structure registry".into()),
    }
}

/// Whether `node` produces a new prunable space: its kind, width and the layout of output 0.
pub fn produce(ctx: &mut Ctx, _index: usize, node: &NodeProto) -> Option<(Kind, usize, Tracked)> {
    if !is_default_domain(&node.domain) {
        return None;
    }
    match node.op_type.as_str() {
        "Conv" => conv::produce(ctx, node),
        "Gemm" => linear::gemm_produce(ctx, node),
        "MatMul" => linear::matmul_produce(ctx, node),
        _ => None,
    }
}

/// Records the producer's own slices (weight rows, bias) for a new space.
pub fn own_producer(ctx: &mut Ctx, node: &NodeProto, space: usize, n: usize) {
    match node.op_type.as_str() {
        "Conv" => conv::own(ctx, node, space, n),
        "Gemm" => linear::gemm_own(ctx, node, space, n),
        "MatMul" => linear::matmul_own(ctx, node, space, n),
        _ => {}
    }
}

/// Integer attribute with a default.
pub fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
}

/// Ints attribute, if present.
pub fn ints_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice())
}

/// The only tracked input must be at `slot`; returns it.
pub fn only_at(inputs: &[Option<Tracked>], slot: usize) -> Result<Tracked, String> {
    for (i, t) in inputs.iter().enumerate() {
        if t.is_some() && i != slot {
            return Err(format!("the structure axis reaches input {i}, which this op cannot slice"));
        }
    }
    inputs.get(slot).cloned().flatten().ok_or_else(|| "no tracked data input".into())
}
