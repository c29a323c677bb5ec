//! Dense output: dropped entries become 0 in place, shapes and dtypes unchanged. Each weight
//! is rewritten from its (memory-mapped) bytes chunk by chunk — scores of a chunk, its keep-mask
//! ([`Marker`]), then every element copied or zeroed without a branch, specialised per element
//! size — and checked: kept entries bit-identical, dropped entries zero.

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use crate::emp::chunked::CHUNK;
use crate::emp::Sum;
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::Index;
use crate::prune::apply::Marker;
use crate::prune::scores::Scores;
use crate::prune::{weight_scores, Planned};
use crate::score::Criterion;

/// What rewriting one weight did.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub nonzero_before: usize,
    pub nonzero_after: usize,
    /// Kept score mass per EMP group index.
    pub kept: Vec<(usize, Sum)>,
}

/// Rewrites one planned weight with its dropped entries zeroed: the new payload and counts.
pub fn zero(model: &Model, ix: &Index, p: &Planned, criterion: Criterion) -> Result<(Bytes, Counts)> {
    let t = ix.tensors[p.weight.id].tensor;
    let src = tensor::element_bytes(t, &model.external)?;
    let scores = weight_scores(model, ix, &p.weight, criterion)?;
    zero_bytes(&src, p, &scores).with_context(|| format!("zeroing weight {:?}", p.weight.name))
}

fn zero_bytes(src: &[u8], p: &Planned, scores: &Scores) -> Result<(Bytes, Counts)> {
    let ft = p.weight.dtype;
    let size = ft.size();
    if src.len() != scores.len() * size {
        bail!("{} scores for {} bytes of {}", scores.len(), src.len(), ft.name());
    }
    let mut out = vec![0u8; src.len()];
    let mut marker = Marker::new(p);
    let mut keep = [false; CHUNK];
    let mut tally = Tally::default();
    scores.for_chunks(|start, s| {
        let keep = &mut keep[..s.len()];
        marker.mark(start, s, keep);
        let bytes = start * size..(start + s.len()) * size;
        match size {
            2 => copy_kept::<2>(&src[bytes.clone()], &mut out[bytes], keep, &mut tally),
            4 => copy_kept::<4>(&src[bytes.clone()], &mut out[bytes], keep, &mut tally),
            _ => copy_kept::<8>(&src[bytes.clone()], &mut out[bytes], keep, &mut tally),
        }
        Ok(())
    })?;
    // After-check: every element written is the source element or zero, so the output must
    // hold exactly the kept non-zeros.
    if tally.written != tally.after {
        bail!("internal error: {} non-zero entries written, {} planned", tally.written, tally.after);
    }
    // The source was only read: its mapped pages need not stay resident.
    crate::onnx::external::release_pages(src);
    let counts = Counts { nonzero_before: tally.before, nonzero_after: tally.after, kept: marker.finish() };
    Ok((Bytes::from(out), counts))
}

/// Non-zero counts: in the source, among kept source entries, and in the output.
#[derive(Default)]
struct Tally {
    before: usize,
    after: usize,
    written: usize,
}

/// Copies the kept `W`-byte little-endian elements of `src` to `out` and zeroes the others
/// (a mask, no branch). Non-zero means any bit but the sign set: `-0.0` counts as zero.
#[inline]
fn copy_kept<const W: usize>(src: &[u8], out: &mut [u8], keep: &[bool], t: &mut Tally) {
    let sign = 0x80u64 << (8 * (W - 1));
    let (mut before, mut after, mut written) = (0, 0, 0);
    for ((s, o), &k) in src.chunks_exact(W).zip(out.chunks_exact_mut(W)).zip(keep) {
        let mut b = [0u8; 8];
        b[..W].copy_from_slice(s);
        let v = u64::from_le_bytes(b);
        let v_out = v & (k as u64).wrapping_neg();
        let nz = (v & !sign != 0) as usize;
        before += nz;
        after += nz & k as usize;
        written += (v_out & !sign != 0) as usize;
        o.copy_from_slice(&v_out.to_le_bytes()[..W]);
    }
    t.before += before;
    t.after += after;
    t.written += written;
}

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
            match w {
                2 => copy_kept::<2>(&src, &mut out, &keep, &mut t),
                4 => copy_kept::<4>(&src, &mut out, &keep, &mut t),
                _ => copy_kept::<8>(&src, &mut out, &keep, &mut t),
            }
            for (i, &k) in keep.iter().enumerate() {
                let e = i * w..(i + 1) * w;
                let want: Vec<u8> = if k { src[e.clone()].to_vec() } else { vec![0; w] };
                assert_eq!(out[e], want[..], "w={w} i={i}");
            }
            assert_eq!((t.before, t.after, t.written), (5, 2, 2), "w={w}");
        }
    }
}
