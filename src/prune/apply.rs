//! Applying a weight's cut(s) to its scores in flat order: which entries survive, and the kept
//! score mass per EMP group (for `s_eff`). Output formats (dense zeros, sparse) build on this.

use crate::emp::Sum;

use super::rows::Rows;
use super::{Planned, WeightCut};

/// Calls `on(i, kept)` for every entry of the weight, in flat order, and returns the kept L1
/// score mass per group index.
pub fn for_each_entry(p: &Planned, scores: &[f32], mut on: impl FnMut(usize, bool)) -> Vec<(usize, Sum)> {
    match &p.cut {
        WeightCut::All { cut, group } => {
            let kept = cut.apply(scores, &mut 0, &mut on);
            vec![(*group, kept)]
        }
        WeightCut::Rows { cuts, first_group } => {
            let ids = Rows::new(&p.weight.shape, &p.weight.unit_axes).ids();
            let mut ties = vec![0usize; cuts.len()];
            let mut kept = vec![Sum::default(); cuts.len()];
            for (i, (&s, &r)) in scores.iter().zip(&ids).enumerate() {
                let r = r as usize;
                let k = cuts[r].keeps(s, &mut ties[r]);
                if k {
                    kept[r].add(s.abs() as f64);
                }
                on(i, k);
            }
            kept.into_iter().enumerate().map(|(r, k)| (first_group + r, k)).collect()
        }
    }
}

/// The keep-mask of a weight (for callers that want it materialised, e.g. tests and CSR).
pub fn mask(p: &Planned, scores: &[f32]) -> Vec<bool> {
    let mut m = vec![false; scores.len()];
    for_each_entry(p, scores, |i, k| m[i] = k);
    m
}
