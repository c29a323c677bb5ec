//! Importance scores for weight entries, one criterion per file. A score is a non-negative
//! f32 per entry; EMP ranks by it and sizes the kept set from its L1/L2 mass.

pub mod calib;
pub mod magnitude;
pub mod wanda;

use anyhow::Result;

use crate::onnx::load::Model;
use crate::weights::Weight;

/// The scoring criteria for unstructured pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// `|w|`, the paper's default.
    Magnitude,
    /// `|w| · ‖X‖₂` (Wanda): weights times the L2 norm of their input feature over
    /// calibration data (`--calib`); default scope `row`.
    Wanda,
    /// Structures (`--level`): L2 norm of every weight slice a structure owns (default there).
    L2,
    /// Structures (`--level`): L1 norm of every weight slice a structure owns. (`wanda` with
    /// `--level`: the sum of the wanda scores of every entry a structure owns.)
    L1,
}

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Magnitude => "magnitude",
            Criterion::Wanda => "wanda",
            Criterion::L2 => "l2",
            Criterion::L1 => "l1",
        }
    }
}

/// Scores every entry of `w` (flat, row-major order of the stored tensor).
pub fn score(model: &Model, ix: &crate::onnx::walk::Index, w: &Weight, criterion: Criterion) -> Result<Vec<f32>> {
    let t = ix.tensors[w.id].tensor;
    match criterion {
        Criterion::Magnitude => magnitude::scores(t, &model.external),
        Criterion::Wanda => wanda::scores(t, &model.external, w),
        Criterion::L2 | Criterion::L1 => {
            anyhow::bail!("--criterion {} scores structures; use it with --level", criterion.name())
        }
    }
}
