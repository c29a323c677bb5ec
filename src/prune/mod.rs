//! The unstructured pass: find the prunable weights, score them, apply EMP per score vector
//! (global, per tensor or per row) and return a keep-mask per weight plus what EMP decided.
//! Writing the masks into the model is [`crate::rewrite`]'s job.

pub mod rows;
pub mod scope;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::onnx::load::Model;
use crate::onnx::walk::Index;
use crate::score::{self, Criterion};
use crate::weights::{self, Filter, Skipped, Weight};

pub use scope::Scope;

/// Everything that decides an unstructured pass.
#[derive(Clone, Debug)]
pub struct Config {
    pub criterion: Criterion,
    pub scope: Scope,
    pub beta: f64,
    pub filter: Filter,
}

/// What EMP decided for one score vector.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Group {
    /// `global`, a tensor name, or `tensor[row r]`.
    pub name: String,
    pub n: usize,
    /// `null` for an all-zero vector (left alone).
    pub n_eff: Option<f64>,
    pub keep: usize,
    pub s_eff: f64,
    pub s_eff_bound: Option<f64>,
}

/// One weight and which of its entries survive.
#[derive(Debug)]
pub struct Pruned {
    pub weight: Weight,
    pub mask: Vec<bool>,
}

/// The result of planning a pass.
#[derive(Debug, Default)]
pub struct Plan {
    pub groups: Vec<Group>,
    pub pruned: Vec<Pruned>,
    pub skipped: Vec<Skipped>,
}

/// Scores every selected weight and applies EMP in the configured scope.
pub fn plan(model: &Model, ix: &Index, cfg: &Config) -> Result<Plan> {
    let sel = weights::select(ix, &cfg.filter)?;
    let scores: Vec<Vec<f32>> = sel
        .weights
        .par_iter()
        .map(|w| score::score(model, ix, w, cfg.criterion).with_context(|| format!("scoring weight {:?}", w.name)))
        .collect::<Result<_>>()?;
    let (groups, masks) = match cfg.scope {
        Scope::Global => scope::global(&scores, cfg.beta)?,
        Scope::Tensor => scope::per_tensor(&sel.weights, &scores, cfg.beta)?,
        Scope::Row => scope::per_row(&sel.weights, &scores, cfg.beta)?,
    };
    let pruned = sel.weights.into_iter().zip(masks).map(|(weight, mask)| Pruned { weight, mask }).collect();
    Ok(Plan { groups, pruned, skipped: sel.skipped })
}
