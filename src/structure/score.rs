//! Structure scores: the L2 (or L1) norm of every weight slice a structure owns — producer
//! rows, bias entries and consumer columns — summed over the spaces of a coupled group.
//! Carried parameters (BatchNorm statistics, depthwise filters) are sliced but not scored.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};

use super::{Analysis, Group, Role, Slice};
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::Index;

/// How slices are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    L2,
    L1,
}

/// Decoded values of the main graph's constants, by value name (decoded once, shared).
pub struct Values<'a> {
    model: &'a Model,
    by_name: HashMap<String, usize>,
    ix: &'a Index<'a>,
    cache: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl<'a> Values<'a> {
    pub fn new(model: &'a Model, ix: &'a Index<'a>) -> Self {
        let by_name = ix.tensors.iter().filter(|t| t.graph == 0).map(|t| (t.value.clone(), t.id)).collect();
        Values { model, by_name, ix, cache: HashMap::new() }
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
    for &s in &g.spaces {
        let space = &a.spaces[s];
        let gain = bn_gain(values, space)?;
        let mut acc = vec![0f64; g.n];
        for slice in space.slices.iter().filter(|s| s.role != Role::Param) {
            let (dims, vals) = values.get(&slice.tensor)?;
            let mut part = vec![0f64; g.n];
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
        for (t, a) in total.iter_mut().zip(acc) {
            *t += if norm == Norm::L2 { a.sqrt() } else { a };
        }
    }
    Ok(total.into_iter().map(|v| v as f32).collect())
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
    let end = s.offset + acc.len() * s.width;
    for (i, &v) in vals.iter().enumerate() {
        let idx = (i / inner.max(1)) % dim.max(1);
        if idx >= s.offset && idx < end {
            let c = (idx - s.offset) / s.width;
            let x = v as f64;
            acc[c] += if norm == Norm::L2 { x * x } else { x.abs() };
        }
    }
}
