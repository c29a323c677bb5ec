//! The unstructured pass: find the prunable weights, decide with EMP how many entries of each
//! score vector survive (global, per tensor or per row) and which — as a [`Cut`] per vector,
//! never a stored mask — then apply the cuts weight by weight ([`apply`]).
//!
//! Scores are recomputed from the (memory-mapped) weights whenever a pass needs them, so
//! planning holds at most a few tensors' scores at once, whatever the model size.

pub mod apply;
pub mod by_row;
pub mod rows;
pub mod scope;
pub mod scores;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::emp::{Cut, Sum};
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
    /// Calibration data for activation-aware criteria (`--calib`; empty otherwise).
    pub calib: crate::score::calib::Calibration,
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
    /// Share of the vector's L1 score mass kept (filled in when the cuts are applied).
    pub s_eff: f64,
    pub s_eff_bound: Option<f64>,
    /// Total L1 score mass (to turn the kept mass into `s_eff`).
    #[serde(skip)]
    pub mass: f64,
}

/// Which entries of one weight survive.
#[derive(Clone, Debug)]
pub enum WeightCut {
    /// One cut for every entry; `group` is the index of its EMP group.
    All { cut: Cut, group: usize },
    /// One cut per row; row `r` belongs to group `first_group + r`.
    Rows { cuts: Vec<Cut>, first_group: usize },
}

/// A weight and its cut.
#[derive(Clone, Debug)]
pub struct Planned {
    pub weight: Weight,
    pub cut: WeightCut,
}

/// The result of planning a pass.
#[derive(Debug, Default)]
pub struct Plan {
    pub groups: Vec<Group>,
    pub weights: Vec<Planned>,
    pub skipped: Vec<Skipped>,
    pub criterion: Option<Criterion>,
}

impl Plan {
    /// Records the kept score mass of applied weights into the groups' `s_eff`.
    pub fn settle(&mut self, kept: &[(usize, Sum)]) {
        let mut acc = vec![Sum::default(); self.groups.len()];
        for &(g, s) in kept {
            acc[g] = acc[g].merge(s);
        }
        for (g, k) in self.groups.iter_mut().zip(acc) {
            g.s_eff = if g.mass > 0.0 { k.value() / g.mass } else { 1.0 };
        }
    }
}

/// Finds the prunable weights and decides every cut.
pub fn plan(model: &Model, ix: &Index, cfg: &Config) -> Result<Plan> {
    let sel = select(model, ix, cfg)?;
    if cfg.scope.is_local() {
        let decided = sel.weights.par_iter().map(|w| decide(model, ix, cfg, w)).collect::<Result<Vec<_>>>()?;
        return Ok(assemble(sel, decided, cfg.criterion).0);
    }
    let scorer = |w: &Weight| scorer(model, ix, cfg, w);
    let (groups, cuts) = match cfg.scope {
        Scope::Global => scope::global(&sel.weights, &scorer, cfg.beta)?,
        _ => anyhow::bail!("--scope layer applies to structures (--level); use tensor for weights"),
    };
    let weights = sel.weights.into_iter().zip(cuts).map(|(weight, cut)| Planned { weight, cut }).collect();
    Ok(Plan { groups, weights, skipped: sel.skipped, criterion: Some(cfg.criterion) })
}

/// The prunable weights (with their calibration norms for activation-aware criteria) and the
/// candidates that were skipped.
pub fn select(model: &Model, ix: &Index, cfg: &Config) -> Result<weights::Selection> {
    let mut sel = weights::select(ix, &cfg.filter)?;
    if cfg.criterion == Criterion::Wanda {
        let norms = score::calib::collect(model, ix, &sel.weights, &cfg.calib)?;
        score::calib::attach(&mut sel.weights, &norms)?;
    }
    Ok(sel)
}

/// Decides one weight on its own (a local scope: `tensor` or `row`): its groups, numbered
/// from 0, and its cut. The save calls this as it rewrites each weight in place, so
/// planning overlaps writing; [`plan`] calls it for every weight up front.
pub fn decide(model: &Model, ix: &Index, cfg: &Config, w: &Weight) -> Result<(Vec<Group>, WeightCut)> {
    let scores = scorer(model, ix, cfg, w)?;
    match cfg.scope {
        Scope::Tensor => scope::tensor(w, scores, cfg.beta),
        Scope::Row => scope::rows(w, scores, cfg.beta),
        other => anyhow::bail!("internal error: scope {} is not decided weight by weight", other.name()),
    }
}

/// Joins per-weight decisions (from [`decide`], in weight order) into a plan, numbering the
/// groups in weight order. Also returns each weight's first group index.
pub fn assemble(
    sel: weights::Selection,
    decided: Vec<(Vec<Group>, WeightCut)>,
    criterion: Criterion,
) -> (Plan, Vec<usize>) {
    let mut groups = vec![];
    let mut offsets = vec![];
    let mut weights = vec![];
    for (weight, (g, cut)) in sel.weights.into_iter().zip(decided) {
        offsets.push(groups.len());
        weights.push(Planned { weight, cut: cut.renumbered(groups.len()) });
        groups.extend(g);
    }
    (Plan { groups, weights, skipped: sel.skipped, criterion: Some(criterion) }, offsets)
}

impl WeightCut {
    /// The same cut with its group indices moved up by `offset`.
    pub fn renumbered(self, offset: usize) -> WeightCut {
        match self {
            WeightCut::All { cut, group } => WeightCut::All { cut, group: group + offset },
            WeightCut::Rows { cuts, first_group } => WeightCut::Rows { cuts, first_group: first_group + offset },
        }
    }
}

fn scorer(model: &Model, ix: &Index, cfg: &Config, w: &Weight) -> Result<scores::Scores> {
    weight_scores(model, ix, w, cfg.criterion).with_context(|| format!("scoring weight {:?}", w.name))
}

/// A weight's scores: magnitude scores read straight from its element bytes (decoded chunk by
/// chunk when a pass reads them), other criteria computed.
pub fn weight_scores(model: &Model, ix: &Index, w: &Weight, criterion: Criterion) -> Result<scores::Scores> {
    if criterion == Criterion::Magnitude {
        let t = ix.tensors[w.id].tensor;
        let bytes = crate::onnx::tensor::element_bytes(t, &model.external)?;
        return Ok(scores::Scores::Raw { name: t.name.clone(), dtype: crate::onnx::tensor::float_type(t)?, bytes });
    }
    Ok(scores::Scores::Values(score::score(model, ix, w, criterion)?))
}
