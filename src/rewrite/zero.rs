//! Dense output: dropped entries become 0 in place, shapes and dtypes unchanged. Each weight
//! is rewritten from its (memory-mapped) bytes and checked: kept entries bit-identical,
//! dropped entries zero.

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use crate::emp::Sum;
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::Index;
use crate::prune::apply::for_each_entry;
use crate::prune::Planned;
use crate::score::{self, Criterion};

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
    let scores = score::score(model, ix, &p.weight, criterion)?;
    zero_bytes(&src, p, &scores).with_context(|| format!("zeroing weight {:?}", p.weight.name))
}

fn zero_bytes(src: &[u8], p: &Planned, scores: &[f32]) -> Result<(Bytes, Counts)> {
    let ft = p.weight.dtype;
    let size = ft.size();
    if src.len() != scores.len() * size {
        bail!("{} scores for {} bytes of {}", scores.len(), src.len(), ft.name());
    }
    let mut out = src.to_vec();
    let (mut nz_before, mut nz_after) = (0usize, 0usize);
    let kept = for_each_entry(p, scores, |i, keep| {
        let range = i * size..(i + 1) * size;
        let nonzero = is_nonzero(&src[range.clone()]) as usize;
        nz_before += nonzero;
        if keep {
            nz_after += nonzero;
        } else {
            out[range].fill(0);
        }
    });
    // After-check: only dropped entries were touched (kept ones are bit-identical by
    // construction), so the output must hold exactly the kept non-zeros.
    let written = out.chunks_exact(size).filter(|e| is_nonzero(e)).count();
    if written != nz_after {
        bail!("internal error: {written} non-zero entries written, {nz_after} planned");
    }
    // The source was only read: its mapped pages need not stay resident.
    crate::onnx::external::release_pages(src);
    Ok((Bytes::from(out), Counts { nonzero_before: nz_before, nonzero_after: nz_after, kept }))
}

/// Whether a little-endian float element (2, 4 or 8 bytes) is non-zero; `-0.0` counts as zero.
#[inline]
fn is_nonzero(e: &[u8]) -> bool {
    match *e {
        [a, b] => u16::from_le_bytes([a, b]) & 0x7fff != 0,
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]) & 0x7fff_ffff != 0,
        _ => e.iter().enumerate().any(|(j, &x)| if j + 1 == e.len() { x & 0x7f != 0 } else { x != 0 }),
    }
}
