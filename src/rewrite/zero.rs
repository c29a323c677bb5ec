//! Dense output: dropped entries become 0 in place, shapes and dtypes unchanged. Each weight
//! is rewritten from its (memory-mapped) bytes chunk by chunk — scores of a chunk, its keep-mask
//! ([`Marker`]), then every element copied or zeroed without a branch, specialised per element
//! size — and checked: kept entries bit-identical, dropped entries zero. A large weight under
//! one whole-tensor cut is rewritten in parallel fixed-size blocks, with the tie budget handed
//! out in flat order, so the output does not depend on the thread count.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rayon::prelude::*;

use crate::emp::chunked::CHUNK;
use crate::emp::{Cut, Sum};
use crate::onnx::load::Model;
use crate::onnx::output::{Sink, ToVec};
use crate::onnx::tensor;
use crate::onnx::walk::Index;
use crate::prune::apply::Marker;
use crate::prune::scores::Scores;
use crate::prune::{weight_scores, Planned, WeightCut};
use crate::score::Criterion;

/// Entries per parallel block of a whole-tensor rewrite: fixed (never from the thread count)
/// and a multiple of [`CHUNK`]; smaller tensors are rewritten sequentially.
const BLOCK: usize = 64 * CHUNK;

/// What rewriting one weight did.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub nonzero_before: usize,
    pub nonzero_after: usize,
    /// Kept score mass per EMP group index.
    pub kept: Vec<(usize, Sum)>,
}

impl Counts {
    /// The same counts with group indices moved up by `offset` (see [`WeightCut::renumbered`]).
    pub fn renumbered(mut self, offset: usize) -> Counts {
        self.kept.iter_mut().for_each(|(g, _)| *g += offset);
        self
    }
}

/// Rewrites one planned weight with its dropped entries zeroed, into `sink`: its counts.
pub fn zero(model: &Model, ix: &Index, p: &Planned, criterion: Criterion, sink: &dyn Sink) -> Result<Counts> {
    let t = ix.tensors[p.weight.id].tensor;
    let src = tensor::element_bytes(t, &model.external)?;
    let scores = weight_scores(model, ix, &p.weight, criterion)?;
    zero_into(&src, p, &scores, sink).with_context(|| format!("zeroing weight {:?}", p.weight.name))
}

/// [`zero`] into memory: the new payload and the counts.
pub fn zero_to_bytes(model: &Model, ix: &Index, p: &Planned, criterion: Criterion) -> Result<(Bytes, Counts)> {
    let sink = ToVec::new(p.weight.numel() * p.weight.dtype.size());
    let counts = zero(model, ix, p, criterion, &sink)?;
    Ok((Bytes::from(sink.into_inner()), counts))
}

fn zero_into(src: &[u8], p: &Planned, scores: &Scores, sink: &dyn Sink) -> Result<Counts> {
    let ft = p.weight.dtype;
    let size = ft.size();
    if src.len() != scores.len() * size {
        bail!("{} scores for {} bytes of {}", scores.len(), src.len(), ft.name());
    }
    if let WeightCut::All { cut, group } = &p.cut {
        if scores.len() > BLOCK {
            let (tally, kept) = zero_whole(src, size, cut, scores, BLOCK, sink)?;
            return finish(src, tally, vec![(*group, kept)]);
        }
    }
    let mut marker = Marker::new(p);
    let mut keep = [false; CHUNK];
    let mut tally = Tally::default();
    let mut pieces = Pieces::new(sink, size);
    scores.for_chunks(|start, s| {
        let keep = &mut keep[..s.len()];
        marker.mark(start, s, keep);
        let out = pieces.next(start, s.len())?;
        copy_kept_sized(size, &src[start * size..][..out.len()], out, keep, &mut tally);
        Ok(())
    })?;
    pieces.flush()?;
    finish(src, tally, marker.finish())
}

/// Checks a rewritten weight: every element written is the source element or zero, so the
/// output must hold exactly the kept non-zeros.
fn finish(src: &[u8], tally: Tally, kept: Vec<(usize, Sum)>) -> Result<Counts> {
    if tally.written != tally.after {
        bail!("internal error: {} non-zero entries written, {} planned", tally.written, tally.after);
    }
    // The source was only read: its mapped pages need not stay resident.
    crate::onnx::external::release_pages(src);
    Ok(Counts { nonzero_before: tally.before, nonzero_after: tally.after, kept })
}

/// Rewrites a whole-tensor cut in parallel blocks of `block` entries (a multiple of [`CHUNK`]).
/// The tie budget is handed out in flat order — each block starts with the ties its
/// predecessors used — and chunk masses are added in flat order, so the result is that of the
/// sequential path for any thread count.
fn zero_whole(
    src: &[u8],
    size: usize,
    cut: &Cut,
    scores: &Scores,
    block: usize,
    sink: &dyn Sink,
) -> Result<(Tally, Sum)> {
    debug_assert_eq!(block % CHUNK, 0);
    let blocks = scores.len().div_ceil(block);
    let starts = tie_starts(cut, scores, blocks, block)?;
    let done: Vec<Result<(Tally, Vec<f64>)>> = starts
        .into_par_iter()
        .enumerate()
        .map(|(b, used)| {
            let chunks = b * block / CHUNK..((b + 1) * block).min(scores.len()).div_ceil(CHUNK);
            zero_block(src, size, cut, scores, chunks, used, sink)
        })
        .collect();
    scores.release();
    let (mut tally, mut kept) = (Tally::default(), Sum::default());
    for r in done {
        let (t, masses) = r?;
        tally.add(&t);
        masses.into_iter().for_each(|m| kept.add(m));
    }
    Ok((tally, kept))
}

/// The ties at the cut used before each block: the running count of tied entries, capped at
/// the cut's budget. No counting pass when the budget cannot bind (zero, or at least one tie
/// per entry, as when a global cut keeps every tie).
fn tie_starts(cut: &Cut, scores: &Scores, blocks: usize, block: usize) -> Result<Vec<usize>> {
    if cut.ties == 0 || cut.ties >= scores.len() {
        return Ok(vec![0; blocks]);
    }
    let counts: Vec<Result<usize>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let mut buf = [0f32; CHUNK];
            let chunks = b * block / CHUNK..((b + 1) * block).min(scores.len()).div_ceil(CHUNK);
            chunks.map(|c| Ok(cut.tie_count(scores.chunk(c, &mut buf)?))).sum()
        })
        .collect();
    let mut used = 0;
    let mut starts = Vec::with_capacity(blocks);
    for n in counts {
        starts.push(used);
        used = (used + n?).min(cut.ties);
    }
    Ok(starts)
}

/// One block: the given chunks, marked with the tie count `used` it starts with and written
/// to `sink`; the tally and the kept mass of every chunk.
fn zero_block(
    src: &[u8],
    size: usize,
    cut: &Cut,
    scores: &Scores,
    chunks: std::ops::Range<usize>,
    mut used: usize,
    sink: &dyn Sink,
) -> Result<(Tally, Vec<f64>)> {
    let (mut buf, mut keep, mut tally) = ([0f32; CHUNK], [false; CHUNK], Tally::default());
    let mut masses = Vec::with_capacity(chunks.len());
    let mut pieces = Pieces::new(sink, size);
    for c in chunks {
        let s = scores.chunk(c, &mut buf)?;
        let keep = &mut keep[..s.len()];
        masses.push(cut.mark(s, &mut used, keep));
        let out = pieces.next(c * CHUNK, s.len())?;
        copy_kept_sized(size, &src[c * CHUNK * size..][..out.len()], out, keep, &mut tally);
    }
    pieces.flush()?;
    Ok((tally, masses))
}

/// Bytes gathered before they go to the sink: small enough to still be in the core's cache
/// when the kernel copies them into the page cache (see [`crate::onnx::output`]).
const PIECE_BYTES: usize = 256 << 10;

thread_local! {
    /// Each thread's piece buffer, reused across tensors.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Consecutive rewritten entries, collected into pieces of at most [`PIECE_BYTES`] that are
/// put into the sink as they fill.
struct Pieces<'s> {
    sink: &'s dyn Sink,
    size: usize,
    buf: Vec<u8>,
    /// Flat index of the first entry in `buf`, and how many it holds.
    first: usize,
    len: usize,
}

impl<'s> Pieces<'s> {
    fn new(sink: &'s dyn Sink, size: usize) -> Self {
        let mut buf = SPARE.take();
        buf.resize(PIECE_BYTES.max(CHUNK * size), 0);
        Pieces { sink, size, buf, first: 0, len: 0 }
    }

    /// Room for the `n` entries from flat index `start`, which follow the ones before.
    fn next(&mut self, start: usize, n: usize) -> Result<&mut [u8]> {
        if (self.len + n) * self.size > self.buf.len() {
            self.flush()?;
        }
        if self.len == 0 {
            self.first = start;
        }
        debug_assert_eq!(self.first + self.len, start, "pieces must be consecutive");
        let room = &mut self.buf[self.len * self.size..(self.len + n) * self.size];
        self.len += n;
        Ok(room)
    }

    fn flush(&mut self) -> Result<()> {
        if self.len > 0 {
            self.sink.put(self.first * self.size, &self.buf[..self.len * self.size])?;
            self.len = 0;
        }
        Ok(())
    }
}

impl Drop for Pieces<'_> {
    fn drop(&mut self) {
        SPARE.set(std::mem::take(&mut self.buf));
    }
}

/// Non-zero counts: in the source, among kept source entries, and in the output.
#[derive(Default)]
struct Tally {
    before: usize,
    after: usize,
    written: usize,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.before += t.before;
        self.after += t.after;
        self.written += t.written;
    }
}

crate::simd::avx2_dispatch! {
    /// [`copy_kept`] for elements of `size` bytes (2, 4 or 8).
    fn copy_kept_sized(size: usize, src: &[u8], out: &mut [u8], keep: &[bool], t: &mut Tally) = copy_kept_body;
}

#[inline(always)]
fn copy_kept_body(size: usize, src: &[u8], out: &mut [u8], keep: &[bool], t: &mut Tally) {
    match size {
        2 => copy_kept_2(src, out, keep, t),
        4 => copy_kept_4(src, out, keep, t),
        _ => copy_kept_8(src, out, keep, t),
    }
}

/// Defines `copy_kept_W`: copies the kept `W`-byte little-endian elements of `src` to `out`
/// and zeroes the others (a mask, no branch), at most one chunk at a time. Non-zero means any
/// bit but the sign set: `-0.0` counts as zero. Elements are handled as integers of their own
/// width, so a vector register holds as many as it can (8 f16 per 128 bits).
macro_rules! copy_kept {
    ($name:ident, $int:ty, $w:literal) => {
        #[inline(always)]
        fn $name(src: &[u8], out: &mut [u8], keep: &[bool], t: &mut Tally) {
            const SIGN: $int = 1 << (8 * $w - 1);
            debug_assert!(keep.len() <= CHUNK, "u32 counters hold one chunk");
            let (src, _) = src.as_chunks::<$w>();
            let (out, _) = out.as_chunks_mut::<$w>();
            let (mut before, mut after, mut written) = (0u32, 0u32, 0u32);
            for ((s, o), &k) in src.iter().zip(out.iter_mut()).zip(keep) {
                let v = <$int>::from_le_bytes(*s);
                let kept = v & (k as $int).wrapping_neg();
                let nz = (v & !SIGN != 0) as u32;
                before += nz;
                after += nz & k as u32;
                written += (kept & !SIGN != 0) as u32;
                *o = kept.to_le_bytes();
            }
            t.before += before as usize;
            t.after += after as usize;
            t.written += written as usize;
        }
    };
}

copy_kept!(copy_kept_2, u16, 2);
copy_kept!(copy_kept_4, u32, 4);
copy_kept!(copy_kept_8, u64, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_kept_masks_each_element_size() {
        for w in [2usize, 4, 8] {
            let src: Vec<u8> = (0..6 * w).map(|i| if i < w { 0 } else { (i * 29 % 255 + 1) as u8 }).collect();
            let keep = [true, true, false, true, false, false];
            let mut out = vec![0xaau8; src.len()];
            let mut t = Tally::default();
            copy_kept_sized(w, &src, &mut out, &keep, &mut t);
            for (i, &k) in keep.iter().enumerate() {
                let e = i * w..(i + 1) * w;
                let want: Vec<u8> = if k { src[e.clone()].to_vec() } else { vec![0; w] };
                assert_eq!(out[e], want[..], "w={w} i={i}");
            }
            assert_eq!((t.before, t.after, t.written), (5, 2, 2), "w={w}");
            // -0.0 (only the sign bit) is kept bit for bit but counts as zero.
            let mut neg_zero = vec![0u8; w];
            neg_zero[w - 1] = 0x80;
            let mut out = vec![0u8; w];
            let mut t = Tally::default();
            copy_kept_sized(w, &neg_zero, &mut out, &[true], &mut t);
            assert_eq!((out, t.before, t.after, t.written), (neg_zero, 0, 0, 0), "w={w}");
        }
    }

    fn planned(n: usize, cut: Cut) -> Planned {
        let weight = crate::weights::Weight::fixture(&[n], &[0]);
        Planned { weight, cut: WeightCut::All { cut, group: 3 } }
    }

    #[test]
    fn parallel_blocks_equal_the_sequential_path_with_heavy_ties() {
        let mut rng = crate::rng::Rng::new(5);
        // Long enough for the sequential path to put several pieces.
        let n = 2 * PIECE_BYTES / 4 + 17;
        let w: Vec<f32> =
            (0..n).map(|_| [0.0f32, 0.5, -0.5, 1.0, -1.0, 2.0][(rng.uniform() * 6.0) as usize % 6]).collect();
        let src: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        for keep in [1, n / 3, n / 2, n - 1] {
            let found = Cut::find(&w.iter().map(|x| x.abs()).collect::<Vec<_>>(), keep);
            // The cut as found (ties bind), and as a global cut that keeps every tie.
            for cut in [found, Cut { ties: usize::MAX, ..found }] {
                let p = planned(n, cut);
                for scores in [
                    Scores::Values(w.clone()),
                    Scores::Raw { name: "w".into(), dtype: p.weight.dtype, bytes: Bytes::from(src.clone()) },
                ] {
                    assert!(n < BLOCK, "the reference must take the sequential path");
                    let sink = ToVec::new(src.len());
                    let counts = zero_into(&src, &p, &scores, &sink).unwrap();
                    let want = sink.into_inner();
                    for block in [CHUNK, 2 * CHUNK, 8 * CHUNK] {
                        let sink = ToVec::new(src.len());
                        let (t, kept) = zero_whole(&src, 4, &cut, &scores, block, &sink).unwrap();
                        assert_eq!(sink.into_inner(), want, "keep={keep} block={block}");
                        assert_eq!((t.before, t.after), (counts.nonzero_before, counts.nonzero_after));
                        assert_eq!(t.after, t.written);
                        assert_eq!(kept.value().to_bits(), counts.kept[0].1.value().to_bits());
                    }
                }
            }
        }
    }
}
