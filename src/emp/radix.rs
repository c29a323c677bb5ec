//! Exact top-ν threshold over score vectors too large to copy: a two-level radix selection on
//! the bits of non-negative f32 scores (whose bit patterns sort like their values).
//!
//! Pass 1 histograms the high 16 bits of every score, which fixes the bin holding the ν-th
//! largest; pass 2 histograms the low 16 bits of the scores in that bin, which fixes the value
//! exactly. Memory is two 65,536-entry tables whatever N is; every pass streams.

use super::Cut;

const BINS: usize = 1 << 16;

/// A histogram over the high or low 16 bits of scores.
#[derive(Clone)]
pub struct Histogram(Vec<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(vec![0; BINS])
    }
}

impl Histogram {
    /// Pass 1: counts the high 16 bits of `|s|`.
    pub fn add_high(&mut self, scores: &[f32]) {
        for s in scores {
            self.0[(s.abs().to_bits() >> 16) as usize] += 1;
        }
    }

    /// Pass 2: counts the low 16 bits of the scores whose high bits are `high`.
    pub fn add_low(&mut self, scores: &[f32], high: u32) {
        for s in scores {
            let b = s.abs().to_bits();
            if b >> 16 == high {
                self.0[(b & 0xffff) as usize] += 1;
            }
        }
    }

    /// Pass 1 for `count` entries equal to `s` at once.
    pub fn add_high_count(&mut self, s: f32, count: u64) {
        self.0[(s.abs().to_bits() >> 16) as usize] += count;
    }

    /// Pass 2 for `count` entries equal to `s` at once.
    pub fn add_low_count(&mut self, s: f32, high: u32, count: u64) {
        let b = s.abs().to_bits();
        if b >> 16 == high {
            self.0[(b & 0xffff) as usize] += count;
        }
    }

    pub fn merge(mut self, o: Histogram) -> Histogram {
        self.0.iter_mut().zip(o.0).for_each(|(a, b)| *a += b);
        self
    }

    /// Walking down from the top bin, the bin holding the `k`-th largest (1-based) and how many
    /// entries lie in higher bins.
    pub fn locate(&self, k: u64) -> (u32, u64) {
        let mut above = 0u64;
        for bin in (0..BINS).rev() {
            let c = self.0[bin];
            if above + c >= k {
                return (bin as u32, above);
            }
            above += c;
        }
        (0, above)
    }

    pub fn count(&self, bin: u32) -> u64 {
        self.0[bin as usize]
    }
}

/// The exact cut keeping `keep` entries, given the two histograms. Returns the cut and how
/// many entries equal its value (to tell whether the tie budget binds).
pub fn cut_from(high: &Histogram, low_of: impl FnOnce(u32) -> Histogram, keep: u64) -> (Cut, u64) {
    let (hb, above_hi) = high.locate(keep);
    let low = low_of(hb);
    let (lb, above_lo) = low.locate(keep - above_hi);
    let value = f32::from_bits((hb << 16) | lb);
    let greater = above_hi + above_lo;
    (Cut { value, ties: (keep - greater) as usize }, low.count(lb))
}

/// Bins of the short-vector histogram.
const SHORT_BITS: u32 = 11;
/// Bits of `|s|` dropped by the short-vector histogram: the bins keep the exponent and six
/// mantissa bits, so a bin spans 1/64 of an octave and holds few entries.
const SHORT_SHIFT: u32 = 17;

/// The exact cut keeping `keep` (`0 < keep < n`) of the concatenation of `parts`, for vectors
/// that fit in cache (a row): a histogram of `|s|` over the 2,048 bins below the largest
/// entry (each 1/64 of an octave; everything further down shares the lowest bin) finds the
/// bin holding the `keep`-th largest, and only that bin's entries are copied and partitioned
/// — instead of a copy and `select_nth_unstable` of the whole vector.
pub fn select_short(parts: &[&[f32]], keep: usize) -> Cut {
    select_short_dispatch(parts, keep)
}

crate::simd::avx2_dispatch! {
    fn select_short_dispatch(parts: &[&[f32]], keep: usize) -> Cut = select_short_body;
}

#[inline(always)]
fn select_short_body(parts: &[&[f32]], keep: usize) -> Cut {
    if parts.iter().map(|p| p.len()).sum::<usize>() >= MIN_LEN {
        return select(parts, keep); // counts could pass u16 and candidates would be many
    }
    let top = parts.iter().flat_map(|p| p.iter()).fold(0u32, |m, s| m.max(s.abs().to_bits()));
    let base = (top >> SHORT_SHIFT).saturating_sub((1 << SHORT_BITS) - 1);
    let bin_of = |s: f32| ((s.abs().to_bits() >> SHORT_SHIFT).max(base) - base) as usize;
    // Four interleaved tables: scores cluster in a few bins, and one table would make each
    // increment wait for the previous store to the same counter. Counts stay below MIN_LEN,
    // so 16 bits hold them (half the table to clear for every row).
    let mut lanes = [[0u16; 1 << SHORT_BITS]; 4];
    for p in parts {
        let mut quads = p.chunks_exact(4);
        for q in &mut quads {
            for (lane, &s) in lanes.iter_mut().zip(q) {
                lane[bin_of(s)] += 1;
            }
        }
        for &s in quads.remainder() {
            lanes[0][bin_of(s)] += 1;
        }
    }
    let count = |b: usize| lanes.iter().map(|l| l[b] as usize).sum::<usize>();
    let (mut bin, mut above, mut in_bin) = (0, 0, 0);
    for b in (0..1 << SHORT_BITS).rev() {
        let c = count(b);
        if above + c >= keep {
            (bin, in_bin) = (b, c);
            break;
        }
        above += c;
    }
    // Compaction of the bin's entries: those whose bits lie in `lo..lo + width` (the lowest
    // bin reaches down to zero). Blocks of SKIP entries are tested at once (a vectorised
    // range test) and skipped when none is in the bin — nearly all are; inside a block that
    // has one, branch-free: every entry is written, the cursor only moves past those in the
    // bin (a filter's branch mispredicts on every candidate).
    const SKIP: usize = 8;
    let lo = if bin == 0 { 0 } else { ((bin as u32) + base) << SHORT_SHIFT };
    let width = (((bin as u32) + base + 1) << SHORT_SHIFT) - lo;
    let in_range = |s: f32| s.abs().to_bits().wrapping_sub(lo) < width;
    let mut cand = vec![0f32; in_bin + 1];
    let mut len = 0;
    let mut take = |block: &[f32]| {
        for &s in block {
            cand[len.min(in_bin)] = s.abs();
            len += in_range(s) as usize;
        }
    };
    for p in parts {
        let mut blocks = p.chunks_exact(SKIP);
        for block in &mut blocks {
            if block.iter().fold(false, |any, &s| any | in_range(s)) {
                take(block);
            }
        }
        take(blocks.remainder());
    }
    cand.truncate(in_bin);
    let (_, nth, _) = cand.select_nth_unstable_by(keep - above - 1, |a, b| b.total_cmp(a));
    let value = *nth;
    let greater = above + cand.iter().filter(|&&a| a > value).count();
    Cut { value, ties: keep - greater }
}

/// Vectors at least this long are selected by histogram ([`select`]) instead of a copy and
/// `select_nth_unstable` (two streaming passes beat a copy plus partitioning there).
pub const MIN_LEN: usize = 1 << 16;
const _: () = assert!(MIN_LEN <= 1 << 16, "select_short counts in u16");

/// The exact cut keeping `keep` entries of the concatenation of `parts`, without copying them.
pub fn select(parts: &[&[f32]], keep: usize) -> Cut {
    let mut high = Histogram::default();
    parts.iter().for_each(|p| high.add_high(p));
    let low_of = |hb| {
        let mut low = Histogram::default();
        parts.iter().for_each(|p| low.add_low(p, hb));
        low
    };
    cut_from(&high, low_of, keep as u64).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn radix_cut(parts: &[Vec<f32>], keep: usize) -> Cut {
        let high = parts.iter().fold(Histogram::default(), |mut h, p| {
            h.add_high(p);
            h
        });
        let low_of = |hb| {
            parts.iter().fold(Histogram::default(), |mut h, p| {
                h.add_low(p, hb);
                h
            })
        };
        cut_from(&high, low_of, keep as u64).0
    }

    #[test]
    fn matches_the_in_memory_selection() {
        let mut rng = Rng::new(3);
        let parts: Vec<Vec<f32>> = (0..5).map(|i| (0..1000 + i * 37).map(|_| rng.normal() as f32).collect()).collect();
        let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        for keep in [1usize, 2, 17, 999, 2500, 5000] {
            assert_eq!(radix_cut(&parts, keep), Cut::find_in_parts(&refs, keep), "keep={keep}");
        }
    }

    #[test]
    fn select_matches_the_in_memory_selection() {
        let mut rng = Rng::new(5);
        let v: Vec<f32> = (0..5000).map(|i| if i % 3 == 0 { 0.25 } else { rng.normal() as f32 }).collect();
        for keep in [1usize, 10, 1666, 1667, 3000, 4999] {
            assert_eq!(select(&[&v[..2000], &v[2000..]], keep), Cut::find_in_parts(&[&v], keep), "keep={keep}");
        }
    }

    #[test]
    fn short_selection_matches_the_full_partition() {
        let mut rng = Rng::new(8);
        for n in [2usize, 3, 50, 700, 4096] {
            let v: Vec<f32> = (0..n)
                .map(|i| match i % 5 {
                    0 => 0.0,
                    1 => -0.25,
                    2 => 0.25,
                    _ => rng.normal() as f32 * 10f32.powi((i % 7) as i32 - 3),
                })
                .collect();
            for keep in [1, n / 4, n / 2, n - 1].into_iter().filter(|&k| k > 0 && k < n) {
                let mut scratch: Vec<f32> = v.iter().map(|s| s.abs()).collect();
                let want = Cut::from_scratch(&mut scratch, keep);
                assert_eq!(select_short(&[&v], keep), want, "n={n} keep={keep}");
                let (a, b) = v.split_at(n / 3);
                assert_eq!(select_short(&[a, b], keep), want, "n={n} keep={keep} in parts");
            }
        }
        // Beyond the 32 octaves the bins cover: the lowest bin holds distinct values, and
        // cuts deep in the vector fall inside it.
        let v: Vec<f32> = (0..3000).map(|i| (rng.uniform() as f32 + 0.5) * 2f32.powi(i % 90 - 70)).collect();
        for keep in [1, 100, 1000, 2000, 2900, 2999] {
            let mut scratch = v.clone();
            assert_eq!(select_short(&[&v], keep), Cut::from_scratch(&mut scratch, keep), "wide keep={keep}");
        }
    }

    #[test]
    fn handles_heavy_ties() {
        let parts = vec![vec![1.0f32; 10], vec![0.5; 5], vec![1.0; 3]];
        let c = radix_cut(&parts, 12);
        assert_eq!(c, Cut { value: 1.0, ties: 12 });
        let c = radix_cut(&parts, 15);
        assert_eq!(c, Cut { value: 0.5, ties: 2 });
    }
}
