//! Structure scores: the L2 (or L1) norm of every weight slice a structure owns — producer
//! rows, bias entries and consumer columns — summed over the spaces of a coupled group.
//! Carried parameters (BatchNorm statistics, depthwise filters) are sliced but not scored.
//!
//! `Wanda` sums the Wanda scores `|W_ij|·‖X_j‖₂` of the entries a structure owns in its
//! producer rows and consumer columns, each entry weighted by the calibration norm of the
//! input feature it multiplies: the producer rows measure what the structure draws from its
//! input (by the triangle inequality they bound `‖z_c‖₂` over the calibration data), the consumer
//! columns are exactly the norm of what removing it takes from the next layer
//! (`‖W_ic·h_c‖₂ = |W_ic|·‖h_c‖₂`). Biases multiply no activation and are not scored (a constant
//! neuron's effect shows in its consumer columns).

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};

use super::{Analysis, Group, Role, Slice};
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::Index;
use crate::score::calib::{self, Calibration};
use crate::weights::{self, Filter, Weight};

/// How slices are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    L2,
    L1,
    /// Sum of the owned entries' `|W|·‖X‖₂` (needs calibration data).
    Wanda,
}

/// Decoded values of the main graph's constants, by value name (decoded once, shared).
pub struct Values<'a> {
    model: &'a Model,
    by_name: HashMap<String, usize>,
    ix: &'a Index<'a>,
    cache: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// Weights with attached activation norms, by name (Wanda only), and their entry scores.
    wanda: HashMap<String, Weight>,
    scored: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl<'a> Values<'a> {
    pub fn new(model: &'a Model, ix: &'a Index<'a>) -> Self {
        let by_name = ix.tensors.iter().filter(|t| t.graph == 0).map(|t| (t.value.clone(), t.id)).collect();
        Values { model, by_name, ix, cache: HashMap::new(), wanda: HashMap::new(), scored: HashMap::new() }
    }

    /// Attaches calibrated weights for [`Norm::Wanda`].
    pub fn set_wanda(&mut self, weights: Vec<Weight>) {
        self.wanda = weights.into_iter().map(|w| (w.name.clone(), w)).collect();
    }

    /// Wanda scores of every entry of weight `name` (stored order).
    fn wanda(&mut self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        if !self.scored.contains_key(name) {
            let w = self.wanda.get(name).cloned().ok_or_else(|| anyhow!("no activation statistics for {name:?}"))?;
            let norms = w.act_norms.clone().ok_or_else(|| anyhow!("weight {name:?} was not calibrated"))?;
            let (dims, vals) = self.get(name)?.clone();
            let s = crate::score::wanda::entry_scores(&w, &vals, &norms)
                .with_context(|| format!("wanda scores of {name:?}"))?;
            self.scored.insert(name.to_string(), (dims, s));
        }
        Ok(&self.scored[name])
    }

    fn get(&mut self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        if !self.cache.contains_key(name) {
            let id = *self.by_name.get(name).ok_or_else(|| anyhow!("constant {name:?} not found"))?;
            let t = self.ix.tensors[id].tensor;
            let (_, v) =
                tensor::read_floats(t, &self.model.external).with_context(|| format!("scoring slices of {name:?}"))?;
            self.cache.insert(name.to_string(), (tensor::shape(t)?, v));
        }
        Ok(&self.cache[name])
    }
}

/// Per-structure scores of one group.
pub fn group_scores(values: &mut Values, a: &Analysis, g: &Group, norm: Norm) -> Result<Vec<f32>> {
    let mut total = vec![0f64; g.n];
    for (&s, &offset) in g.spaces.iter().zip(&g.offsets) {
        let space = &a.spaces[s];
        let gain = bn_gain(values, space)?;
        let mut acc = vec![0f64; space.n];
        for slice in space.slices.iter().filter(|s| scored(s.role, norm)) {
            let (dims, vals) =
                if norm == Norm::Wanda { values.wanda(&slice.tensor)? } else { values.get(&slice.tensor)? };
            let mut part = vec![0f64; space.n];
            accumulate(dims, vals, slice, norm, &mut part);
            let scale = |c: usize| match (&gain, slice.role) {
                (Some(k), Role::Producer | Role::Bias) => {
                    if norm == Norm::L2 {
                        k[c] * k[c]
                    } else {
                        k[c]
                    }
                }
                _ => 1.0,
            };
            acc.iter_mut().zip(part).enumerate().for_each(|(c, (a, p))| *a += p * scale(c));
        }
        for (t, a) in total[offset..offset + space.n].iter_mut().zip(acc) {
            *t += if norm == Norm::L2 { a.sqrt() } else { a };
        }
    }
    Ok(total.into_iter().map(|v| v as f32).collect())
}

/// Whether slices of this role count in the score.
fn scored(role: Role, norm: Norm) -> bool {
    match role {
        Role::Param => false,
        Role::Bias => norm != Norm::Wanda,
        Role::Producer | Role::Consumer => true,
    }
}

/// The weights whose slices score the prunable groups of `a`, with their calibration norms
/// attached (one tract pass over the calibration data for all of them).
pub fn calibrate(model: &Model, ix: &Index, a: &Analysis, data: &Calibration) -> Result<Vec<Weight>> {
    let wanted: std::collections::HashSet<&str> = a
        .groups
        .iter()
        .filter(|g| g.blocked.is_none() && g.n > 1)
        .flat_map(|g| &g.spaces)
        .flat_map(|&s| &a.spaces[s].slices)
        .filter(|s| matches!(s.role, Role::Producer | Role::Consumer))
        .map(|s| s.tensor.as_str())
        .collect();
    let mut ws: Vec<Weight> = weights::select(ix, &Filter::default())?
        .weights
        .into_iter()
        .filter(|w| ix.tensors[w.id].graph == 0 && wanted.contains(w.name.as_str()))
        .collect();
    if let Some(missing) = wanted.iter().find(|&&n| !ws.iter().any(|w| w.name == n)) {
        anyhow::bail!(
            "--criterion wanda: structure slice {missing:?} is not a Conv/Gemm/MatMul weight with a \
             measurable input activation (e.g. a fused attention weight); use --criterion l2 or l1"
        );
    }
    let norms = calib::collect(model, ix, &ws, data)?;
    calib::attach(&mut ws, &norms)?;
    Ok(ws)
}

/// `|γ_c| / √(σ²_c + ε)` per channel when a BatchNorm follows the producer.
fn bn_gain(values: &mut Values, space: &super::Space) -> Result<Option<Vec<f64>>> {
    let Some((scale, var, eps)) = &space.bn else { return Ok(None) };
    let gamma = values.get(scale)?.1.clone();
    let var = &values.get(var)?.1;
    Ok(Some(
        gamma.iter().zip(var).map(|(&g, &v)| (g as f64).abs() / ((v as f64) + *eps as f64).max(1e-12).sqrt()).collect(),
    ))
}

/// Adds `|x|` (L1) or `x²` (L2) of each entry of the slice to its structure's accumulator.
fn accumulate(dims: &[usize], vals: &[f32], s: &Slice, norm: Norm, acc: &mut [f64]) {
    let inner: usize = dims[s.axis + 1..].iter().product();
    let dim = dims[s.axis];
    let covered = s.covers(acc.len());
    let end = s.offset + covered.len() * s.width;
    for (i, &v) in vals.iter().enumerate() {
        let idx = (i / inner.max(1)) % dim.max(1);
        if idx >= s.offset && idx < end {
            let c = covered.start + (idx - s.offset) / s.width;
            let x = v as f64;
            acc[c] += if norm == Norm::L2 { x * x } else { x.abs() };
        }
    }
}
