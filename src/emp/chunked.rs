//! Chunked, branch-light kernels of the rule for long vectors: the mass of a chunk and the
//! keep-mask of a chunk under a [`Cut`]. Vectors are walked in fixed chunks of [`CHUNK`]
//! entries (counted from the start of the vector, never from the thread count), each chunk
//! summed in plain f64 with four lanes, and chunk sums merged with compensation — accurate to
//! a few ulps and deterministic, without a Neumaier step per entry.

use super::{Cut, Sum};

/// Entries per chunk (a 16 KiB f32 block: stays in L1 while it is marked and rewritten).
pub const CHUNK: usize = 4096;

/// Independent partial sums per chunk (one AVX2 register pair of f64).
const LANES: usize = 8;

crate::simd::avx2_dispatch! {
    /// `(Σ|s|, Σs², first non-finite index)` of one chunk, in plain f64 with four lanes.
    pub fn chunk_mass(scores: &[f32]) -> (f64, f64, Option<usize>) = chunk_mass_body;
}

#[inline(always)]
fn chunk_mass_body(scores: &[f32]) -> (f64, f64, Option<usize>) {
    let (mut l1, mut l2) = ([0f64; 4], [0f64; 4]);
    let mut quads = scores.chunks_exact(4);
    for q in &mut quads {
        for j in 0..4 {
            let a = q[j].abs() as f64;
            l1[j] += a;
            l2[j] += a * a;
        }
    }
    for (j, &s) in quads.remainder().iter().enumerate() {
        let a = s.abs() as f64;
        l1[j] += a;
        l2[j] += a * a;
    }
    let (l1, l2) = ((l1[0] + l1[1]) + (l1[2] + l1[3]), (l2[0] + l2[1]) + (l2[2] + l2[3]));
    // A non-finite entry makes the sums non-finite (inf, or NaN): only then look for it.
    let bad = if l1.is_finite() && l2.is_finite() { None } else { scores.iter().position(|s| !s.is_finite()) };
    (l1, l2, bad)
}

impl Cut {
    /// Marks in `keep` (same length as `scores`) the entries of one chunk that survive, in flat
    /// order, carrying the tie count in `ties_used` like [`Cut::apply`]; returns the kept L1
    /// mass of the chunk (plain f64). Same result as [`Cut::apply`] on the same entries.
    pub fn mark(&self, scores: &[f32], ties_used: &mut usize, keep: &mut [bool]) -> f64 {
        mark_chunk(self, scores, ties_used, keep)
    }

    /// [`Cut::mark`] over a whole vector in chunks: the keep-mask and the compensated kept mass.
    pub fn mark_all(&self, scores: &[f32], ties_used: &mut usize, keep: &mut [bool]) -> Sum {
        let mut kept = Sum::default();
        for (s, k) in scores.chunks(CHUNK).zip(keep.chunks_mut(CHUNK)) {
            kept.add(self.mark(s, ties_used, k));
        }
        kept
    }
}

crate::simd::avx2_dispatch! {
    fn mark_chunk(cut: &Cut, scores: &[f32], ties_used: &mut usize, keep: &mut [bool]) -> f64 = mark_chunk_body;
}

/// The body of [`Cut::mark`].
#[inline(always)]
fn mark_chunk_body(cut: &Cut, scores: &[f32], ties_used: &mut usize, keep: &mut [bool]) -> f64 {
    debug_assert_eq!(scores.len(), keep.len());
    let v = cut.value;
    let mut lanes = [0f64; LANES];
    let mut equal = 0usize;
    let mut blocks = scores.chunks_exact(LANES).zip(keep.chunks_exact_mut(LANES));
    for (s, k) in &mut blocks {
        // Fixed-width lanes: no cross-lane dependency, so this vectorises.
        for j in 0..LANES {
            let a = s[j].abs();
            k[j] = a > v;
            equal += (a == v) as usize;
            lanes[j] += if a > v { a as f64 } else { 0.0 };
        }
    }
    let tail = scores.len() / LANES * LANES;
    for (j, (&s, k)) in scores[tail..].iter().zip(keep[tail..].iter_mut()).enumerate() {
        let a = s.abs();
        *k = a > v;
        equal += (a == v) as usize;
        lanes[j] += if a > v { a as f64 } else { 0.0 };
    }
    let mut kept = lanes.iter().sum::<f64>();
    if equal > 0 && *ties_used < cut.ties {
        // Rare: entries tied at the cut value, kept in flat order while the budget lasts.
        for (&s, k) in scores.iter().zip(keep.iter_mut()) {
            if *ties_used >= cut.ties {
                break;
            }
            if s.abs() == v {
                *k = true;
                *ties_used += 1;
                kept += v as f64;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Scores drawn from a handful of values, so ties at the cut are everywhere.
    fn tied(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| [0.0f32, 0.5, -0.5, 1.0, -1.0, 2.0][(rng.uniform() * 6.0) as usize % 6]).collect()
    }

    #[test]
    fn mark_equals_apply_with_heavy_ties_for_any_chunking() {
        let mut rng = Rng::new(11);
        for n in [1usize, 3, 100, 4097, 20_000] {
            let s = tied(&mut rng, n);
            for keep in [1, n / 3, n / 2, n.saturating_sub(1).max(1)] {
                let cut = Cut::find(&s, keep);
                let mut want = vec![];
                let want_mass = cut.apply(&s, &mut 0, |_, k| want.push(k)).value();
                for chunk in [1usize, 7, 64, 4096, 100_000] {
                    let (mut got, mut used, mut mass) = (vec![false; n], 0, Sum::default());
                    for (c, k) in s.chunks(chunk).zip(got.chunks_mut(chunk)) {
                        mass.add(cut.mark(c, &mut used, k));
                    }
                    assert_eq!(got, want, "n={n} keep={keep} chunk={chunk}");
                    assert_eq!(got.iter().filter(|&&k| k).count(), keep.min(n));
                    assert!((mass.value() - want_mass).abs() <= 1e-12 * want_mass.max(1.0));
                }
            }
        }
    }

    #[test]
    fn avx2_and_baseline_builds_give_the_same_bits() {
        let mut rng = Rng::new(3);
        let s: Vec<f32> = (0..CHUNK - 3).map(|i| if i % 9 == 0 { 0.5 } else { rng.normal() as f32 }).collect();
        let (a, b) = (chunk_mass(&s), chunk_mass_body(&s));
        assert_eq!((a.0.to_bits(), a.1.to_bits()), (b.0.to_bits(), b.1.to_bits()));
        let cut = Cut { value: 0.5, ties: 40 };
        let (mut k1, mut k2) = (vec![false; s.len()], vec![false; s.len()]);
        let (mut t1, mut t2) = (0, 0);
        let m1 = mark_chunk(&cut, &s, &mut t1, &mut k1);
        let m2 = mark_chunk_body(&cut, &s, &mut t2, &mut k2);
        assert_eq!((m1.to_bits(), t1, k1), (m2.to_bits(), t2, k2));
    }

    #[test]
    fn chunk_mass_finds_non_finite_entries() {
        assert_eq!(chunk_mass(&[1.0, -2.0, 3.0]), (6.0, 14.0, None));
        assert_eq!(chunk_mass(&[1.0, 2.0, 3.0, 4.0, f32::NAN]).2, Some(4));
        assert_eq!(chunk_mass(&[f32::INFINITY]).2, Some(0));
    }
}
