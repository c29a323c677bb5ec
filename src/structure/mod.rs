//! Structured pruning analysis: which channels, neurons and attention heads can be removed as
//! a whole, and every constant slice each of them owns.
//!
//! A *space* is the output-channel axis of one producer (a Conv's filters, a Gemm/MatMul's
//! output features). One forward pass over the graph (nodes are topologically sorted) follows
//! every space through the ops that carry its axis ([`ops`], one file per op family, looked up
//! in an explicit registry) to the weights that consume it. Spaces that meet in a residual
//! Add/Mul/Sum are merged into one group; Concat places several spaces side by side. Any op
//! the registry does not know blocks the spaces reaching it — safe by default — and the report
//! names that node. Attention heads are matched separately ([`heads`]).

pub mod couple;
pub mod graph;
pub mod heads;
pub mod job;
pub mod ops;
pub mod plan;
pub mod score;

use crate::onnx::external::ExternalStore;
use crate::onnx::walk::Index;

/// What role a slice plays (only producer, bias and consumer slices count in the score).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Producer,
    Bias,
    /// Per-channel parameters carried along (BatchNorm statistics, scale constants,
    /// depthwise filters): sliced, not scored.
    Param,
    Consumer,
}

/// A constant tensor slice owned by a space: along `axis`, structures `first ..
/// first + count` of the space own the entries from `offset` on, `width` each (structure
/// `c` owns `offset + (c−first)·width ..`). `count = usize::MAX` means "to the last one".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Value name of the constant (initializer or Constant output) in the main graph.
    pub tensor: String,
    pub axis: usize,
    pub offset: usize,
    pub width: usize,
    pub role: Role,
    pub first: usize,
    pub count: usize,
}

impl Slice {
    /// A slice covering every structure of its space.
    pub fn whole(tensor: impl Into<String>, axis: usize, offset: usize, width: usize, role: Role) -> Self {
        Slice { tensor: tensor.into(), axis, offset, width, role, first: 0, count: usize::MAX }
    }

    /// The structures of a space of `n` this slice covers.
    pub fn covers(&self, n: usize) -> std::ops::Range<usize> {
        self.first..self.first.saturating_add(self.count).min(n)
    }

    /// Tensor positions along `axis` owned by structure `c` (which must be covered).
    pub fn entries(&self, c: usize) -> std::ops::Range<usize> {
        let start = self.offset + (c - self.first) * self.width;
        start..start + self.width
    }
}

/// The kind of structure a space holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Conv/ConvTranspose output channels.
    Channel,
    /// Gemm/MatMul output features (MLP hidden neurons).
    Neuron,
    /// Attention heads.
    Head,
}

/// One producer's structure axis and what it owns.
#[derive(Clone, Debug)]
pub struct Space {
    pub kind: Kind,
    /// Label of the producing node.
    pub producer: String,
    /// Number of structures (channels, neurons or heads).
    pub n: usize,
    pub slices: Vec<Slice>,
    /// Why it cannot be pruned (the node or pattern that blocked it).
    pub blocked: Option<String>,
    /// Attribute rewrites implied by removal: (node index, attribute name) set to the new
    /// count times `factor` (e.g. `num_heads`, a depthwise Conv's `group`).
    pub attrs: Vec<AttrEdit>,
    /// Shape constants to rewrite: (Reshape node index, position in the shape, per-structure
    /// factor): the entry becomes `kept × factor`.
    pub shapes: Vec<ShapeEdit>,
    /// A BatchNormalization right after the producer rescales each channel by `γ/√(σ²+ε)`:
    /// (scale, variance, epsilon). Scoring applies it to the producer's slices, as folding
    /// the BN would, since the raw filter norm says nothing once BN renormalises it.
    pub bn: Option<(String, String, f32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrEdit {
    pub node: usize,
    pub name: String,
    pub factor: i64,
    /// The structures of the space that count: `first .. first + count` (`usize::MAX`: all).
    pub first: usize,
    pub count: usize,
}

/// Entry `position` of the constant at input `input` of node `node` (a Reshape shape, Split
/// sizes, Slice starts/ends) becomes the sum, over the spaces listing the same entry, of
/// `factor ×` the structures kept among `first .. first + count` of that space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeEdit {
    pub node: usize,
    pub input: usize,
    pub position: usize,
    pub factor: i64,
    pub first: usize,
    pub count: usize,
}

impl ShapeEdit {
    /// An edit counting every structure of the space.
    pub fn whole(node: usize, input: usize, position: usize, factor: i64) -> Self {
        ShapeEdit { node, input, position, factor, first: 0, count: usize::MAX }
    }
}

impl Space {
    pub fn new(kind: Kind, producer: String, n: usize) -> Self {
        Space { kind, producer, n, slices: vec![], blocked: None, attrs: vec![], shapes: vec![], bn: None }
    }
}

/// Spaces coupled so that structure `c` of the group is removed from all of them together.
/// Member `spaces[i]` holds the group's structures `offsets[i] .. offsets[i] + its n`.
#[derive(Clone, Debug)]
pub struct Group {
    pub kind: Kind,
    pub spaces: Vec<usize>,
    pub offsets: Vec<usize>,
    pub n: usize,
    /// The first reason any member is blocked.
    pub blocked: Option<String>,
}

/// The result of the analysis.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub spaces: Vec<Space>,
    pub groups: Vec<Group>,
}

/// Which structures to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Conv output channels and MLP hidden neurons.
    Channel,
    /// Attention heads.
    Head,
}

/// Finds every structure group of the main graph.
pub fn analyse(ix: &Index, store: &ExternalStore, level: Level) -> Analysis {
    let spaces = match level {
        Level::Channel => graph::channel_spaces(ix, store),
        Level::Head => heads::head_spaces(ix, store),
    };
    let (spaces, ties) = spaces;
    Analysis { groups: couple::groups(&spaces, &ties), spaces }
}
