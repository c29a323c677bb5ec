//! Finding the prunable weights of a model: tensors that feed a registered weight slot
//! (see [`slots`]), possibly through layout-preserving ops (Cast, Identity, Transpose), and
//! nothing else. A tensor shared with a non-prunable use (a tied embedding, a graph output)
//! is skipped with a note; `--include`/`--exclude` filter by name.

pub mod slots;

use anyhow::{bail, Result};
use regex::Regex;

use crate::onnx::dtype::{onnx_type_name, FloatType};
use crate::onnx::tensor::{self, Storage};
use crate::onnx::walk::{node_label, Index, Site, Use};

/// A weight EMP may prune.
#[derive(Clone, Debug)]
pub struct Weight {
    /// Tensor id in the [`Index`].
    pub id: usize,
    pub name: String,
    /// Path of the graph holding it (`main`, or a subgraph path).
    pub graph: String,
    pub site: Site,
    /// Op type and node label of its (first) prunable consumer.
    pub op: String,
    pub node: String,
    pub dtype: FloatType,
    pub shape: Vec<usize>,
    /// Axes of the stored tensor that index output units (rows).
    pub unit_axes: Vec<usize>,
    pub storage: Storage,
    /// The activation its (first) prunable consumer multiplies it with, if that is an ONNX
    /// value (for activation-aware scores).
    pub activation: Option<Activation>,
    /// Per input feature `‖X_j‖₂` over the calibration data, attached when planning with an
    /// activation-aware criterion (`--criterion wanda`).
    pub act_norms: Option<std::sync::Arc<Vec<f64>>>,
}

/// Where a weight's input activation comes from and which axes hold the features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The value name (the consumer's input).
    pub value: String,
    /// Index of the graph holding the consumer (in the [`Index`]).
    pub graph: usize,
    /// The activation's feature axis (negative: from the end).
    pub act_axis: isize,
    /// The stored weight axis indexing the same features.
    pub weight_axis: usize,
    /// Conv `group` (1 otherwise).
    pub groups: usize,
}

impl Weight {
    /// A plain f32 raw-data weight of `shape` whose rows are `unit_axes` (test fixture).
    #[cfg(test)]
    pub fn fixture(shape: &[usize], unit_axes: &[usize]) -> Weight {
        Weight {
            id: 0,
            name: "w".into(),
            graph: "main".into(),
            site: Site::Initializer,
            op: "MatMul".into(),
            node: "n".into(),
            dtype: FloatType::F32,
            shape: shape.to_vec(),
            unit_axes: unit_axes.to_vec(),
            storage: Storage::Raw,
            activation: None,
            act_norms: None,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A candidate that was not pruned, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Which weights are candidates.
#[derive(Clone, Debug)]
pub struct Filter {
    pub ops: Vec<String>,
    pub include: Vec<Regex>,
    pub exclude: Vec<Regex>,
}

impl Default for Filter {
    fn default() -> Self {
        Self { ops: slots::DEFAULT_OPS.iter().map(|s| s.to_string()).collect(), include: vec![], exclude: vec![] }
    }
}

impl Filter {
    fn admits(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(name)))
            && !self.exclude.iter().any(|r| r.is_match(name))
    }
}

/// The weights to prune and the candidates set aside.
#[derive(Debug, Default)]
pub struct Selection {
    pub weights: Vec<Weight>,
    pub skipped: Vec<Skipped>,
}

/// One consumer reached from a tensor, with the axis map from the consumer's view of the
/// tensor back to its stored axes (changed by Transpose on the way).
struct Reached {
    place: Use,
    view_to_stored: Vec<usize>,
}

/// Ops that pass a weight through unchanged in content (up to an axis permutation).
const TRANSPARENT: &[&str] = &["Cast", "Identity", "Transpose"];

pub fn select(ix: &Index, filter: &Filter) -> Result<Selection> {
    let mut sel = Selection::default();
    for entry in &ix.tensors {
        let shape = tensor::shape(entry.tensor)?;
        let rank = shape.len();
        let mut reached = vec![];
        follow(ix, entry.graph, &entry.value, (0..rank).collect(), &mut reached, 0);
        let mut layouts = vec![];
        let mut blockers = vec![];
        for r in &reached {
            match r.place {
                Use::Node { graph, node, slot } => {
                    let n = ix.node(graph, node);
                    match slots::describe(n, slot, rank, &filter.ops) {
                        Some(l) => {
                            let act = l.feature.and_then(|f| activation(n, graph, &f, &r.view_to_stored));
                            layouts.push((
                                n,
                                node,
                                l.unit_axes.iter().map(|&a| r.view_to_stored[a]).collect::<Vec<_>>(),
                                act,
                            ))
                        }
                        None => blockers.push(format!("{} node {:?}", n.op_type, node_label(n, node))),
                    }
                }
                Use::GraphOutput { .. } => blockers.push("a graph output".into()),
            }
        }
        let Some((first, first_idx, unit_axes, activation)) = layouts.first().cloned() else { continue };
        let name = entry.value.clone();
        if !filter.admits(&name) {
            continue;
        }
        if let Some(b) = blockers.first() {
            sel.skipped.push(Skipped { name, reason: format!("shared with a non-prunable use ({b})") });
            continue;
        }
        if layouts.iter().any(|(_, _, u, _)| *u != unit_axes) {
            sel.skipped.push(Skipped { name, reason: "its consumers disagree on which axis is the output".into() });
            continue;
        }
        let Some(dtype) = FloatType::from_onnx(entry.tensor.data_type) else {
            bail!(
                "weight {name:?} of {} node {:?} has unsupported data type {} (exclude it with --exclude)",
                first.op_type,
                node_label(first, first_idx),
                onnx_type_name(entry.tensor.data_type)
            );
        };
        if shape.iter().product::<usize>() == 0 {
            continue;
        }
        sel.weights.push(Weight {
            id: entry.id,
            name,
            graph: ix.graphs[entry.graph].path.clone(),
            site: entry.site.clone(),
            op: first.op_type.clone(),
            node: node_label(first, first_idx),
            dtype,
            shape,
            unit_axes,
            storage: tensor::storage(entry.tensor),
            activation,
            act_norms: None,
        });
    }
    Ok(sel)
}

/// The activation input of consumer `n` (in graph `graph`), with the weight axis mapped back
/// to the stored tensor.
fn activation(
    n: &crate::onnx::proto::NodeProto,
    graph: usize,
    f: &slots::Feature,
    view_to_stored: &[usize],
) -> Option<Activation> {
    let value = n.input.get(f.input).filter(|v| !v.is_empty())?.clone();
    let weight_axis = *view_to_stored.get(f.weight_axis)?;
    Some(Activation { value, graph, act_axis: f.act_axis, weight_axis, groups: f.groups })
}

/// Collects the consumers of `value` (defined in `graph`), looking through transparent ops.
fn follow(ix: &Index, graph: usize, value: &str, map: Vec<usize>, out: &mut Vec<Reached>, depth: usize) {
    for &u in ix.uses(graph, value) {
        if let Use::Node { graph: g, node, slot: 0 } = u {
            let n = ix.node(g, node);
            if depth < 8 && TRANSPARENT.contains(&n.op_type.as_str()) {
                if let (Some(next), Some(out_name)) = (through(n, &map), n.output.first()) {
                    follow(ix, g, out_name, next, out, depth + 1);
                    continue;
                }
            }
        }
        out.push(Reached { place: u, view_to_stored: map.clone() });
    }
}

/// The axis map after passing through transparent node `n` (`None` if malformed).
fn through(n: &crate::onnx::proto::NodeProto, map: &[usize]) -> Option<Vec<usize>> {
    if n.op_type != "Transpose" {
        return Some(map.to_vec());
    }
    let rank = map.len();
    let perm: Vec<usize> = match n.attribute.iter().find(|a| a.name == "perm") {
        Some(a) => a.ints.iter().map(|&p| usize::try_from(p).ok().filter(|&p| p < rank)).collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    (perm.len() == rank).then(|| perm.iter().map(|&p| map[p]).collect())
}
