//! Applying a weight's cut(s) to its scores in flat order: which entries survive, and the kept
//! score mass per EMP group (for `s_eff`). Output formats (dense zeros, sparse) build on this.
//!
//! [`Marker`] takes the scores chunk by chunk (consecutive, in flat order) and fills a keep-mask
//! per chunk: one branch-light loop per chunk for a whole-tensor cut or contiguous rows, a
//! per-entry loop with a running row counter for rows along the last axis, and a row-id table
//! only for other layouts. Kept mass is summed in plain f64 per chunk (per row: per band of a
//! few dozen entries), then merged with compensation; the result does not depend on chunking.

use crate::emp::chunked::CHUNK;
use crate::emp::{Cut, Sum};

use super::rows::{Kind, Rows};
use super::{Planned, WeightCut};

/// Plain f64 partial sums are folded into the compensated sums after this many entries per row.
const FOLD: usize = 64;

/// Entries per block of a run of rows, for finding the blocks that hold a tie.
const TIE_BLOCK: usize = 16;

/// How flat indices map to rows.
enum Layout {
    /// One cut for every entry.
    Whole,
    /// Row `r` is the contiguous run `r*len..(r+1)*len`.
    Leading { len: usize },
    /// Row of flat index `i` is `i % count`.
    Trailing,
    /// Any other layout: the row id of every entry.
    General(Vec<u32>),
}

/// Marks the surviving entries of one weight, chunk after chunk.
pub struct Marker<'a> {
    cuts: &'a [Cut],
    /// The cut value of every row (rows along the last axis only).
    values: Vec<f32>,
    first_group: usize,
    layout: Layout,
    ties: Vec<usize>,
    kept: Vec<Sum>,
    /// Plain partial sums per row and entries added since the last fold (row layouts only).
    partial: Vec<f64>,
    since_fold: usize,
}

impl<'a> Marker<'a> {
    pub fn new(p: &'a Planned) -> Self {
        let (cuts, first_group, layout) = match &p.cut {
            WeightCut::All { cut, group } => (std::slice::from_ref(cut), *group, Layout::Whole),
            WeightCut::Rows { cuts, first_group } => (cuts.as_slice(), *first_group, row_layout(p)),
        };
        let rows = cuts.len();
        let partial = if matches!(layout, Layout::Trailing | Layout::General(_)) { vec![0.0; rows] } else { vec![] };
        let values = if matches!(layout, Layout::Trailing) { cuts.iter().map(|c| c.value).collect() } else { vec![] };
        Self {
            cuts,
            values,
            first_group,
            layout,
            ties: vec![0; rows],
            kept: vec![Sum::default(); rows],
            partial,
            since_fold: 0,
        }
    }

    /// Fills `keep` for the chunk `scores` starting at flat index `start` (chunks must come in
    /// flat order without gaps).
    pub fn mark(&mut self, start: usize, scores: &[f32], keep: &mut [bool]) {
        if scores.is_empty() {
            return;
        }
        let (cuts, ties, partial) = (self.cuts, &mut self.ties, &mut self.partial);
        match &self.layout {
            Layout::Whole => self.kept[0].add(cuts[0].mark(scores, &mut ties[0], keep)),
            &Layout::Leading { len } => {
                let mut at = 0;
                while at < scores.len() {
                    let r = (start + at) / len;
                    let end = ((r + 1) * len - start).min(scores.len());
                    let m = cuts[r].mark(&scores[at..end], &mut ties[r], &mut keep[at..end]);
                    self.kept[r].add(m);
                    at = end;
                }
            }
            Layout::Trailing => {
                // Runs of consecutive rows: entry j of a run meets row r0 + j.
                let (mut at, mut r0) = (0, start % cuts.len());
                while at < scores.len() {
                    let len = (cuts.len() - r0).min(scores.len() - at);
                    let rows = r0..r0 + len;
                    let (s, k) = (&scores[at..at + len], &mut keep[at..at + len]);
                    mark_run(
                        &self.values[rows.clone()],
                        &cuts[rows.clone()],
                        s,
                        k,
                        &mut ties[rows.clone()],
                        &mut partial[rows],
                    );
                    at += len;
                    r0 = 0;
                }
            }
            Layout::General(ids) => {
                let ids = &ids[start..start + scores.len()];
                for ((&s, k), &r) in scores.iter().zip(keep.iter_mut()).zip(ids) {
                    let r = r as usize;
                    *k = entry(&cuts[r], &mut ties[r], &mut partial[r], s);
                }
            }
        }
        if !self.partial.is_empty() {
            self.since_fold += scores.len();
            if self.since_fold >= FOLD * self.cuts.len() {
                self.fold();
            }
        }
    }

    fn fold(&mut self) {
        for (k, p) in self.kept.iter_mut().zip(self.partial.iter_mut()) {
            k.add(std::mem::take(p));
        }
        self.since_fold = 0;
    }

    /// The kept L1 score mass per group index.
    pub fn finish(mut self) -> Vec<(usize, Sum)> {
        if !self.partial.is_empty() {
            self.fold();
        }
        self.kept.into_iter().enumerate().map(|(r, k)| (self.first_group + r, k)).collect()
    }
}

crate::simd::avx2_dispatch! {
    /// Marks a run of entries that meet consecutive rows (`values`, `cuts`, `ties` and
    /// `partial` are those rows): a vectorisable compare-and-sum, then a scalar pass only if
    /// some entry is tied at its row's cut value.
    fn mark_run(
        values: &[f32],
        cuts: &[Cut],
        s: &[f32],
        k: &mut [bool],
        ties: &mut [usize],
        partial: &mut [f64],
    ) = mark_run_body;
}

#[inline(always)]
fn mark_run_body(values: &[f32], cuts: &[Cut], s: &[f32], k: &mut [bool], ties: &mut [usize], partial: &mut [f64]) {
    if s.len() > CHUNK {
        for at in (0..s.len()).step_by(CHUNK) {
            let r = at..(at + CHUNK).min(s.len());
            let (v, c, x) = (&values[r.clone()], &cuts[r.clone()], &s[r.clone()]);
            mark_run(v, c, x, &mut k[r.clone()], &mut ties[r.clone()], &mut partial[r]);
        }
        return;
    }
    // Blocks of TIE_BLOCK entries, each a vectorisable compare-and-sum; the blocks holding an
    // entry tied at its row's cut are listed (no branch) and only they get the scalar pass —
    // with f16 weights nearly every run has a tie somewhere, but few blocks do.
    let mut tied = [0u16; CHUNK / TIE_BLOCK + 1];
    let mut listed = 0;
    let blocks = s
        .chunks(TIE_BLOCK)
        .zip(values.chunks(TIE_BLOCK))
        .zip(k.chunks_mut(TIE_BLOCK))
        .zip(partial.chunks_mut(TIE_BLOCK));
    for (b, (((s, values), k), partial)) in blocks.enumerate() {
        let mut equal = 0usize;
        for (((&x, &v), k), p) in s.iter().zip(values).zip(k.iter_mut()).zip(partial.iter_mut()) {
            let a = x.abs();
            *k = a > v;
            equal += (a == v) as usize;
            *p += if a > v { a as f64 } else { 0.0 };
        }
        tied[listed.min(tied.len() - 1)] = b as u16;
        listed += (equal > 0) as usize;
    }
    for &b in &tied[..listed] {
        let range = b as usize * TIE_BLOCK..((b as usize + 1) * TIE_BLOCK).min(s.len());
        for j in range {
            if s[j].abs() == values[j] && ties[j] < cuts[j].ties {
                ties[j] += 1;
                k[j] = true;
                partial[j] += values[j] as f64;
            }
        }
    }
}

/// One entry of a row layout: whether it survives, its kept mass added to the row's partial sum.
#[inline]
fn entry(cut: &Cut, ties: &mut usize, partial: &mut f64, s: f32) -> bool {
    let k = cut.keeps(s, ties);
    *partial += if k { s.abs() as f64 } else { 0.0 };
    k
}

fn row_layout(p: &Planned) -> Layout {
    let rows = Rows::new(&p.weight.shape, &p.weight.unit_axes);
    match rows.kind() {
        Kind::Leading => Layout::Leading { len: rows.len.max(1) },
        Kind::Trailing => Layout::Trailing,
        Kind::General => Layout::General(rows.ids()),
    }
}

/// Calls `on(i, kept)` for every entry of the weight, in flat order, and returns the kept L1
/// score mass per group index.
pub fn for_each_entry(p: &Planned, scores: &[f32], mut on: impl FnMut(usize, bool)) -> Vec<(usize, Sum)> {
    let mut marker = Marker::new(p);
    let mut keep = vec![false; crate::emp::chunked::CHUNK];
    for (c, s) in scores.chunks(crate::emp::chunked::CHUNK).enumerate() {
        let start = c * crate::emp::chunked::CHUNK;
        marker.mark(start, s, &mut keep[..s.len()]);
        keep[..s.len()].iter().enumerate().for_each(|(j, &k)| on(start + j, k));
    }
    marker.finish()
}

/// The keep-mask of a weight (for callers that want it materialised, e.g. tests and CSR).
pub fn mask(p: &Planned, scores: &[f32]) -> Vec<bool> {
    let mut m = vec![false; scores.len()];
    for_each_entry(p, scores, |i, k| m[i] = k);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::weights::Weight;

    fn planned(shape: &[usize], unit: &[usize], cuts: Vec<Cut>) -> Planned {
        let weight = Weight::fixture(shape, unit);
        Planned { weight, cut: WeightCut::Rows { cuts, first_group: 0 } }
    }

    /// The reference: per entry, its row's cut through [`Cut::keeps`].
    fn simple(shape: &[usize], unit: &[usize], cuts: &[Cut], s: &[f32]) -> Vec<bool> {
        let ids = Rows::new(shape, unit).ids();
        let mut ties = vec![0; cuts.len()];
        s.iter().zip(&ids).map(|(&x, &r)| cuts[r as usize].keeps(x, &mut ties[r as usize])).collect()
    }

    #[test]
    fn row_layouts_match_the_per_entry_rule_with_heavy_ties() {
        let mut rng = Rng::new(21);
        for (shape, unit) in [
            (vec![37, 300], vec![0]),
            (vec![300, 37], vec![1]),
            (vec![5, 300, 1], vec![1]),
            (vec![3, 40, 50], vec![0, 2]),
            (vec![40, 5000], vec![1]),
        ] {
            let rows = Rows::new(&shape, &unit);
            let n = rows.count * rows.len;
            // Ties everywhere, or (wide runs) rare ties, so that most blocks of a run hold none.
            let rare = rows.count > 1000;
            let s: Vec<f32> = (0..n)
                .map(|_| match rare {
                    true if rng.uniform() < 0.9 => rng.normal() as f32,
                    _ => [0.0f32, 1.0, -1.0, 2.0][(rng.uniform() * 4.0) as usize % 4],
                })
                .collect();
            let by_row = rows.gather(&s);
            let cuts: Vec<Cut> =
                by_row.chunks(rows.len).enumerate().map(|(r, row)| Cut::find(row, 1 + r % rows.len)).collect();
            let want = simple(&shape, &unit, &cuts, &s);
            let p = planned(&shape, &unit, cuts);
            assert_eq!(mask(&p, &s), want, "{shape:?} {unit:?}");
        }
    }
}
