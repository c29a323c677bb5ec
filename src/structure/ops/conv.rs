//! Conv: produces output channels (filters, axis 0 of W, plus bias) when `group = 1`; consumes
//! input channels (axis 1 of W); a depthwise Conv (`group = C`, one filter per channel) carries
//! channels through, owning its filters, and has its `group` rewritten. Other grouped Convs
//! block: removing channels would unbalance their groups.

use super::{int_attr, only_at, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Tracked, Width};
use crate::structure::{AttrEdit, Kind, Role};

fn weight_dims(ctx: &Ctx, node: &NodeProto) -> Option<Vec<usize>> {
    ctx.const_dims(node.input.get(1)?).filter(|d| d.len() >= 3)
}

fn is_depthwise(node: &NodeProto, w: &[usize]) -> bool {
    let g = int_attr(node, "group", 1);
    g > 1 && w[1] == 1 && w[0] as i64 == g
}

pub fn flow(ctx: &mut Ctx, index: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let w = weight_dims(ctx, node).ok_or("weight is not a constant")?;
    if t.width != Width::One || !t.is_axis(1) {
        return Err("the structure axis is not the channel axis".into());
    }
    let wname = node.input[1].clone();
    if is_depthwise(node, &w) {
        if w[0] != t.total() {
            return Err(format!("depthwise weight has {} filters for {} channels", w[0], t.total()));
        }
        ctx.own(&t, &wname, 0, 1, Role::Param);
        if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
            ctx.own(&t, b, 0, 1, Role::Param);
        }
        for s in &t.segs {
            ctx.spaces[s.space].attrs.push(AttrEdit {
                node: index,
                name: "group".into(),
                factor: 1,
                first: s.start,
                count: s.len,
            });
        }
        return Ok(Flow::to_first(t));
    }
    if int_attr(node, "group", 1) != 1 {
        return Err("grouped convolution".into());
    }
    if w[1] != t.total() {
        return Err(format!("weight expects {} input channels, {} arrive", w[1], t.total()));
    }
    ctx.own(&t, &wname, 1, 1, Role::Consumer);
    Ok(Flow::none())
}

pub fn produce(ctx: &mut Ctx, node: &NodeProto) -> Option<(Kind, usize, Tracked)> {
    let w = weight_dims(ctx, node)?;
    if int_attr(node, "group", 1) != 1 {
        return None;
    }
    let bias_ok = node.input.get(2).is_none_or(|b| b.is_empty() || ctx.const_dims(b).is_some());
    bias_ok.then(|| (Kind::Channel, w[0], Tracked { segs: vec![], axis: 1, rank: Some(w.len()), width: Width::One }))
}

pub fn own(ctx: &mut Ctx, node: &NodeProto, space: usize, _n: usize) {
    let t = Tracked {
        segs: vec![crate::structure::graph::Seg { space, start: 0, len: _n }],
        axis: 1,
        rank: None,
        width: Width::One,
    };
    ctx.own(&t, &node.input[1], 0, 1, Role::Producer);
    if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
        ctx.own(&t, b, 0, 1, Role::Bias);
    }
}
