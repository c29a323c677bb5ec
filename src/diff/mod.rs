//! `emprune diff A B`: what changed between two versions of a model — nodes added, removed or
//! changed, tensors whose shape, dtype, storage or values changed (with non-zeros, sparsity
//! and N_eff on both sides), graph inputs/outputs, parameter and MAC totals, file sizes.
//!
//! Two models are *equivalent* when they compute the same thing from the same constants: the
//! same nodes (op, inputs, outputs, attributes), the same graph inputs/outputs, and tensors
//! of the same name, shape, dtype and values. Where a tensor is stored (inline, external,
//! typed fields, sparse initializer) is reported but does not by itself make models differ.

pub mod cost;
pub mod graph;
pub mod shapes;
pub mod tensors;
pub mod text;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::onnx::load::Model;
use crate::onnx::tensor::{self, Storage};
use crate::onnx::walk::Index;

pub use graph::{IoChange, NodeChange};
pub use tensors::{TensorRow, TensorStat};

/// How a row relates the two models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Same,
    Added,
    Removed,
    Changed,
}

/// Totals of one side.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub path: String,
    pub ir_version: i64,
    pub opsets: Vec<String>,
    pub nodes: usize,
    /// Dense tensors (initializers, Constant values) plus sparse initializers.
    pub tensors: usize,
    /// Model file bytes, external data bytes, and their sum.
    pub model_bytes: u64,
    pub data_bytes: u64,
    pub total_bytes: u64,
    /// Elements of every float tensor, and how many are non-zero.
    pub params: u64,
    pub nonzero_params: u64,
    /// Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (see [`cost`] for the rule), and
    /// the same counting only non-zero weights.
    pub macs: u64,
    pub nonzero_macs: u64,
    /// Whether every MAC count came from known shapes (otherwise some used 1 per unknown dim).
    pub macs_exact: bool,
}

/// The whole comparison; JSON field names are a stable interface.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub tool: String,
    pub command: String,
    pub a: Side,
    pub b: Side,
    pub equivalent: bool,
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub nodes_changed: usize,
    pub tensors_changed: usize,
    /// Changed, added and removed nodes only.
    pub nodes: Vec<NodeChange>,
    /// Every tensor of either model, `change` telling whether it differs.
    pub tensors: Vec<TensorRow>,
    pub io: Vec<IoChange>,
}

/// Compares the models at `a` and `b`.
pub fn diff(a: &Path, b: &Path) -> Result<DiffReport> {
    let ma = load_as_stored(a)?;
    let mb = load_as_stored(b)?;
    let (ia, ib) = (Index::build(&ma.proto), Index::build(&mb.proto));
    let sa = tensors::stats(&ma, &ia).with_context(|| format!("reading tensors of {}", a.display()))?;
    let sb = tensors::stats(&mb, &ib).with_context(|| format!("reading tensors of {}", b.display()))?;
    let rows = tensors::compare(&sa, &sb);
    let nodes = graph::compare_nodes(&ia, &ib);
    let io = graph::compare_io(&ia, &ib);
    let side_a = side(&ma, &ia, &sa)?;
    let side_b = side(&mb, &ib, &sb)?;
    let count = |c: Change| nodes.iter().filter(|n| n.change == c).count();
    let tensors_changed = rows.iter().filter(|r| r.change != Change::Same).count();
    let semantic = rows.iter().filter(|r| r.change != Change::Same && !r.storage_only()).count();
    Ok(DiffReport {
        tool: crate::report::tool(),
        command: "diff".into(),
        equivalent: nodes.is_empty() && io.is_empty() && semantic == 0,
        nodes_added: count(Change::Added),
        nodes_removed: count(Change::Removed),
        nodes_changed: count(Change::Changed),
        tensors_changed,
        a: side_a,
        b: side_b,
        nodes,
        tensors: rows,
        io,
    })
}

/// Loads a model as its file stores it: unlike [`Model::load`], sparse initializers stay
/// sparse (the diff reports their storage and reads them without densifying).
fn load_as_stored(path: &Path) -> Result<Model> {
    let bytes = crate::onnx::external::map_file(path)?;
    let file_size = bytes.len() as u64;
    let proto = crate::onnx::load::decode(bytes).with_context(|| format!("{}", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(Model { proto, path: path.to_path_buf(), file_size, external: crate::onnx::external::ExternalStore::new(dir) })
}

fn side(m: &Model, ix: &Index, stats: &[tensors::Named]) -> Result<Side> {
    let (model_bytes, data_bytes) = file_sizes(m, ix)?;
    let float = |s: &&tensors::Named| s.stat.n_eff.is_some() || s.stat.is_float;
    let params = stats.iter().filter(float).map(|s| s.stat.n).sum();
    let nonzero_params = stats.iter().filter(float).map(|s| s.stat.nonzero).sum();
    let macs = cost::macs(ix, stats);
    let opsets = m.proto.opset_import.iter().map(|o| format!("{}:{}", domain(&o.domain), o.version)).collect();
    Ok(Side {
        path: m.path.display().to_string(),
        ir_version: m.proto.ir_version,
        opsets,
        nodes: ix.graphs.iter().map(|g| g.graph.node.len()).sum(),
        tensors: stats.len(),
        model_bytes,
        data_bytes,
        total_bytes: model_bytes + data_bytes,
        params,
        nonzero_params,
        macs: macs.dense,
        nonzero_macs: macs.nonzero,
        macs_exact: macs.exact,
    })
}

fn domain(d: &str) -> &str {
    if d.is_empty() {
        "ai.onnx"
    } else {
        d
    }
}

/// The model file's size and the total size of the distinct data files it references.
fn file_sizes(m: &Model, ix: &Index) -> Result<(u64, u64)> {
    let mut files = vec![];
    for e in &ix.tensors {
        if tensor::storage(e.tensor) == Storage::External {
            let r = crate::onnx::external::ExternalRef::parse(e.tensor)
                .with_context(|| format!("tensor {:?}", e.tensor.name))?;
            files.push(m.external.resolve(&r.location)?);
        }
    }
    for g in &ix.graphs {
        for t in g.graph.sparse_initializer.iter().flat_map(|s| s.values.iter().chain(s.indices.iter())) {
            if tensor::storage(t) == Storage::External {
                let r = crate::onnx::external::ExternalRef::parse(t).with_context(|| format!("tensor {:?}", t.name))?;
                files.push(m.external.resolve(&r.location)?);
            }
        }
    }
    files.sort();
    files.dedup();
    let data = files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|md| md.len()).sum();
    Ok((m.file_size, data))
}
