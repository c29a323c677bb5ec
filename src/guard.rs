//! The validation guard (`--guard`): when the fully pruned model fails validation, find the
//! weights responsible and restore them dense.
//!
//! Some tensors look like weights but are fixed transforms (STFT/DCT bases, one-hot tables):
//! pruning them breaks the model however "unimportant" their entries look. The guard works in
//! memory: candidate models are the original with a subset of the planned weights zeroed,
//! validated with [`validate::validate`]. Culprits are found one at a time by bisection: given
//! a set `B` that passes and candidates `C` such that `B ∪ C` fails, split `C` in halves
//! `C1, C2`; if `B ∪ C1` fails the culprit is in `C1`, else it is in `C2` with base `B ∪ C1`.
//! Each culprit costs ⌈log2 |C|⌉ validations. After restoring it, the rest is validated again;
//! this repeats until the model passes. Restored weights are kept whole (their cut becomes
//! "keep everything"), and the model is written once afterwards.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::emp::Cut;
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::{visit_tensors_mut, Index};
use crate::prune::{Plan, WeightCut};
use crate::rewrite::zero::{self, Counts};
use crate::score::Criterion;
use crate::validate::{self, Options};

/// What the guard did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GuardReport {
    /// Names of the weights restored dense, in the order they were found.
    pub restored: Vec<String>,
    /// Sparsity of the prunable weights with every planned cut, and after restoring.
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// Validations run by the guard (the final validation of the written model not included).
    pub validations: usize,
    /// Whether the model passed with the restored weights (false only if even restoring every
    /// culprit found could not make it pass).
    pub passed: bool,
}

/// Zeroed payloads of the planned weights, computed once.
struct Pruned {
    bytes: Vec<Bytes>,
    counts: Vec<Counts>,
}

/// Runs the guard and turns the cuts of the restored weights into "keep everything".
pub fn run(model: &Model, ix: &Index, plan: &mut Plan, criterion: Criterion, opts: &Options) -> Result<GuardReport> {
    let quick = Options { runs: 1, save_io: None, labels: None, ..opts.clone() };
    let pruned = zero_all(model, ix, plan, criterion)?;
    let mut g = Guard { model, plan, pruned: &pruned, opts: &quick, validations: 0 };
    let all: Vec<usize> = (0..plan_len(g.plan)).collect();
    let mut active = all.clone();
    let mut restored: Vec<usize> = vec![];
    let mut passed = g.passes(&active)?;
    while !passed && !active.is_empty() {
        let culprit = g.bisect(&[], &active)?;
        restored.push(culprit);
        active.retain(|&i| i != culprit);
        eprintln!("emprune: guard: restoring {:?}", g.plan.weights[culprit].weight.name);
        passed = g.passes(&active)?;
    }
    let validations = g.validations;
    let report = GuardReport {
        restored: restored.iter().map(|&i| plan.weights[i].weight.name.clone()).collect(),
        sparsity_before: sparsity(&pruned.counts, &all, plan),
        sparsity_after: sparsity(&pruned.counts, &active, plan),
        validations,
        passed,
    };
    for &i in &restored {
        keep_everything(&mut plan.weights[i].cut);
    }
    Ok(report)
}

fn plan_len(plan: &Plan) -> usize {
    plan.weights.len()
}

struct Guard<'a> {
    model: &'a Model,
    plan: &'a Plan,
    pruned: &'a Pruned,
    opts: &'a Options,
    validations: usize,
}

impl Guard<'_> {
    /// Whether the original with the weights `set` (plan indices) pruned passes validation.
    fn passes(&mut self, set: &[usize]) -> Result<bool> {
        let by_id: HashMap<usize, usize> = set.iter().map(|&i| (self.plan.weights[i].weight.id, i)).collect();
        let mut proto = self.model.proto.clone();
        visit_tensors_mut(&mut proto, &mut |id, t| {
            if let Some(&i) = by_id.get(&id) {
                tensor::set_raw(t, self.pruned.bytes[i].clone());
            }
            Ok(())
        })?;
        let candidate = Model::from_proto(proto, self.model.external.dir());
        self.validations += 1;
        let v = validate::validate(self.model, &candidate, self.opts).context("guard validation")?;
        Ok(v.passed)
    }

    /// One culprit among `cands`, knowing `base` passes and `base ∪ cands` fails.
    fn bisect(&mut self, base: &[usize], cands: &[usize]) -> Result<usize> {
        if cands.len() == 1 {
            return Ok(cands[0]);
        }
        let (c1, c2) = cands.split_at(cands.len() / 2);
        let with_c1: Vec<usize> = base.iter().chain(c1).copied().collect();
        if self.passes(&with_c1)? {
            self.bisect(&with_c1, c2)
        } else {
            self.bisect(base, c1)
        }
    }
}

fn zero_all(model: &Model, ix: &Index, plan: &Plan, criterion: Criterion) -> Result<Pruned> {
    let mut bytes = vec![];
    let mut counts = vec![];
    for p in &plan.weights {
        let (b, c) = zero::zero(model, ix, p, criterion)?;
        bytes.push(b);
        counts.push(c);
    }
    Ok(Pruned { bytes, counts })
}

/// Sparsity of all planned weights when only `active` are pruned.
fn sparsity(counts: &[Counts], active: &[usize], plan: &Plan) -> f64 {
    let n: usize = plan.weights.iter().map(|p| p.weight.numel()).sum();
    let kept: usize = counts
        .iter()
        .enumerate()
        .map(|(i, c)| if active.contains(&i) { c.nonzero_after } else { c.nonzero_before })
        .sum();
    crate::report::sparsity(kept, n)
}

fn keep_everything(cut: &mut WeightCut) {
    match cut {
        WeightCut::All { cut, .. } => *cut = Cut::ALL,
        WeightCut::Rows { cuts, .. } => cuts.iter_mut().for_each(|c| *c = Cut::ALL),
    }
}
