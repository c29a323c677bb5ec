//! Spatial ops that treat channels independently: pooling (carry the channel axis), Pad and
//! Resize (carry it when they leave the channel axis alone).

use super::{only_at, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Tracked, Width};

pub fn spatial(_ctx: &mut Ctx, _i: usize, _node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    if t.width != Width::One || !t.is_axis(1) {
        return Err("pools over the structure axis".into());
    }
    Ok(Flow::to_first(t))
}

pub fn pad(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let pads = match node.input.get(1).filter(|p| !p.is_empty()) {
        Some(p) => ctx.const_ints(p).ok_or("pads are not constant")?,
        None => super::ints_attr(node, "pads").map(<[i64]>::to_vec).unwrap_or_default(),
    };
    let (Some(pos), Some(rank)) = (t.axis_pos(), t.rank) else { return Err("rank unknown".into()) };
    if node.input.get(3).is_some_and(|a| !a.is_empty()) || pads.len() != 2 * rank {
        return Err("pads with explicit axes are not supported".into());
    }
    if pads[pos] != 0 || pads[pos + rank] != 0 {
        return Err("pads the structure axis".into());
    }
    Ok(Flow::to_first(t))
}

pub fn resize(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let pos = t.axis_pos().ok_or("rank unknown")?;
    let scales = node.input.get(2).filter(|s| !s.is_empty()).ok_or("resize by sizes is not supported")?;
    let s = ctx.const_floats(scales).ok_or("scales are not constant")?;
    if s.get(pos) != Some(&1.0) || node.input.get(3).is_some_and(|x| !x.is_empty()) {
        return Err("resizes the structure axis".into());
    }
    Ok(Flow::to_first(t))
}
