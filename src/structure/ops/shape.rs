//! Shape ops. Flatten and Reshape-to-2D turn the channel axis into blocks of features (each
//! channel owns `H·W` consecutive columns for the next Gemm/MatMul); an explicit size in the
//! Reshape is rewritten. Concat on the structure axis lays spaces side by side; on another
//! axis it couples them. Transpose moves the axis.

use super::{int_attr, ints_attr, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Tracked, Width};
use crate::structure::ShapeEdit;

fn flattened(t: &Tracked) -> Tracked {
    Tracked { axis: 1, rank: Some(2), width: Width::Block, ..t.clone() }
}

pub fn flatten(_ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    let axis = int_attr(node, "axis", 1);
    if axis != 1 || !t.is_axis(1) {
        return Err("flattens across the structure axis in a way that mixes structures".into());
    }
    Ok(Flow::to_first(if t.rank == Some(2) { t } else { flattened(&t) }))
}

pub fn reshape(ctx: &mut Ctx, index: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    let shape = node.input.get(1).and_then(|s| ctx.const_ints(s)).ok_or("target shape is not constant")?;
    if !t.is_axis(1) || shape.len() != 2 || shape[0] == -1 {
        return Err("reshape other than [N, -1] after the structure axis".into());
    }
    match shape[1] {
        -1 => {}
        k if k > 0 && (k as usize) % t.total() == 0 => {
            let factor = k / t.total() as i64;
            for s in &t.segs {
                ctx.spaces[s.space].shapes.push(ShapeEdit { node: index, position: 1, factor });
            }
        }
        k => return Err(format!("reshape to {k} features does not split evenly over {} structures", t.total())),
    }
    Ok(Flow::to_first(flattened(&t)))
}

pub fn concat(_ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let axis = int_attr(node, "axis", 0);
    let all: Option<Vec<&Tracked>> = inputs.iter().map(Option::as_ref).collect();
    let all = all.ok_or("an input without structures joins the structure axis")?;
    let first = all[0];
    if all.iter().any(|t| t.width != Width::One) {
        return Err("concatenates flattened features".into());
    }
    if all.iter().all(|t| t.is_axis(axis)) {
        let segs = all.iter().flat_map(|t| t.segs.iter().copied()).collect();
        return Ok(Flow::to_first(Tracked { segs, ..first.clone() }));
    }
    for other in &all[1..] {
        if !_ctx.couple(first, other) {
            return Err("inputs carry structure layouts that do not line up".into());
        }
    }
    Ok(Flow::to_first(first.clone()))
}

pub fn transpose(_ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    let perm = ints_attr(node, "perm").ok_or("transpose without perm")?;
    let pos = t.axis_pos().ok_or("rank unknown")?;
    let new = perm.iter().position(|&p| p == pos as i64).ok_or("perm does not cover the structure axis")?;
    Ok(Flow::to_first(t.with_axis(new as i64, Some(perm.len()))))
}
