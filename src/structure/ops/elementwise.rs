//! Elementwise ops. Unary activations carry the axis. Binary/variadic ops (Add, Mul, Sum, …)
//! either combine a tracked input with a constant — sliced along the axis when it has one
//! entry per structure, untouched when it broadcasts — or combine several tracked inputs,
//! which couples their spaces (a residual connection).

use super::Flow;
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Tracked, Width};
use crate::structure::Role;

/// Activations and other per-element ops with one data input.
pub const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Softsign",
    "Erf",
    "Abs",
    "Neg",
    "Identity",
    "Cast",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Mish",
    "ThresholdedRelu",
    "Sin",
    "Cos",
];

pub fn unary(_ctx: &mut Ctx, _i: usize, _node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    Ok(Flow::to_first(t))
}

/// Clip: data input 0; min/max must be constant scalars.
pub fn clip(ctx: &mut Ctx, i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    for bound in node.input.iter().skip(1).filter(|b| !b.is_empty()) {
        if ctx.const_dims(bound).is_none_or(|d| d.iter().product::<usize>() != 1) {
            return Err("min/max are not constant scalars".into());
        }
    }
    unary(ctx, i, node, inputs)
}

pub fn binary(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let tracked: Vec<&Tracked> = inputs.iter().flatten().collect();
    let first = tracked[0].clone();
    for other in &tracked[1..] {
        if other.axis_pos() != first.axis_pos() && other.axis != first.axis {
            return Err("inputs carry structures on different axes".into());
        }
        if other.width != first.width || !ctx.couple(&first, other) {
            return Err("inputs carry structure layouts that do not line up".into());
        }
    }
    let role = if node.op_type == "Add" || node.op_type == "Sub" { Role::Bias } else { Role::Param };
    for (slot, name) in node.input.iter().enumerate() {
        if inputs[slot].is_some() || name.is_empty() {
            continue;
        }
        let dims = ctx
            .const_dims(name)
            .ok_or_else(|| format!("input {name:?} is neither constant nor carrying the structure"))?;
        match broadcast_axis(&first, &dims)? {
            Some(axis) if first.width == Width::One => ctx.own(&first, name, axis, 1, role),
            Some(_) => return Err("a per-element constant after Flatten/Reshape".into()),
            None => {}
        }
    }
    Ok(Flow::to_first(first))
}

/// Which axis of a broadcast constant lines up with the structure axis: `Some(axis)` when it
/// has one entry per structure there, `None` when it broadcasts over it.
fn broadcast_axis(t: &Tracked, dims: &[usize]) -> Result<Option<usize>, String> {
    let rc = dims.len();
    let from_end = match (t.axis, t.rank) {
        (a, _) if a < 0 => (-a) as usize,
        (a, Some(r)) => r - a as usize,
        (_, None) => return Err("cannot align a constant without the rank".into()),
    };
    if from_end > rc {
        return Ok(None);
    }
    let axis = rc - from_end;
    match dims[axis] {
        1 => Ok(None),
        d if d == t.total() => Ok(Some(axis)),
        d => Err(format!("constant has {d} entries on the structure axis, expected {}", t.total())),
    }
}
