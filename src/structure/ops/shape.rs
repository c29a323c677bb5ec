//! Shape ops. Flatten and Reshape-to-2D turn the channel axis into blocks of features (each
//! channel owns `H·W` consecutive columns for the next Gemm/MatMul); an explicit size in the
//! Reshape is rewritten. Concat on the structure axis lays spaces side by side; on another
//! axis it couples them. Split and Slice on the structure axis hand each output the part of
//! the layout it covers (a space may then be split across outputs); on another axis they
//! carry it whole. Transpose moves the axis.

use super::{int_attr, ints_attr, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Seg, Tracked, Width};
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
                ctx.spaces[s.space].shapes.push(ShapeEdit::whole(index, 1, 1, factor));
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

/// The part of `t`'s layout at axis positions `from..to`.
fn sub(t: &Tracked, from: usize, to: usize) -> Tracked {
    let mut segs = vec![];
    let mut pos = 0;
    for s in &t.segs {
        let (a, b) = (from.max(pos), to.min(pos + s.len));
        if a < b {
            segs.push(Seg { space: s.space, start: s.start + (a - pos), len: b - a });
        }
        pos += s.len;
    }
    Tracked { segs, ..t.clone() }
}

pub fn split(ctx: &mut Ctx, index: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    let outs = node.output.len();
    if !t.is_axis(int_attr(node, "axis", 0)) {
        return Ok(Flow { outputs: (0..outs).map(|o| (o, t.clone())).collect() });
    }
    let sizes_input =
        node.input.get(1).filter(|s| !s.is_empty()).ok_or("split of the structure axis without a sizes input")?;
    let sizes = ctx.const_ints(sizes_input).ok_or("split sizes are not constant")?;
    if t.width != Width::One
        || sizes.len() != outs
        || sizes.iter().any(|&x| x < 0)
        || sizes.iter().sum::<i64>() as usize != t.total()
    {
        return Err("split sizes do not cover the structure axis".into());
    }
    let mut from = 0;
    let mut outputs = vec![];
    for (o, &n) in sizes.iter().enumerate() {
        let part = sub(&t, from, from + n as usize);
        for s in &part.segs {
            ctx.spaces[s.space].shapes.push(ShapeEdit {
                node: index,
                input: 1,
                position: o,
                factor: 1,
                first: s.start,
                count: s.len,
            });
        }
        outputs.push((o, part));
        from += n as usize;
    }
    Ok(Flow { outputs })
}

pub fn slice(ctx: &mut Ctx, index: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = super::only_at(inputs, 0)?;
    let ints = |slot: usize| node.input.get(slot).filter(|s| !s.is_empty()).map(|s| ctx.const_ints(s));
    let (Some(Some(starts)), Some(Some(ends))) = (ints(1), ints(2)) else {
        return Err("starts/ends are not constant".into());
    };
    let axes = match ints(3) {
        Some(a) => a.ok_or("axes are not constant")?,
        None => (0..starts.len() as i64).collect(),
    };
    let Some(k) = axes.iter().position(|&a| t.is_axis(a)) else { return Ok(Flow::to_first(t)) };
    if ints(4).is_some_and(|s| s.is_none_or(|s| s.get(k) != Some(&1))) {
        return Err("slices the structure axis with a step".into());
    }
    let total = t.total() as i64;
    let (Some(&a), Some(&b)) = (starts.get(k), ends.get(k)) else { return Err("malformed starts/ends".into()) };
    if a < 0 || b < 0 || t.width != Width::One {
        return Err("negative bounds on the structure axis".into());
    }
    let (a, b) = (a.min(total) as usize, b.min(total) as usize);
    for (slot, bound) in [(1, a), (2, b)] {
        let whole_end = slot == 2 && bound == total as usize && ends[k] > total;
        if bound == 0 || whole_end {
            continue; // 0 and "to the end" stay right whatever is removed
        }
        for s in &sub(&t, 0, bound).segs {
            ctx.spaces[s.space].shapes.push(ShapeEdit {
                node: index,
                input: slot,
                position: k,
                factor: 1,
                first: s.start,
                count: s.len,
            });
        }
    }
    Ok(Flow::to_first(sub(&t, a, b)))
}
