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
    let mut broken = None;
    let kept = for_each_entry(p, scores, |i, keep| {
        let range = i * size..(i + 1) * size;
        let nonzero = ft.read_f64(src, i) != 0.0;
        nz_before += nonzero as usize;
        if keep {
            nz_after += nonzero as usize;
        } else {
            out[range.clone()].fill(0);
        }
        // After-check of this entry: kept ⇒ bit-identical, dropped ⇒ reads as zero.
        if (keep && out[range.clone()] != src[range.clone()]) || (!keep && ft.read_f64(&out, i) != 0.0) {
            broken.get_or_insert(i);
        }
    });
    if let Some(i) = broken {
        bail!("internal error: entry {i} was not rewritten as planned");
    }
    Ok((Bytes::from(out), Counts { nonzero_before: nz_before, nonzero_after: nz_after, kept }))
}
