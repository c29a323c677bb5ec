//! What a run did, as plain serialisable data, plus renderers: [`text`] for people (stdout),
//! JSON (`--json`, `--report FILE`) for machines. The JSON field names are a stable interface.

pub mod text;

use serde::Serialize;

use crate::prune::Group;
use crate::validate::Validation;
use crate::weights::Skipped;

/// The report of `inspect` and `prune`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub command: String,
    pub model: String,
    pub output: Option<String>,
    pub criterion: String,
    pub scope: String,
    pub beta: f64,
    pub format: String,
    pub groups: Vec<Group>,
    pub tensors: Vec<TensorReport>,
    pub skipped: Vec<Skipped>,
    pub totals: Totals,
    pub validation: Option<Validation>,
    /// What `--guard` restored (absent without `--guard`).
    pub guard: Option<crate::guard::GuardReport>,
    pub notes: Vec<String>,
    /// `channel` or `head` for structured pruning (`--level`), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Structured pruning: one row per structure group (empty otherwise).
    pub structures: Vec<crate::structure::plan::StructureReport>,
}

/// One prunable weight.
#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub op: String,
    pub node: String,
    pub graph: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub storage: String,
    pub n: usize,
    pub nonzero_before: usize,
    /// Non-zero entries after the pass.
    pub kept: usize,
    /// `1 − kept / n`.
    pub sparsity: f64,
    /// How the weight was written: `dense`, or `sparse` (a `SparseTensorProto`).
    pub format: String,
    /// Encoded bytes saved by the sparse form (0 when written dense).
    pub bytes_saved: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    /// Entries of all prunable weights.
    pub params: usize,
    pub kept: usize,
    pub sparsity: f64,
    /// Model file plus external data, before and after (after = before for `inspect`).
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Weights written as sparse tensors (`--format sparse`) and the bytes that saved.
    pub sparse_tensors: usize,
    pub sparse_bytes_saved: u64,
    /// Structured pruning: dense multiply-accumulates of the model before and after (the rule
    /// is in `diff::cost`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macs_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macs_after: Option<u64>,
}

impl Totals {
    pub fn from_tensors(t: &[TensorReport], bytes_before: u64, bytes_after: u64) -> Self {
        let params: usize = t.iter().map(|t| t.n).sum();
        let kept: usize = t.iter().map(|t| t.kept).sum();
        let sparse_tensors = t.iter().filter(|t| t.format == "sparse").count();
        let sparse_bytes_saved = t.iter().map(|t| t.bytes_saved).sum();
        Totals {
            params,
            kept,
            sparsity: sparsity(kept, params),
            bytes_before,
            bytes_after,
            sparse_tensors,
            sparse_bytes_saved,
            macs_before: None,
            macs_after: None,
        }
    }
}

pub fn sparsity(kept: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        1.0 - kept as f64 / n as f64
    }
}

/// The report of `validate`.
#[derive(Clone, Debug, Serialize)]
pub struct ValidateReport {
    pub tool: String,
    pub command: String,
    pub original: String,
    pub pruned: String,
    pub validation: Validation,
}

pub fn tool() -> String {
    format!("emprune {}", env!("CARGO_PKG_VERSION"))
}
