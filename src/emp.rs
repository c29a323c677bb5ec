//! The EMP rule (Wang et al., "Effective Model Pruning", arXiv 2509.25606), pure math:
//!
//! for scores `s_1..s_N`, `N_eff = (Σ|s|)² / Σs²` (the inverse Simpson index of `|s|/Σ|s|`);
//! keep the `ν = clip(⌊β·N_eff⌋, 1, N)` entries with the largest `|s|`, drop the rest.
//!
//! * sums are accumulated in f64 with Neumaier compensation;
//! * the floor tolerates a relative error of [`FLOOR_REL_TOL`], so `k` equal non-zero scores
//!   plus zeros keep exactly `k` even when `1/Σw²` lands a few ulps below `k`;
//! * an all-zero vector is a no-op (everything kept);
//! * exactly `ν` entries are kept: the threshold is found with an O(N) selection, and entries
//!   equal to it are kept in ascending flat-index order until `ν` is reached ([`Cut`]).
//!
//! No ONNX here: callers pass score slices and apply the returned [`Cut`].

use anyhow::{bail, Result};

/// Relative tolerance of the floor in `⌊β·N_eff⌋`. Compensated sums make `N_eff` accurate to
/// a few ulps (~1e-15 relative); 1e-12 leaves a wide margin and changes no honest result.
pub const FLOOR_REL_TOL: f64 = 1e-12;

/// Compensated (Neumaier) f64 accumulator.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sum {
    sum: f64,
    comp: f64,
}

impl Sum {
    #[inline]
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn merge(mut self, other: Sum) -> Sum {
        self.add(other.sum);
        self.add(other.comp);
        self
    }

    pub fn value(&self) -> f64 {
        self.sum + self.comp
    }
}

/// The L1 and squared-L2 mass of a score vector: all EMP needs to size it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mass {
    pub n: usize,
    pub l1: Sum,
    pub l2sq: Sum,
}

impl Mass {
    /// Accumulates `scores`, failing on a non-finite entry.
    pub fn of(scores: &[f32]) -> Result<Mass> {
        let mut m = Mass::default();
        m.extend(scores)?;
        Ok(m)
    }

    /// Adds `scores` chunk by chunk ([`chunked::CHUNK`] entries in plain f64, chunk sums
    /// compensated).
    pub fn extend(&mut self, scores: &[f32]) -> Result<()> {
        for (c, chunk) in scores.chunks(chunked::CHUNK).enumerate() {
            let (l1, l2, bad) = chunked::chunk_mass(chunk);
            if let Some(j) = bad {
                bail!("non-finite score {} at index {}", chunk[j], c * chunked::CHUNK + j);
            }
            self.l1.add(l1);
            self.l2sq.add(l2);
        }
        self.n += scores.len();
        Ok(())
    }

    pub fn merge(self, o: Mass) -> Mass {
        Mass { n: self.n + o.n, l1: self.l1.merge(o.l1), l2sq: self.l2sq.merge(o.l2sq) }
    }

    /// `N_eff = ‖s‖₁² / ‖s‖₂²`, or `None` for an all-zero (or empty) vector.
    pub fn n_eff(&self) -> Option<f64> {
        let (l1, l2) = (self.l1.value(), self.l2sq.value());
        (l2 > 0.0).then(|| (l1 * l1 / l2).clamp(1.0, self.n as f64))
    }
}

/// What EMP decided for one score vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub n: usize,
    /// `None` when every score is zero (the vector is left alone).
    pub n_eff: Option<f64>,
    /// ν, the number of entries kept.
    pub keep: usize,
}

impl Decision {
    pub fn new(mass: &Mass, beta: f64) -> Decision {
        let n_eff = mass.n_eff();
        Decision { n: mass.n, n_eff, keep: keep_count(mass.n, n_eff, beta) }
    }

    /// The Theorem 4.2 lower bound on the kept mass share, where it applies.
    pub fn bound(&self, beta: f64) -> Option<f64> {
        mass_bound(self.n, self.keep, beta)
    }
}

/// `ν = clip(⌊β·N_eff⌋, 1, N)`; all `N` when `n_eff` is `None` (all-zero vector).
pub fn keep_count(n: usize, n_eff: Option<f64>, beta: f64) -> usize {
    let Some(ne) = n_eff else { return n };
    if n == 0 {
        return 0;
    }
    let x = beta * ne;
    let floored = (x + FLOOR_REL_TOL * x.max(1.0)).floor();
    (floored.max(1.0) as usize).min(n)
}

/// Theorem 4.2: `s_eff ≥ ν/N + ((N−ν)/N)·sqrt((N−ν−1)/((ν+1)(N−1)))`, valid for β ≥ 1 and
/// ν ≥ 2; `None` where it is not guaranteed. Keeping everything trivially gives 1.
pub fn mass_bound(n: usize, keep: usize, beta: f64) -> Option<f64> {
    if keep >= n && n > 0 {
        return Some(1.0);
    }
    if beta < 1.0 || keep < 2 || n < 2 {
        return None;
    }
    let (n, v) = (n as f64, keep as f64);
    Some(v / n + ((n - v) / n) * ((n - v - 1.0) / ((v + 1.0) * (n - 1.0))).sqrt())
}

/// Vectors at least this long (and shorter than [`radix::MIN_LEN`]) are selected by a small
/// histogram ([`radix::select_short`]); shorter ones by copying and partitioning.
const SHORT_SELECT: usize = 256;

/// Which entries survive: every `|s| > value`, plus the first `ties` entries (in flat order)
/// with `|s| == value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    pub value: f32,
    pub ties: usize,
}

impl Cut {
    /// Keeps everything (all-zero vectors, or ν = N).
    pub const ALL: Cut = Cut { value: f32::NEG_INFINITY, ties: 0 };

    /// Finds the cut keeping exactly `keep` of `scores` (O(N): one copy + selection).
    pub fn find(scores: &[f32], keep: usize) -> Cut {
        Self::find_in_parts(&[scores], keep)
    }

    /// The same over the concatenation of several slices (global scope).
    pub fn find_in_parts(parts: &[&[f32]], keep: usize) -> Cut {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if keep >= n {
            return Cut::ALL;
        }
        if keep > 0 && n >= radix::MIN_LEN {
            return radix::select(parts, keep);
        }
        if keep > 0 && n >= SHORT_SELECT {
            return radix::select_short(parts, keep);
        }
        let mut scratch: Vec<f32> = Vec::with_capacity(n);
        for p in parts {
            scratch.extend(p.iter().map(|s| s.abs()));
        }
        Self::from_scratch(&mut scratch, keep)
    }

    /// Selects in place on absolute scores (`scratch` is reordered).
    pub fn from_scratch(scratch: &mut [f32], keep: usize) -> Cut {
        if keep >= scratch.len() {
            return Cut::ALL;
        }
        if keep == 0 {
            return Cut { value: f32::INFINITY, ties: 0 };
        }
        let (above, nth, _) = scratch.select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a));
        let value = *nth;
        let greater = above.iter().filter(|&&s| s > value).count();
        Cut { value, ties: keep - greater }
    }

    /// Whether an entry with score `s` survives; `ties_used` counts the tied entries kept so
    /// far in this vector (flat order).
    #[inline]
    pub fn keeps(&self, s: f32, ties_used: &mut usize) -> bool {
        let a = s.abs();
        if a > self.value {
            return true;
        }
        if a == self.value && *ties_used < self.ties {
            *ties_used += 1;
            return true;
        }
        false
    }

    /// Applies the cut to `scores` in flat order. `ties_used` carries the tie count across
    /// slices of one vector. Calls `on(i, kept)` for each entry and returns the kept L1 mass.
    #[inline]
    pub fn apply(&self, scores: &[f32], ties_used: &mut usize, mut on: impl FnMut(usize, bool)) -> Sum {
        let mut kept = Sum::default();
        for (i, &s) in scores.iter().enumerate() {
            let keep = self.keeps(s, ties_used);
            if keep {
                kept.add(s.abs() as f64);
            }
            on(i, keep);
        }
        kept
    }

    /// How many entries of `scores` equal the cut value (for splitting tie budgets).
    pub fn tie_count(&self, scores: &[f32]) -> usize {
        scores.iter().filter(|s| s.abs() == self.value).count()
    }
}

/// One-call convenience: the decision, the cut and the kept mask for a single vector.
pub fn prune_vector(scores: &[f32], beta: f64) -> Result<(Decision, Cut, Vec<bool>, f64)> {
    let mass = Mass::of(scores)?;
    let d = Decision::new(&mass, beta);
    let cut = if d.n_eff.is_none() { Cut::ALL } else { Cut::find(scores, d.keep) };
    let mut mask = vec![false; scores.len()];
    let kept = cut.apply(scores, &mut 0, |i, k| mask[i] = k);
    let total = mass.l1.value();
    let s_eff = if total > 0.0 { kept.value() / total } else { 1.0 };
    Ok((d, cut, mask, s_eff))
}

pub mod chunked;
pub mod half;
pub mod radix;

#[cfg(test)]
mod tests;
