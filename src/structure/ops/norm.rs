//! Normalisation: BatchNormalization and InstanceNormalization act per channel (their
//! parameters are sliced with the channel); LayerNormalization carries the axis only when it
//! normalises other axes — over the pruned axis, removing features changes the statistics,
//! so it blocks.

use super::{int_attr, only_at, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Tracked, Width};
use crate::structure::Role;

fn per_channel(ctx: &mut Ctx, node: &NodeProto, inputs: &[Option<Tracked>], params: usize) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    if t.width != Width::One || !t.is_axis(1) {
        return Err("normalises a different axis than the structure axis".into());
    }
    for p in node.input.iter().skip(1).take(params) {
        let dims = ctx.const_dims(p).ok_or_else(|| format!("parameter {p:?} is not a constant"))?;
        if dims != [t.total()] {
            return Err(format!("parameter {p:?} has shape {dims:?}, expected [{}]", t.total()));
        }
        ctx.own(&t, p, 0, 1, Role::Param);
    }
    if node.op_type == "BatchNormalization" && t.segs.len() == 1 {
        let space = &mut ctx.spaces[t.segs[0].space];
        let direct = space.slices.iter().filter(|s| s.role == Role::Param).count() == params;
        if direct && space.bn.is_none() {
            let eps = node.attribute.iter().find(|a| a.name == "epsilon").map(|a| a.f).unwrap_or(1e-5);
            space.bn = Some((node.input[1].clone(), node.input[4].clone(), eps));
        }
    }
    // Extra outputs (training-mode running stats) would carry it too; only output 0 is used.
    Ok(Flow::to_first(t))
}

pub fn batch_norm(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    per_channel(ctx, node, inputs, 4)
}

pub fn instance_norm(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    per_channel(ctx, node, inputs, 2)
}

pub fn layer_norm(_ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let axis = int_attr(node, "axis", -1);
    let (Some(pos), Some(rank)) = (t.axis_pos(), t.rank) else {
        return Err("normalises over the pruned axis (rank unknown)".into());
    };
    let first = if axis < 0 { axis + rank as i64 } else { axis };
    if pos as i64 >= first {
        return Err("normalises over the pruned axis".into());
    }
    Ok(Flow::to_first(t))
}
