//! Validation: run the original and the pruned model with tract on the same inputs and say
//! how close their outputs are (and, given labels, how accurate each is). Fails when any
//! output's cosine similarity drops below `--min-cosine` or turns non-finite.

pub mod inputs;
pub mod metrics;
pub mod npy;
pub mod prepare;
pub mod runner;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

use crate::onnx::load::Model;
pub use inputs::{InputDesc, InputSpec};
pub use metrics::OutputCmp;
use runner::Runner;

/// Default pass threshold on every output's cosine similarity. Calibrated on the bundled
/// models (README, "Choosing --min-cosine"): magnitude-EMP at β = 1 keeps their logits at
/// cosine 0.86–0.99 on real and on random inputs, in every scope (the tiny encoder in row
/// scope is the lowest); 0.85 passes those and fails rewrites that gut the model (β = 0.25,
/// a pruned fixed transform).
pub const DEFAULT_MIN_COSINE: f64 = 0.85;

#[derive(Clone, Debug)]
pub struct Options {
    pub inputs: InputSpec,
    pub min_cosine: f64,
    /// Timed runs per model (after one untimed run).
    pub runs: usize,
    /// Integer class labels for the first output's argmax.
    pub labels: Option<PathBuf>,
    /// Folder to write inputs and both models' outputs to, as `.npy`.
    pub save_io: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self { inputs: InputSpec::default(), min_cosine: DEFAULT_MIN_COSINE, runs: 5, labels: None, save_io: None }
    }
}

/// Top-1 accuracy of both models against labels.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Accuracy {
    pub samples: usize,
    pub original: f64,
    pub pruned: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Validation {
    pub passed: bool,
    pub min_cosine: f64,
    pub inputs: Vec<InputDesc>,
    pub outputs: Vec<OutputCmp>,
    pub latency_original_ms: f64,
    pub latency_pruned_ms: f64,
    pub accuracy: Option<Accuracy>,
    /// Why it failed, one line per failing output.
    pub failures: Vec<String>,
    /// Set when the models could not be run in their own precision (floats widened to f32).
    pub precision_note: Option<String>,
}

pub fn validate(original: &Model, pruned: &Model, opts: &Options) -> Result<Validation> {
    let made = inputs::make(original.graph(), &opts.inputs)?;
    let (a, b, named, precision_note) = load_pair(original, pruned, &made)?;
    let (out_a, lat_a) = a.run_timed(&ordered(&a, &named)?, opts.runs).context("original model")?;
    let (out_b, lat_b) = b.run_timed(&ordered(&b, &named)?, opts.runs).context("pruned model")?;
    let names: Vec<String> = original.graph().output.iter().map(|o| o.name.clone()).collect();
    if out_a.len() != out_b.len() {
        bail!("the original has {} outputs, the pruned model {}", out_a.len(), out_b.len());
    }
    let mut outputs = vec![];
    for (i, (x, y)) in out_a.iter().zip(&out_b).enumerate() {
        let name = names.get(i).cloned().unwrap_or_else(|| format!("output{i}"));
        outputs.push(metrics::compare(&name, x, y)?);
    }
    let failures: Vec<String> = outputs
        .iter()
        .filter(|o| !(o.cosine >= opts.min_cosine) || !o.max_abs.is_finite())
        .map(|o| {
            format!("output {:?}: cosine {:.6} < {} (max |Δ| {:.4e})", o.name, o.cosine, opts.min_cosine, o.max_abs)
        })
        .collect();
    let accuracy = match &opts.labels {
        Some(p) => Some(accuracy(p, &out_a[0], &out_b[0])?),
        None => None,
    };
    if let Some(dir) = &opts.save_io {
        save_io(dir, &made, &names, &out_a, &out_b)?;
    }
    Ok(Validation {
        passed: failures.is_empty(),
        min_cosine: opts.min_cosine,
        inputs: made.into_iter().map(|(d, _)| d).collect(),
        outputs,
        latency_original_ms: lat_a,
        latency_pruned_ms: lat_b,
        accuracy,
        failures,
        precision_note,
    })
}

type Pair = (Runner, Runner, Vec<(String, Tensor)>, Option<String>);

/// Loads both models in tract. An f16/f64 graph tract cannot optimise natively is retried
/// with every float widened to f32 in both models (and inputs), and the report says so.
fn load_pair(original: &Model, pruned: &Model, made: &[(InputDesc, Tensor)]) -> Result<Pair> {
    let native: Vec<(String, Tensor)> = made.iter().map(|(d, t)| (d.name.clone(), t.clone())).collect();
    let first = load_both(original, pruned, &native, prepare::Widen::Bf16);
    match first {
        Ok((a, b)) => Ok((a, b, native, bf16_note(original))),
        Err(e) if prepare::uses_narrow_or_wide_floats(original) => {
            let wide: Vec<(String, Tensor)> = native
                .iter()
                .map(|(n, t)| {
                    Ok((
                        n.clone(),
                        if t.datum_type().is_float() { t.cast_to::<f32>()?.into_owned() } else { t.clone() },
                    ))
                })
                .collect::<Result<_>>()?;
            let (a, b) = load_both(original, pruned, &wide, prepare::Widen::AllFloats)
                .with_context(|| format!("also in f32 after: {e:#}"))?;
            let note = format!("tract cannot run this graph in its own precision ({e:#}); both models were run in f32");
            Ok((a, b, wide, Some(note)))
        }
        Err(e) => Err(e),
    }
}

/// tract has no bf16: say so when bf16 tensors were widened to f32 for the comparison.
fn bf16_note(model: &Model) -> Option<String> {
    let ix = crate::onnx::walk::Index::build(&model.proto);
    let bf16 = crate::onnx::proto::tensor_proto::DataType::Bfloat16 as i32;
    ix.tensors
        .iter()
        .any(|t| t.tensor.data_type == bf16)
        .then(|| "tract has no bf16: bf16 tensors were widened to f32 in both models".to_string())
}

fn load_both(
    original: &Model,
    pruned: &Model,
    inputs: &[(String, Tensor)],
    widen: prepare::Widen,
) -> Result<(Runner, Runner)> {
    let named: Vec<(String, &Tensor)> = inputs.iter().map(|(n, t)| (n.clone(), t)).collect();
    let a = Runner::new(&prepare::for_tract(original, widen)?, &named).context("original model")?;
    let b = Runner::new(&prepare::for_tract(pruned, widen)?, &named).context("pruned model")?;
    Ok((a, b))
}

/// The input tensors in the order the runner expects.
fn ordered(r: &Runner, named: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    r.input_names()
        .iter()
        .map(|n| {
            named
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.clone())
                .with_context(|| format!("no validation input for {n:?}"))
        })
        .collect()
}

fn accuracy(labels: &Path, a: &Tensor, b: &Tensor) -> Result<Accuracy> {
    let arr = npy::read_npy(labels)?;
    let l: Vec<usize> = metrics::values(&inputs::array_to_tensor(&arr)?)?.iter().map(|&v| v as usize).collect();
    let last = *a.shape().last().unwrap_or(&1);
    let (pa, pb) = (metrics::argmaxes(&metrics::values(a)?, last), metrics::argmaxes(&metrics::values(b)?, last));
    if pa.len() != l.len() {
        bail!("{} holds {} labels but the first output has {} predictions", labels.display(), l.len(), pa.len());
    }
    let hit = |p: &[usize]| p.iter().zip(&l).filter(|(x, y)| x == y).count() as f64 / l.len().max(1) as f64;
    Ok(Accuracy { samples: l.len(), original: hit(&pa), pruned: hit(&pb) })
}

fn save_io(dir: &Path, made: &[(InputDesc, Tensor)], names: &[String], a: &[Tensor], b: &[Tensor]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut index = serde_json::Map::new();
    for (i, (d, t)) in made.iter().enumerate() {
        npy::write_npy(&dir.join(format!("input_{i}.npy")), &inputs::tensor_to_array(t)?)?;
        index.insert(format!("input_{i}"), d.name.clone().into());
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        npy::write_npy(&dir.join(format!("original_output_{i}.npy")), &inputs::tensor_to_array(x)?)?;
        npy::write_npy(&dir.join(format!("pruned_output_{i}.npy")), &inputs::tensor_to_array(y)?)?;
        index.insert(format!("output_{i}"), names.get(i).cloned().unwrap_or_default().into());
    }
    std::fs::write(dir.join("io.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(())
}
