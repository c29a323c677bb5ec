//! Exact histograms of 16-bit float scores. The magnitude of an f16 or bf16 value is one of
//! 32,768 bit patterns, and finite patterns sort like their values. One counting pass over the
//! raw bits — nothing decoded — therefore gives everything the rule needs: the mass
//! (`Σ count·|v|`, `Σ count·v²`), the exact top-ν [`Cut`], tie counts, and for a global cut
//! the radix histograms of the scores' f32 bits ([`Histogram`]), so no second pass is needed.

use super::radix::Histogram;
use super::{Cut, Mass};

/// Distinct magnitudes (the sign bit dropped).
const PATTERNS: usize = 1 << 15;

/// The 16-bit float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    /// The value of magnitude pattern `bits` (sign bit clear).
    pub fn value(self, bits: u16) -> f32 {
        match self {
            Half::F16 => half::f16::from_bits(bits).to_f32(),
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
        }
    }

    /// The first magnitude pattern that is not finite (infinity; NaNs lie above it).
    fn first_non_finite(self) -> u16 {
        match self {
            Half::F16 => 0x7c00,
            Half::Bf16 => 0x7f80,
        }
    }

    /// The largest finite pattern whose value is at most `v` (`None` if every pattern is above
    /// `v`). Finite patterns sort like their values, so this is a binary search.
    pub fn pattern_at_most(self, v: f32) -> Option<u16> {
        let (mut lo, mut hi) = (0u32, self.first_non_finite() as u32);
        // Invariant: patterns below `lo` are ≤ v, patterns from `hi` on are > v (or not finite).
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.value(mid as u16) <= v {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|p| p as u16)
    }
}

/// Counts of each magnitude pattern of a 16-bit score vector, the patterns that occur only,
/// from the largest down (at most 32,768 pairs, whatever the vector's length).
#[derive(Clone)]
pub struct Hist16 {
    kind: Half,
    desc: Vec<(u16, u64)>,
}

impl Hist16 {
    /// Counts the little-endian 16-bit elements of `raw` in one pass.
    pub fn of(kind: Half, raw: &[u8]) -> Self {
        let mut counts = vec![0u64; PATTERNS];
        for c in raw.chunks_exact(2) {
            counts[(u16::from_le_bytes([c[0], c[1]]) & 0x7fff) as usize] += 1;
        }
        let desc = (0..PATTERNS).rev().filter(|&b| counts[b] > 0).map(|b| (b as u16, counts[b])).collect();
        Hist16 { kind, desc }
    }

    /// Whether some counted value is infinite or NaN.
    pub fn has_non_finite(&self) -> bool {
        self.desc.first().is_some_and(|&(b, _)| b >= self.kind.first_non_finite())
    }

    pub fn len(&self) -> u64 {
        self.desc.iter().map(|&(_, c)| c).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.desc.is_empty()
    }

    fn descending(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.desc.iter().copied()
    }

    /// `Σ|s|` and `Σs²` (finite counts only).
    pub fn mass(&self) -> Mass {
        let mut m = Mass::default();
        for (b, c) in self.descending().filter(|&(b, _)| b < self.kind.first_non_finite()) {
            let v = self.kind.value(b) as f64;
            m.l1.add(c as f64 * v);
            m.l2sq.add(c as f64 * v * v);
            m.n += c as usize;
        }
        m
    }

    /// The cut keeping exactly `keep` entries, as [`Cut::find`] finds it.
    pub fn cut(&self, keep: u64) -> Cut {
        if keep >= self.len() {
            return Cut::ALL;
        }
        if keep == 0 {
            return Cut { value: f32::INFINITY, ties: 0 };
        }
        let mut above = 0u64;
        for (b, c) in self.descending() {
            if above + c >= keep {
                return Cut { value: self.kind.value(b), ties: (keep - above) as usize };
            }
            above += c;
        }
        Cut::ALL
    }

    /// How many entries equal `value`.
    pub fn tie_count(&self, value: f32) -> u64 {
        self.descending().find(|&(b, _)| self.kind.value(b) == value).map_or(0, |(_, c)| c)
    }

    /// Adds every entry to a pass-1 radix histogram (high 16 bits of the f32 value).
    pub fn add_to_high(&self, h: &mut Histogram) {
        for (b, c) in self.descending() {
            h.add_high_count(self.kind.value(b), c);
        }
    }

    /// Adds the entries in high bin `high` to a pass-2 radix histogram (low 16 bits).
    pub fn add_to_low(&self, h: &mut Histogram, high: u32) {
        for (b, c) in self.descending() {
            h.add_low_count(self.kind.value(b), high, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emp::radix;
    use crate::rng::Rng;

    /// Random 16-bit values with heavy ties, zeros of both signs, and a wide range.
    fn sample(kind: Half, rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<f32>) {
        let mut raw = vec![];
        let mut vals = vec![];
        for _ in 0..n {
            let v = match (rng.uniform() * 4.0) as u32 {
                0 => [0.0f32, -0.0, 0.5, -0.5][(rng.uniform() * 4.0) as usize % 4],
                1 => rng.normal() as f32 * 1e-3,
                _ => rng.normal() as f32 * 3.0,
            };
            let bits = match kind {
                Half::F16 => half::f16::from_f32(v).to_bits(),
                Half::Bf16 => half::bf16::from_f32(v).to_bits(),
            };
            raw.extend(bits.to_le_bytes());
            vals.push(kind.value(bits & 0x7fff) * if bits & 0x8000 != 0 { -1.0 } else { 1.0 });
        }
        (raw, vals)
    }

    #[test]
    fn cut_mass_and_ties_equal_the_decoded_path() {
        let mut rng = Rng::new(9);
        for kind in [Half::F16, Half::Bf16] {
            let (raw, vals) = sample(kind, &mut rng, 5000);
            let h = Hist16::of(kind, &raw);
            assert!(!h.has_non_finite());
            let want = Mass::of(&vals).unwrap();
            let got = h.mass();
            assert_eq!(got.n, want.n);
            assert!((got.l1.value() - want.l1.value()).abs() <= 1e-12 * want.l1.value());
            assert!((got.l2sq.value() - want.l2sq.value()).abs() <= 1e-12 * want.l2sq.value());
            for keep in [0usize, 1, 2, 100, 1250, 2500, 4999, 5000, 6000] {
                let cut = h.cut(keep as u64);
                assert_eq!(cut, Cut::find(&vals, keep), "{kind:?} keep={keep}");
                let ties = vals.iter().filter(|v| v.abs() == cut.value).count() as u64;
                assert_eq!(h.tie_count(cut.value), ties, "{kind:?} keep={keep}");
            }
        }
    }

    #[test]
    fn radix_histograms_equal_the_decoded_ones() {
        let mut rng = Rng::new(4);
        let (raw, vals) = sample(Half::F16, &mut rng, 3000);
        let h = Hist16::of(Half::F16, &raw);
        let (mut from_h, mut direct) = (radix::Histogram::default(), radix::Histogram::default());
        h.add_to_high(&mut from_h);
        direct.add_high(&vals);
        let low_of = |hb: u32| {
            let mut l = radix::Histogram::default();
            h.add_to_low(&mut l, hb);
            l
        };
        for keep in [1u64, 10, 1500, 2999] {
            let (a, _) = radix::cut_from(&from_h, low_of, keep);
            assert_eq!(a, Cut::find(&vals, keep as usize), "keep={keep}");
        }
    }

    #[test]
    fn non_finite_patterns_are_seen_and_patterns_bound_values() {
        for (kind, inf) in [(Half::F16, 0x7c00u16), (Half::Bf16, 0x7f80)] {
            assert!(!Hist16::of(kind, &[0x00, 0x3c]).has_non_finite());
            let [lo, hi] = (inf | 0x8000).to_le_bytes();
            assert!(Hist16::of(kind, &[0x00, 0x3c, lo, hi]).has_non_finite(), "{kind:?}");
            assert!(Hist16::of(kind, &[lo + 1, hi]).has_non_finite(), "{kind:?} NaN");
            assert_eq!(kind.pattern_at_most(-1.0), None);
            assert_eq!(kind.pattern_at_most(0.0), Some(0));
            assert_eq!(kind.pattern_at_most(f32::MAX), Some(inf - 1));
            let one = kind.pattern_at_most(1.0).unwrap();
            assert_eq!(kind.value(one), 1.0);
            assert!(kind.value(kind.pattern_at_most(1.0001).unwrap()) <= 1.0001);
            assert!(kind.value(kind.pattern_at_most(1.0001).unwrap() + 1) > 1.0001);
        }
    }
}
