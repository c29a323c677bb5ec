//! Per-tensor statistics for the diff — shape, dtype, storage, non-zeros, sparsity, N_eff and
//! a fingerprint of the values — for dense tensors (initializers, Constant values) and sparse
//! initializers alike, and the row-by-row comparison of two models' tensors.
//!
//! The fingerprint is a wrapping sum of a strong mix of `(flat index, raw element bits)` over
//! the non-zero entries, so it is the same for a dense tensor and its sparse encoding, needs
//! no densification, and can be accumulated chunk by chunk in parallel. `-0.0` counts as zero.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::Change;
use crate::emp::Sum;
use crate::onnx::dtype::{onnx_elem_size, onnx_type_name, FloatType};
use crate::onnx::load::Model;
use crate::onnx::proto::{SparseTensorProto, TensorProto};
use crate::onnx::tensor;
use crate::onnx::walk::Index;

/// Elements per parallel work unit.
const CHUNK: usize = 1 << 16;

/// What one side knows about a tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorStat {
    pub shape: Vec<i64>,
    pub dtype: String,
    /// `raw`, `external`, `typed` or `sparse`.
    pub storage: String,
    pub n: u64,
    pub nonzero: u64,
    pub sparsity: f64,
    /// `‖w‖₁² / ‖w‖₂²` of a float tensor (`null` when all zero or not float).
    pub n_eff: Option<f64>,
    #[serde(skip)]
    pub is_float: bool,
    #[serde(skip)]
    pub fingerprint: u64,
}

/// A tensor of one model, keyed by graph path and value name.
#[derive(Clone, Debug)]
pub struct Named {
    pub graph: String,
    pub name: String,
    pub stat: TensorStat,
}

/// One row of the tensor table.
#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub graph: String,
    pub name: String,
    pub change: Change,
    /// Which properties differ: `shape`, `dtype`, `storage`, `values`.
    pub changed: Vec<String>,
    pub a: Option<TensorStat>,
    pub b: Option<TensorStat>,
}

impl TensorRow {
    /// Only the storage differs (same shape, dtype and values).
    pub fn storage_only(&self) -> bool {
        self.change == Change::Changed && self.changed == ["storage"]
    }
}

/// Statistics of every tensor of `m`, in index order, sparse initializers after each graph's
/// dense tensors.
pub fn stats(m: &Model, ix: &Index) -> Result<Vec<Named>> {
    let mut out: Vec<Named> = ix
        .tensors
        .par_iter()
        .map(|e| {
            let stat = dense_stat(e.tensor, m).with_context(|| format!("tensor {:?}", e.value))?;
            Ok(Named { graph: ix.graphs[e.graph].path.clone(), name: e.value.clone(), stat })
        })
        .collect::<Result<_>>()?;
    for g in &ix.graphs {
        for sp in &g.graph.sparse_initializer {
            let name = sp.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
            let stat = sparse_stat(sp, m).with_context(|| format!("sparse initializer {name:?}"))?;
            out.push(Named { graph: g.path.clone(), name, stat });
        }
    }
    Ok(out)
}

/// Running totals over some entries.
#[derive(Clone, Copy, Default)]
struct Acc {
    nonzero: u64,
    l1: Sum,
    l2: Sum,
    fp: u64,
}

impl Acc {
    fn merge(mut self, o: Acc) -> Acc {
        self.nonzero += o.nonzero;
        self.l1 = self.l1.merge(o.l1);
        self.l2 = self.l2.merge(o.l2);
        self.fp = self.fp.wrapping_add(o.fp);
        self
    }

    /// Adds one non-zero entry (its value as f64 when it is a float, its raw bits).
    #[inline]
    fn add(&mut self, index: u64, bits: u64, value: Option<f64>, l1: &mut f64, l2: &mut f64) {
        self.nonzero += 1;
        self.fp = self.fp.wrapping_add(mix(index, bits));
        if let Some(v) = value.filter(|v| v.is_finite()) {
            *l1 += v.abs();
            *l2 += v * v;
        }
    }
}

/// SplitMix64 finaliser of an (index, bits) pair.
#[inline]
fn mix(index: u64, bits: u64) -> u64 {
    let mut z = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ bits.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Raw little-endian bits of element `i` of `raw` (element size `size` ≤ 8; larger types use
/// the first 8 bytes mixed with the rest).
#[inline]
fn bits(raw: &[u8], size: usize, i: usize) -> u64 {
    let e = &raw[i * size..(i + 1) * size];
    let mut b = [0u8; 8];
    let k = size.min(8);
    b[..k].copy_from_slice(&e[..k]);
    let mut v = u64::from_le_bytes(b);
    for (j, &x) in e.iter().enumerate().skip(8) {
        v ^= (x as u64) << ((j % 8) * 8);
        v = v.rotate_left(7);
    }
    v
}

/// Accumulates elements `first..first + count` of `raw` (at flat indices from `index_of`).
fn accumulate(raw: &[u8], size: usize, ft: Option<FloatType>, count: usize, index_of: impl Fn(usize) -> u64) -> Acc {
    let mut acc = Acc::default();
    let (mut l1, mut l2) = (0f64, 0f64);
    for i in 0..count {
        let (nonzero, value) = match ft {
            Some(ft) => {
                let v = ft.read_f64(raw, i);
                (v != 0.0, Some(v))
            }
            None => (raw[i * size..(i + 1) * size].iter().any(|&x| x != 0), None),
        };
        if nonzero {
            acc.add(index_of(i), bits(raw, size, i), value, &mut l1, &mut l2);
        }
    }
    acc.l1.add(l1);
    acc.l2.add(l2);
    acc
}

fn finish(shape: Vec<i64>, dtype: i32, storage: &str, n: u64, acc: Acc) -> TensorStat {
    let ft = FloatType::from_onnx(dtype);
    let (l1, l2) = (acc.l1.value(), acc.l2.value());
    let n_eff = (ft.is_some() && l2 > 0.0).then(|| (l1 * l1 / l2).clamp(1.0, n.max(1) as f64));
    TensorStat {
        shape,
        dtype: onnx_type_name(dtype),
        storage: storage.into(),
        n,
        nonzero: acc.nonzero,
        sparsity: if n == 0 { 0.0 } else { 1.0 - acc.nonzero as f64 / n as f64 },
        n_eff,
        is_float: ft.is_some(),
        fingerprint: acc.fp,
    }
}

fn dense_stat(t: &TensorProto, m: &Model) -> Result<TensorStat> {
    let n = tensor::numel(t)? as u64;
    let storage = format!("{:?}", tensor::storage(t)).to_lowercase();
    let Ok(size) = onnx_elem_size(t.data_type) else {
        // Strings and other variable-size types: fingerprint the payload as a whole.
        let fp = t.string_data.iter().enumerate().fold(0u64, |h, (i, s)| {
            h.wrapping_add(mix(i as u64, s.iter().fold(0u64, |a, &x| a.rotate_left(8) ^ x as u64)))
        });
        let acc = Acc { nonzero: n, fp, ..Default::default() };
        return Ok(finish(t.dims.clone(), t.data_type, &storage, n, acc));
    };
    let raw = tensor::element_bytes(t, &m.external)?;
    let ft = FloatType::from_onnx(t.data_type);
    let acc = raw
        .par_chunks(CHUNK * size)
        .enumerate()
        .map(|(c, chunk)| accumulate(chunk, size, ft, chunk.len() / size, |i| (c * CHUNK + i) as u64))
        .reduce(Acc::default, Acc::merge);
    Ok(finish(t.dims.clone(), t.data_type, &storage, n, acc))
}

/// The one place sparse initializers enter: their flat indices and value bytes, read
/// without densifying (`[NNZ]` linear or `[NNZ, rank]` coordinate indices).
pub fn sparse_entries(sp: &SparseTensorProto, m: &Model) -> Result<(Vec<u64>, bytes::Bytes, i32)> {
    let values = sp.values.as_ref().ok_or_else(|| anyhow!("no values tensor"))?;
    let raw = tensor::element_bytes(values, &m.external)?;
    let nnz = tensor::numel(values)?;
    let Some(ix) = sp.indices.as_ref() else {
        if nnz == 0 {
            return Ok((vec![], raw, values.data_type));
        }
        bail!("{nnz} values but no indices");
    };
    let ib = tensor::element_bytes(ix, &m.external)?;
    let idx: Vec<i64> = match onnx_elem_size(ix.data_type)? {
        8 => ib.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        4 => ib.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64).collect(),
        _ => bail!("indices of type {} are not supported", onnx_type_name(ix.data_type)),
    };
    let dims: Vec<i64> = sp.dims.clone();
    let numel: i64 = dims.iter().product();
    let flat: Vec<u64> = if idx.len() == nnz {
        idx.iter().map(|&i| i as u64).collect()
    } else if idx.len() == nnz * dims.len() {
        idx.chunks(dims.len().max(1))
            .map(|c| c.iter().zip(&dims).fold(0i64, |acc, (&i, &d)| acc * d + i) as u64)
            .collect()
    } else {
        bail!("{} indices do not fit {nnz} values of a rank-{} tensor", idx.len(), dims.len());
    };
    if let Some(bad) = flat.iter().find(|&&i| i as i64 >= numel || (i as i64) < 0) {
        bail!("index {bad} lies outside the shape {dims:?}");
    }
    Ok((flat, raw, values.data_type))
}

fn sparse_stat(sp: &SparseTensorProto, m: &Model) -> Result<TensorStat> {
    let (flat, raw, dtype) = sparse_entries(sp, m)?;
    let size = onnx_elem_size(dtype)?;
    let ft = FloatType::from_onnx(dtype);
    let n = sp.dims.iter().try_fold(1u64, |a, &d| u64::try_from(d).ok().and_then(|d| a.checked_mul(d)));
    let n = n.ok_or_else(|| anyhow!("bad shape {:?}", sp.dims))?;
    let acc = raw
        .par_chunks(CHUNK * size)
        .enumerate()
        .map(|(c, chunk)| accumulate(chunk, size, ft, chunk.len() / size, |i| flat[c * CHUNK + i]))
        .reduce(Acc::default, Acc::merge);
    Ok(finish(sp.dims.clone(), dtype, "sparse", n, acc))
}

/// Pairs the tensors of two models by graph and name: rows in A's order, then B's additions.
pub fn compare(a: &[Named], b: &[Named]) -> Vec<TensorRow> {
    let by_key: HashMap<(&str, &str), &Named> = b.iter().map(|t| ((t.graph.as_str(), t.name.as_str()), t)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut rows = vec![];
    for ta in a {
        let key = (ta.graph.as_str(), ta.name.as_str());
        seen.insert(key);
        rows.push(match by_key.get(&key) {
            Some(tb) => row(ta, &ta.stat, &tb.stat),
            None => TensorRow {
                graph: ta.graph.clone(),
                name: ta.name.clone(),
                change: Change::Removed,
                changed: vec![],
                a: Some(ta.stat.clone()),
                b: None,
            },
        });
    }
    for tb in b.iter().filter(|t| !seen.contains(&(t.graph.as_str(), t.name.as_str()))) {
        rows.push(TensorRow {
            graph: tb.graph.clone(),
            name: tb.name.clone(),
            change: Change::Added,
            changed: vec![],
            a: None,
            b: Some(tb.stat.clone()),
        });
    }
    rows
}

fn row(t: &Named, a: &TensorStat, b: &TensorStat) -> TensorRow {
    let mut changed = vec![];
    if a.shape != b.shape {
        changed.push("shape".to_string());
    }
    if a.dtype != b.dtype {
        changed.push("dtype".into());
    }
    if a.storage != b.storage {
        changed.push("storage".into());
    }
    if a.fingerprint != b.fingerprint || a.nonzero != b.nonzero {
        changed.push("values".into());
    }
    TensorRow {
        graph: t.graph.clone(),
        name: t.name.clone(),
        change: if changed.is_empty() { Change::Same } else { Change::Changed },
        changed,
        a: Some(a.clone()),
        b: Some(b.clone()),
    }
}
