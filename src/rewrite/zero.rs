//! Dense output: dropped entries become 0 in place, shapes and dtypes unchanged.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rayon::prelude::*;

use super::Edits;
use crate::onnx::load::Model;
use crate::onnx::tensor;
use crate::onnx::walk::Index;
use crate::prune::Pruned;

/// Per-weight counts after zeroing.
#[derive(Clone, Debug)]
pub struct Zeroed {
    pub nonzero_before: usize,
    pub nonzero_after: usize,
}

/// Zeroes every dropped entry; returns the edits and per-weight counts (same order as
/// `pruned`).
pub fn zero(model: &Model, ix: &Index, pruned: &[Pruned]) -> Result<(Edits, Vec<Zeroed>)> {
    let done: Vec<(Bytes, Zeroed)> = pruned
        .par_iter()
        .map(|p| {
            let t = ix.tensors[p.weight.id].tensor;
            let bytes = tensor::element_bytes(t, &model.external)?;
            zero_bytes(&bytes, p).with_context(|| format!("zeroing weight {:?}", p.weight.name))
        })
        .collect::<Result<_>>()?;
    let mut edits = Edits::default();
    let mut counts = vec![];
    for (p, (data, z)) in pruned.iter().zip(done) {
        edits.record(p.weight.id, p.weight.storage, data);
        counts.push(z);
    }
    Ok((edits, counts))
}

fn zero_bytes(src: &[u8], p: &Pruned) -> Result<(Bytes, Zeroed)> {
    let size = p.weight.dtype.size();
    if src.len() != p.mask.len() * size {
        bail!("mask has {} entries for {} bytes of {}", p.mask.len(), src.len(), p.weight.dtype.name());
    }
    let mut out = src.to_vec();
    for (i, &keep) in p.mask.iter().enumerate() {
        if !keep {
            out[i * size..(i + 1) * size].fill(0);
        }
    }
    let z = check(src, &out, p)?;
    Ok((Bytes::from(out), z))
}

/// After-check: kept entries are bit-identical, dropped entries read as 0.
fn check(before: &[u8], after: &[u8], p: &Pruned) -> Result<Zeroed> {
    let ft = p.weight.dtype;
    let size = ft.size();
    let (mut nz_before, mut nz_after) = (0, 0);
    for (i, &keep) in p.mask.iter().enumerate() {
        let (b, a) = (&before[i * size..(i + 1) * size], &after[i * size..(i + 1) * size]);
        let (vb, va) = (ft.read_f64(before, i), ft.read_f64(after, i));
        nz_before += (vb != 0.0) as usize;
        nz_after += (va != 0.0) as usize;
        if (keep && a != b) || (!keep && va != 0.0) {
            bail!("internal error: entry {i} was not rewritten as planned");
        }
    }
    Ok(Zeroed { nonzero_before: nz_before, nonzero_after: nz_after })
}
