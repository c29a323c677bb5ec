//! The forward pass that follows every channel/neuron space through the main graph.
//! Nodes are visited in (topological) file order; the registry in [`super::ops`] says what each
//! op does with a tracked input: carry it to outputs, consume it into a weight, couple it, or
//! block it.

use std::collections::HashMap;

use super::couple::Tie;
use super::ops::{self, Flow};
use super::{Kind, Role, Slice, Space};
use crate::onnx::external::ExternalStore;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::walk::{node_label, Index, Use};

/// One space's stretch of a structure axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub space: usize,
    /// The space's first structure in this stretch (non-zero after Split/Slice).
    pub start: usize,
    pub len: usize,
}

/// How many entries of the axis one structure covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    One,
    /// After Flatten/Reshape: each structure owns an equal block, sized by the consumer.
    Block,
}

/// The structure axis a value carries: spaces side by side along `axis` (negative: from the
/// end), with the value's rank when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub segs: Vec<Seg>,
    pub axis: i64,
    pub rank: Option<usize>,
    pub width: Width,
}

impl Tracked {
    pub fn total(&self) -> usize {
        self.segs.iter().map(|s| s.len).sum()
    }

    /// The axis counted from the front, when it can be known.
    pub fn axis_pos(&self) -> Option<usize> {
        if self.axis >= 0 {
            Some(self.axis as usize)
        } else {
            self.rank.and_then(|r| usize::try_from(r as i64 + self.axis).ok())
        }
    }

    /// Whether ONNX axis attribute `a` (possibly negative) names this value's structure axis.
    pub fn is_axis(&self, a: i64) -> bool {
        if (a < 0) == (self.axis < 0) {
            return a == self.axis;
        }
        match self.rank {
            Some(r) => (if a < 0 { a + r as i64 } else { a }) == self.axis_pos().map(|p| p as i64).unwrap_or(-1),
            None => false,
        }
    }

    pub fn with_axis(&self, axis: i64, rank: Option<usize>) -> Tracked {
        Tracked { axis, rank, ..self.clone() }
    }
}

/// State of the pass, handed to the op behaviours.
pub struct Ctx<'a> {
    pub ix: &'a Index<'a>,
    pub spaces: Vec<Space>,
    pub unions: Vec<Tie>,
    consts: HashMap<&'a str, &'a TensorProto>,
    store: &'a ExternalStore,
}

impl<'a> Ctx<'a> {
    /// A context used only to read constants (no spaces).
    pub fn for_constants(ix: &'a Index<'a>, store: &'a ExternalStore) -> Self {
        let consts = ix.tensors.iter().filter(|t| t.graph == 0).map(|t| (t.value.as_str(), t.tensor)).collect();
        Ctx { ix, spaces: vec![], unions: vec![], consts, store }
    }

    /// A constant (initializer or Constant node) of the main graph.
    pub fn constant(&self, name: &str) -> Option<&'a TensorProto> {
        self.consts.get(name).copied()
    }

    /// The dims of a constant.
    pub fn const_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.constant(name).map(|t| t.dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    /// Integer values of a small int64/int32 constant (shapes, axes, pads).
    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.constant(name)?;
        let bytes = crate::onnx::tensor::element_bytes(t, self.store).ok()?;
        match t.data_type {
            7 => Some(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
            6 => {
                Some(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect())
            }
            _ => None,
        }
    }

    /// Float values of a small constant (scales).
    pub fn const_floats(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.constant(name)?;
        crate::onnx::tensor::read_floats(t, self.store).ok().map(|(_, v)| v)
    }

    /// Blocks every space on `t`.
    pub fn block(&mut self, t: &Tracked, reason: &str) {
        for s in &t.segs {
            self.spaces[s.space].blocked.get_or_insert_with(|| reason.to_string());
        }
    }

    /// Records that every structure of `t` owns a slice of `tensor` along `axis`, each
    /// structure covering `width` entries (segments laid side by side).
    pub fn own(&mut self, t: &Tracked, tensor: &str, axis: usize, width: usize, role: Role) {
        let mut offset = 0;
        for s in &t.segs {
            let (first, count) = (s.start, s.len);
            self.spaces[s.space].slices.push(Slice {
                tensor: tensor.to_string(),
                axis,
                offset,
                width,
                role,
                first,
                count,
            });
            offset += s.len * width;
        }
    }

    /// Ties two layouts position by position: every pair of overlapping segments is coupled
    /// at the offset their positions imply. False if the layouts differ in total width.
    pub fn couple(&mut self, a: &Tracked, b: &Tracked) -> bool {
        if a.total() != b.total() {
            return false;
        }
        for (x, px) in starts(a) {
            for (y, py) in starts(b) {
                let overlap = px < py + y.len && py < px + x.len;
                // At position p: x's structure x.start + p − px meets y's y.start + p − py.
                let delta = (x.start as i64 - px as i64) - (y.start as i64 - py as i64);
                if overlap && (x.space != y.space || delta != 0) {
                    self.unions.push(Tie { a: x.space, b: y.space, delta });
                }
            }
        }
        true
    }

    /// Starts a new space produced by `node`.
    pub fn new_space(&mut self, kind: Kind, node: &NodeProto, index: usize, n: usize) -> usize {
        self.spaces.push(Space::new(kind, node_label(node, index), n));
        self.spaces.len() - 1
    }
}

/// Each segment with its starting position on the axis.
fn starts(t: &Tracked) -> Vec<(Seg, usize)> {
    let mut pos = 0;
    t.segs
        .iter()
        .map(|s| {
            let at = pos;
            pos += s.len;
            (*s, at)
        })
        .collect()
}

/// Runs the pass over the main graph: returns the spaces and which pairs must be merged.
pub fn channel_spaces(ix: &Index, store: &ExternalStore) -> (Vec<Space>, Vec<Tie>) {
    let Some(main) = ix.graphs.first() else { return (vec![], vec![]) };
    let mut ctx = Ctx::for_constants(ix, store);
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    for (ni, node) in main.graph.node.iter().enumerate() {
        let inputs: Vec<Option<Tracked>> = node.input.iter().map(|i| tracked.get(i).cloned()).collect();
        let label = node_label(node, ni);
        if inputs.iter().any(Option::is_some) {
            match ops::flow(&mut ctx, ni, node, &inputs) {
                Ok(Flow { outputs }) => {
                    for (o, t) in outputs {
                        if let Some(name) = node.output.get(o) {
                            tracked.insert(name.clone(), t);
                        }
                    }
                }
                Err(why) => {
                    let reason = format!("{} node {label:?}: {why}", node.op_type);
                    inputs.iter().flatten().for_each(|t| ctx.block(t, &reason));
                }
            }
        }
        if let Some((kind, n, t)) = ops::produce(&mut ctx, ni, node) {
            let space = ctx.new_space(kind, node, ni, n);
            ops::own_producer(&mut ctx, node, space, n);
            if let Some(name) = node.output.first() {
                tracked.insert(name.clone(), Tracked { segs: vec![Seg { space, start: 0, len: n }], ..t });
            }
        }
    }
    block_escapes(&mut ctx, &tracked);
    (ctx.spaces, ctx.unions)
}

/// Tracked values that leave the main graph (graph outputs) or are read inside subgraphs
/// cannot change width.
fn block_escapes(ctx: &mut Ctx, tracked: &HashMap<String, Tracked>) {
    let mut names: Vec<&String> = tracked.keys().collect();
    names.sort();
    for name in names {
        for u in ctx.ix.uses(0, name) {
            let why = match u {
                Use::GraphOutput { .. } => format!("value {name:?} is a graph output"),
                Use::Node { graph, .. } if *graph != 0 => format!("value {name:?} is read inside a subgraph"),
                _ => continue,
            };
            let t = tracked[name].clone();
            ctx.block(&t, &why);
        }
    }
}
