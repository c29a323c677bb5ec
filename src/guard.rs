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
//!
//! The search ([`search`]) is generic over *units*: planned weights here, structure groups for
//! structured pruning (`--level`, see [`crate::structure::job`]), where a restored group keeps
//! every structure.

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
    /// Names of the units restored whole, in the order they were found: weights restored dense,
    /// or (structured) the producers of the structure groups that keep all their structures.
    pub restored: Vec<String>,
    /// Sparsity of the prunable weights with every planned cut, and after restoring
    /// (structured: the share of the model's parameters removed).
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// Structured: parameters of the model with every planned removal, and after restoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params_after: Option<u64>,
    /// Validations run by the guard (the final validation of the written model not included).
    pub validations: usize,
    /// Whether the model passed with the restored weights (false only if even restoring every
    /// culprit found could not make it pass).
    pub passed: bool,
}

/// The outcome of a culprit search over units `0..n` (planned weights or structure groups).
#[derive(Clone, Debug)]
pub struct Search {
    /// Culprits, in the order found.
    pub restored: Vec<usize>,
    /// The units still pruned.
    pub active: Vec<usize>,
    pub passed: bool,
    pub validations: usize,
}

/// The guard's one mechanism: validates the model with every unit pruned and, while it fails,
/// bisects for one culprit, restores it and validates again. `passes(set)` builds the original
/// with only the units of `set` pruned and validates it; `name` labels a unit in the log.
pub fn search(
    n: usize,
    passes: &mut dyn FnMut(&[usize]) -> Result<bool>,
    name: &dyn Fn(usize) -> String,
) -> Result<Search> {
    let mut validations = 0;
    let mut check = |set: &[usize]| -> Result<bool> {
        validations += 1;
        passes(set)
    };
    let mut active: Vec<usize> = (0..n).collect();
    let mut restored: Vec<usize> = vec![];
    let mut passed = check(&active)?;
    while !passed && !active.is_empty() {
        let culprit = bisect(&mut check, &[], &active)?;
        restored.push(culprit);
        active.retain(|&i| i != culprit);
        eprintln!("emprune: guard: restoring {}", name(culprit));
        passed = check(&active)?;
    }
    Ok(Search { restored, active, passed, validations })
}

/// One culprit among `cands`, knowing `base` passes and `base ∪ cands` fails.
fn bisect(check: &mut dyn FnMut(&[usize]) -> Result<bool>, base: &[usize], cands: &[usize]) -> Result<usize> {
    match cands {
        [] => anyhow::bail!("guard: the bisection ran out of candidates"),
        [c] => return Ok(*c),
        _ => {}
    }
    let (c1, c2) = cands.split_at(cands.len() / 2);
    let with_c1: Vec<usize> = base.iter().chain(c1).copied().collect();
    if check(&with_c1)? {
        bisect(check, &with_c1, c2)
    } else {
        bisect(check, base, c1)
    }
}

/// The guard's validation options: one timed run, no I/O dump, no accuracy.
pub fn quick(opts: &Options) -> Options {
    Options { runs: 1, save_io: None, labels: None, ..opts.clone() }
}

/// Zeroed payloads of the planned weights, computed once.
struct Pruned {
    bytes: Vec<Bytes>,
    counts: Vec<Counts>,
}

/// Runs the guard and turns the cuts of the restored weights into "keep everything".
pub fn run(model: &Model, ix: &Index, plan: &mut Plan, criterion: Criterion, opts: &Options) -> Result<GuardReport> {
    let quick = quick(opts);
    let pruned = zero_all(model, ix, plan, criterion)?;
    let all: Vec<usize> = (0..plan.weights.len()).collect();
    let found = {
        let plan: &Plan = plan;
        let mut passes = |set: &[usize]| candidate_passes(model, plan, &pruned, &quick, set);
        search(plan.weights.len(), &mut passes, &|i| format!("{:?}", plan.weights[i].weight.name))?
    };
    let report = GuardReport {
        restored: found.restored.iter().map(|&i| plan.weights[i].weight.name.clone()).collect(),
        sparsity_before: sparsity(&pruned.counts, &all, plan),
        sparsity_after: sparsity(&pruned.counts, &found.active, plan),
        params_before: None,
        params_after: None,
        validations: found.validations,
        passed: found.passed,
    };
    for &i in &found.restored {
        keep_everything(&mut plan.weights[i].cut);
    }
    Ok(report)
}

/// Whether the original with the weights `set` (plan indices) pruned passes validation.
fn candidate_passes(model: &Model, plan: &Plan, pruned: &Pruned, opts: &Options, set: &[usize]) -> Result<bool> {
    let by_id: HashMap<usize, usize> = set.iter().map(|&i| (plan.weights[i].weight.id, i)).collect();
    let mut proto = model.proto.clone();
    visit_tensors_mut(&mut proto, &mut |id, t| {
        if let Some(&i) = by_id.get(&id) {
            tensor::set_raw(t, pruned.bytes[i].clone());
        }
        Ok(())
    })?;
    let candidate = Model::from_proto(proto, model.external.dir());
    let v = validate::validate(model, &candidate, opts).context("guard validation")?;
    Ok(v.passed)
}

fn zero_all(model: &Model, ix: &Index, plan: &Plan, criterion: Criterion) -> Result<Pruned> {
    let mut bytes = vec![];
    let mut counts = vec![];
    for p in &plan.weights {
        let (b, c) = zero::zero_to_bytes(model, ix, p, criterion)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The model fails while any of the culprits is pruned.
    fn run_with(n: usize, culprits: &[usize]) -> Search {
        let mut passes = |set: &[usize]| Ok(!set.iter().any(|u| culprits.contains(u)));
        search(n, &mut passes, &|u| format!("unit {u}")).unwrap()
    }

    #[test]
    fn bisection_finds_every_culprit_and_keeps_the_rest_pruned() {
        let s = run_with(8, &[5, 2]);
        assert_eq!(s.restored, [2, 5]);
        assert_eq!(s.active, [0, 1, 3, 4, 6, 7]);
        assert!(s.passed);
        // 1 + 2 × (3 bisection steps + 1 re-validation) at most.
        assert!(s.validations <= 9, "{}", s.validations);
        let s = run_with(8, &[]);
        assert_eq!((s.restored.len(), s.validations, s.passed), (0, 1, true));
        let mut never = |_: &[usize]| Ok(false);
        let s = search(3, &mut never, &|u| u.to_string()).unwrap();
        assert_eq!((s.restored.len(), s.active.len(), s.passed), (3, 0, false));
    }
}
