//! Attention heads. Two forms are recognised:
//!
//! * the usual export: Q/K/V `MatMul` (+ bias `Add`) → `Reshape [b,s,H,d]` → `Transpose` →
//!   `MatMul` (Q·Kᵀ) → optional `Div`/`Mul` scale and mask `Add` → `Softmax` → `MatMul` with V →
//!   `Transpose` → `Reshape [b,s,H·d]` → output `MatMul`. Head `h` owns Q/K/V columns
//!   `h·d..(h+1)·d`, those bias entries and the output projection's rows; the Reshape shape
//!   constants (`H` explicit or `-1`) are rewritten;
//! * `com.microsoft.Attention` (packed QKV weight, `num_heads`), followed by the output
//!   projection `MatMul`.
//!
//! Every `Softmax` that is not part of a recognised layer is reported as an unrecognised
//! attention layer, left intact.

use std::collections::HashMap;

use super::graph::Ctx;
use super::{AttrEdit, Kind, Role, ShapeEdit, Slice, Space};
use crate::onnx::external::ExternalStore;
use crate::onnx::proto::NodeProto;
use crate::onnx::walk::{node_label, Index, Use};

/// Finds the head spaces of the main graph (no coupling between layers).
pub fn head_spaces(ix: &Index, store: &ExternalStore) -> (Vec<Space>, Vec<super::couple::Tie>) {
    let Some(main) = ix.graphs.first() else { return (vec![], vec![]) };
    let g = Graph::new(ix, store);
    let mut spaces = vec![];
    for (i, n) in main.graph.node.iter().enumerate() {
        let found = match (n.op_type.as_str(), n.domain.as_str()) {
            ("Softmax", d) if d.is_empty() || d == "ai.onnx" => {
                Some(exported(&g, i).unwrap_or_else(|why| unrecognised(n, i, why)))
            }
            ("Attention", "com.microsoft") => Some(fused(&g, i).unwrap_or_else(|why| unrecognised(n, i, why))),
            _ => None,
        };
        spaces.extend(found);
    }
    (spaces, vec![])
}

fn unrecognised(n: &NodeProto, i: usize, why: String) -> Space {
    let mut s = Space::new(Kind::Head, node_label(n, i), 0);
    s.blocked = Some(format!("attention layer at {} node {:?} not recognised: {why}", n.op_type, node_label(n, i)));
    s
}

/// Read-only helpers over the main graph.
struct Graph<'a> {
    ix: &'a Index<'a>,
    ctx_consts: Ctx<'a>,
    producer: HashMap<&'a str, usize>,
}

impl<'a> Graph<'a> {
    fn new(ix: &'a Index<'a>, store: &'a ExternalStore) -> Self {
        let main = ix.graphs[0].graph;
        let producer =
            main.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
        Graph { ix, ctx_consts: Ctx::for_constants(ix, store), producer }
    }

    fn node(&self, i: usize) -> &'a NodeProto {
        &self.ix.graphs[0].graph.node[i]
    }

    /// The node producing `value`, if its op is `op`.
    fn from(&self, value: &str, op: &str) -> Result<usize, String> {
        match self.producer.get(value) {
            Some(&i) if self.node(i).op_type == op => Ok(i),
            Some(&i) => Err(format!("expected {op} before {value:?}, found {}", self.node(i).op_type)),
            None => Err(format!("expected {op} before {value:?}")),
        }
    }

    /// The single consumer of `value`.
    fn only_consumer(&self, value: &str) -> Result<(usize, usize), String> {
        match self.ix.uses(0, value) {
            [Use::Node { graph: 0, node, slot }] => Ok((*node, *slot)),
            _ => Err(format!("{value:?} does not have exactly one consumer")),
        }
    }

    fn perm(&self, i: usize) -> Vec<i64> {
        self.node(i).attribute.iter().find(|a| a.name == "perm").map(|a| a.ints.clone()).unwrap_or_default()
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.ctx_consts.const_dims(name)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.ctx_consts.const_ints(name)
    }

    fn is_single_use(&self, value: &str) -> bool {
        self.ix.uses(0, value).len() == 1
    }
}

/// One projection: its weight, optional bias, and the Reshape that splits heads.
struct Proj {
    weight: String,
    bias: Option<String>,
    reshape: usize,
    shape: Shape,
}

/// A Reshape's target shape and, for each entry, which constant holds it: the Reshape's own
/// shape input, or one input of a `Concat` building the shape from constants and
/// `Unsqueeze`d dynamic sizes (dynamic entries read as 0, "copy this dim").
struct Shape {
    values: Vec<i64>,
    /// (node, input slot, position) of each entry's constant; `None` for dynamic entries.
    at: Vec<Option<(usize, usize, usize)>>,
}

impl Shape {
    /// The edit making entry `i` equal to `kept × factor`, if it is held by a constant.
    fn edit(&self, i: usize, factor: i64) -> Option<ShapeEdit> {
        self.at.get(i).copied().flatten().map(|(node, input, pos)| ShapeEdit::whole(node, input, pos, factor))
    }
}

/// The shape feeding Reshape node `r`.
fn reshape_target(g: &Graph, r: usize) -> Result<Shape, String> {
    let name = g.node(r).input.get(1).ok_or("Reshape without a shape")?;
    if let Some(values) = g.ints(name) {
        let at = (0..values.len()).map(|i| Some((r, 1, i))).collect();
        return Ok(Shape { values, at });
    }
    let c = g.from(name, "Concat").map_err(|_| "the target shape is neither constant nor a Concat of constants")?;
    let (mut values, mut at) = (vec![], vec![]);
    for (slot, input) in g.node(c).input.iter().enumerate() {
        match g.ints(input) {
            Some(v) => {
                at.extend((0..v.len()).map(|i| Some((c, slot, i))));
                values.extend(v);
            }
            None if g.from(input, "Unsqueeze").is_ok() => {
                values.push(0);
                at.push(None);
            }
            None => return Err(format!("shape part {input:?} is neither constant nor an unsqueezed size")),
        }
    }
    Ok(Shape { values, at })
}

/// Walks up from a head-split Transpose input to the projection.
fn projection(g: &Graph, transposed: &str, perm: &[i64]) -> Result<Proj, String> {
    let t = g.from(transposed, "Transpose")?;
    if g.perm(t) != perm {
        return Err(format!("Transpose perm {:?}, expected {perm:?}", g.perm(t)));
    }
    let r = g.from(&g.node(t).input[0], "Reshape")?;
    let rn = g.node(r);
    let shape = reshape_target(g, r)?;
    if shape.values.len() != 4 || shape.at[3].is_none() || (shape.values[2] != -1 && shape.at[2].is_none()) {
        return Err(format!("head split to {:?}, expected [b, s, H or -1, d] with constant H and d", shape.values));
    }
    let mut src = rn.input[0].clone();
    let mut bias = None;
    if let Ok(a) = g.from(&src, "Add") {
        let an = g.node(a);
        let (x, b) =
            if g.dims(&an.input[1]).is_some() { (&an.input[0], &an.input[1]) } else { (&an.input[1], &an.input[0]) };
        if g.dims(b).is_none() {
            return Err("projection bias is not constant".into());
        }
        bias = Some(b.clone());
        src = x.clone();
    }
    let m = g.from(&src, "MatMul")?;
    let weight = g.node(m).input[1].clone();
    if g.dims(&weight).is_none_or(|d| d.len() != 2) || !g.is_single_use(&weight) {
        return Err(format!("projection weight {weight:?} is not a constant matrix of its own"));
    }
    Ok(Proj { weight, bias, reshape: r, shape })
}

/// The exported pattern around Softmax node `s`.
fn exported(g: &Graph, s: usize) -> Result<Space, String> {
    let mut v = g.node(s).input[0].clone();
    for op in ["Add", "Div", "Mul"] {
        if let Ok(i) = g.from(&v, op) {
            let n = g.node(i);
            v = if g.producer.get(n.input[0].as_str()).is_some_and(|&p| g.node(p).op_type == "MatMul") || op != "Add" {
                n.input[0].clone()
            } else {
                n.input[1].clone()
            };
        }
    }
    let qk = g.node(g.from(&v, "MatMul")?);
    let q = projection(g, &qk.input[0], &[0, 2, 1, 3])?;
    let k = projection(g, &qk.input[1], &[0, 2, 3, 1])?;
    let (av, slot) = g.only_consumer(&g.node(s).output[0])?;
    if g.node(av).op_type != "MatMul" || slot != 0 {
        return Err("Softmax does not feed the value MatMul".into());
    }
    let vproj = projection(g, &g.node(av).input[1], &[0, 2, 1, 3])?;
    let (t, _) = g.only_consumer(&g.node(av).output[0])?;
    if g.node(t).op_type != "Transpose" || g.perm(t) != [0, 2, 1, 3] {
        return Err("attention output is not transposed back".into());
    }
    let (ro, _) = g.only_consumer(&g.node(t).output[0])?;
    if g.node(ro).op_type != "Reshape" {
        return Err("heads are not merged by a Reshape".into());
    }
    let merge = reshape_target(g, ro)?;
    let (out, oslot) = g.only_consumer(&g.node(ro).output[0])?;
    let wo = g.node(out).input.get(1).cloned().filter(|_| g.node(out).op_type == "MatMul" && oslot == 0);
    let wo = wo.ok_or("merged heads do not feed an output MatMul")?;
    let width = g.dims(&q.weight).map(|d| d[1]).unwrap_or(0);
    let d = q.shape.values[3];
    if d <= 0
        || width % d as usize != 0
        || g.dims(&wo).is_none_or(|x| x.len() != 2 || x[0] != width)
        || !g.is_single_use(&wo)
    {
        return Err("head size, projection widths and output projection do not agree".into());
    }
    let (d, heads) = (d as usize, width / d as usize);
    for p in [&q, &k, &vproj] {
        if p.shape.values[2] != -1 && p.shape.values[2] as usize != heads
            || p.shape.values[3] as usize != d
            || g.dims(&p.weight).map(|x| x[1]) != Some(width)
        {
            return Err("Q, K and V do not split into the same heads".into());
        }
    }
    let mut space = Space::new(Kind::Head, node_label(g.node(s), s), heads);
    for p in [&q, &k, &vproj] {
        space.slices.push(Slice::whole(p.weight.clone(), 1, 0, d, Role::Producer));
        if let Some(b) = &p.bias {
            space.slices.push(Slice::whole(b.clone(), g.dims(b).map(|x| x.len() - 1).unwrap_or(0), 0, d, Role::Bias));
        }
        if p.shape.values[2] != -1 {
            // Q, K and V may read one shared shape: edit it once.
            space.shapes.extend(p.shape.edit(2, 1).filter(|e| !space.shapes.contains(e)));
        }
    }
    space.slices.push(Slice::whole(wo, 0, 0, d, Role::Consumer));
    if merge.values.len() != 3 {
        return Err("heads merge to a rank other than 3".into());
    }
    if merge.values[2] != -1 {
        let e = merge.edit(2, d as i64).ok_or("the merged width is not a constant")?;
        space.shapes.push(e);
    }
    shapes_are_private(g, &space, &[&q, &k, &vproj], ro)?;
    Ok(space)
}

/// A shape built by a Concat is edited in place: it must feed only this layer's Reshapes.
fn shapes_are_private(g: &Graph, space: &Space, projs: &[&Proj], merge: usize) -> Result<(), String> {
    let mine: Vec<usize> =
        projs.iter().filter_map(|p| p.shape.at.iter().flatten().next().map(|a| a.0)).chain([merge]).collect();
    let reshapes: Vec<usize> = projs.iter().map(|p| p.reshape).chain([merge]).collect();
    for e in &space.shapes {
        if g.node(e.node).op_type != "Concat" || !mine.contains(&e.node) {
            continue;
        }
        let shared = g.ix.uses(0, &g.node(e.node).output[0]).iter().any(|u| match u {
            Use::Node { graph: 0, node, .. } => !reshapes.contains(node),
            _ => true,
        });
        if shared {
            return Err("the head-split shape is built once and shared beyond this layer".into());
        }
    }
    Ok(())
}

/// `com.microsoft.Attention` node `a` and its output projection.
fn fused(g: &Graph, a: usize) -> Result<Space, String> {
    let n = g.node(a);
    let heads = n.attribute.iter().find(|x| x.name == "num_heads").map(|x| x.i).ok_or("no num_heads")? as usize;
    if n.attribute.iter().any(|x| x.name == "qkv_hidden_sizes" && !x.ints.is_empty()) {
        return Err("qkv_hidden_sizes is not supported".into());
    }
    let w = n.input.get(1).cloned().ok_or("no weights")?;
    let wd =
        g.dims(&w).filter(|d| d.len() == 2 && d[1] % 3 == 0).ok_or("weights are not a constant [D, 3·D'] matrix")?;
    let hidden = wd[1] / 3;
    if heads == 0 || hidden % heads != 0 || !g.is_single_use(&w) {
        return Err("num_heads does not divide the hidden size".into());
    }
    let d = hidden / heads;
    let (out, slot) = g.only_consumer(&n.output[0])?;
    let wo = g.node(out).input.get(1).cloned().filter(|_| g.node(out).op_type == "MatMul" && slot == 0);
    let wo = wo
        .filter(|wo| g.dims(wo).is_some_and(|x| x.len() == 2 && x[0] == hidden))
        .ok_or("output does not feed a constant projection MatMul")?;
    let mut space = Space::new(Kind::Head, node_label(n, a), heads);
    for part in 0..3 {
        space.slices.push(Slice::whole(w.clone(), 1, part * hidden, d, Role::Producer));
        if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
            space.slices.push(Slice::whole(b.clone(), 0, part * hidden, d, Role::Bias));
        }
    }
    space.slices.push(Slice::whole(wo, 0, 0, d, Role::Consumer));
    space.attrs.push(AttrEdit { node: a, name: "num_heads".into(), factor: 1, first: 0, count: usize::MAX });
    Ok(space)
}
