//! Gemm and MatMul with a constant weight: produce output features (neurons) and consume
//! input features. A consumer fed through Flatten/Reshape gives each channel a block of
//! `K / channels` input rows.

use super::{int_attr, only_at, Flow};
use crate::onnx::proto::NodeProto;
use crate::structure::graph::{Ctx, Seg, Tracked, Width};
use crate::structure::{Kind, Role};

fn dims2(ctx: &Ctx, node: &NodeProto, slot: usize) -> Option<Vec<usize>> {
    ctx.const_dims(node.input.get(slot)?).filter(|d| d.len() == 2)
}

/// Records consumer slices of a `[K, N]`-like weight whose input-feature axis is `axis`.
fn consume(ctx: &mut Ctx, t: &Tracked, weight: &str, axis: usize, k: usize) -> Result<Flow, String> {
    let total = t.total();
    let width = match t.width {
        Width::One if k == total => 1,
        Width::Block if total > 0 && k % total == 0 => k / total,
        _ => return Err(format!("weight has {k} input features for {total} structures")),
    };
    ctx.own(t, weight, axis, width, Role::Consumer);
    Ok(Flow::none())
}

pub fn gemm_flow(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let b = dims2(ctx, node, 1).ok_or("B is not a constant matrix")?;
    if int_attr(node, "transA", 0) != 0 || !(t.is_axis(1) || t.is_axis(-1)) {
        return Err("the structure axis is not A's feature axis".into());
    }
    let trans_b = int_attr(node, "transB", 0) != 0;
    let (axis, k) = if trans_b { (1, b[1]) } else { (0, b[0]) };
    consume(ctx, &t, &node.input[1], axis, k)
}

pub fn matmul_flow(ctx: &mut Ctx, _i: usize, node: &NodeProto, inputs: &[Option<Tracked>]) -> Result<Flow, String> {
    let t = only_at(inputs, 0)?;
    let b = dims2(ctx, node, 1).ok_or("B is not a constant matrix")?;
    if !t.is_axis(-1) && t.axis_pos().map(|p| Some(p + 1)) != Some(t.rank) {
        return Err("the structure axis is not the last axis".into());
    }
    consume(ctx, &t, &node.input[1], 0, b[0])
}

fn gemm_bias_ok(ctx: &Ctx, node: &NodeProto, n: usize) -> bool {
    match node.input.get(2).filter(|c| !c.is_empty()) {
        None => true,
        Some(c) => match ctx.const_dims(c) {
            Some(d) => {
                d.iter().product::<usize>() <= 1 || d.last() == Some(&n) && d.iter().rev().skip(1).all(|&x| x == 1)
            }
            None => false,
        },
    }
}

pub fn gemm_produce(ctx: &mut Ctx, node: &NodeProto) -> Option<(Kind, usize, Tracked)> {
    let b = dims2(ctx, node, 1)?;
    let n = if int_attr(node, "transB", 0) != 0 { b[0] } else { b[1] };
    gemm_bias_ok(ctx, node, n)
        .then(|| (Kind::Neuron, n, Tracked { segs: vec![], axis: -1, rank: Some(2), width: Width::One }))
}

pub fn matmul_produce(ctx: &mut Ctx, node: &NodeProto) -> Option<(Kind, usize, Tracked)> {
    let b = dims2(ctx, node, 1)?;
    Some((Kind::Neuron, b[1], Tracked { segs: vec![], axis: -1, rank: None, width: Width::One }))
}

fn single(space: usize, n: usize) -> Tracked {
    Tracked { segs: vec![Seg { space, start: 0, len: n }], axis: -1, rank: None, width: Width::One }
}

pub fn gemm_own(ctx: &mut Ctx, node: &NodeProto, space: usize, n: usize) {
    let t = single(space, n);
    let axis = if int_attr(node, "transB", 0) != 0 { 0 } else { 1 };
    ctx.own(&t, &node.input[1], axis, 1, Role::Producer);
    if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
        if let Some(d) = ctx.const_dims(c) {
            if d.iter().product::<usize>() > 1 {
                ctx.own(&t, c, d.len() - 1, 1, Role::Bias);
            }
        }
    }
}

pub fn matmul_own(ctx: &mut Ctx, node: &NodeProto, space: usize, n: usize) {
    ctx.own(&single(space, n), &node.input[1], 1, 1, Role::Producer);
}
