//! Calibration statistics for activation-aware scores: runs the ORIGINAL model with tract on
//! the calibration arrays (`--calib NAME=FILE.npy|.npz`) with the input activation of every
//! prunable weight's consumer selected as an extra output (before optimisation), and
//! accumulates per input feature `Σ x²` in f64 over every sample and position (for a Conv:
//! per input channel over batch and spatial positions), streaming over batches so memory stays
//! bounded by one batch's activations. The result is `‖X_j‖₂` per feature, per activation.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tract_onnx::prelude::*;

use crate::onnx::load::Model;
use crate::onnx::walk::Index;
use crate::validate::inputs::{self, InputSpec};
use crate::validate::prepare::{self, Widen};
use crate::weights::Weight;

/// Samples per tract run (the calibration arrays are split along axis 0).
pub const BATCH: usize = 32;

/// Where the calibration data comes from: `--calib NAME=FILE.npy`, `NAME=FILE.npz` or a bare
/// `FILE.npz` holding one array per model input (batch along axis 0).
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub files: Vec<(Option<String>, PathBuf)>,
}

impl Calibration {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Per-feature `‖X_j‖₂` for each activation value name.
pub type Norms = HashMap<String, Vec<f64>>;

/// Runs the calibration and returns the norms of every activation the weights need.
pub fn collect(model: &Model, ix: &Index, weights: &[Weight], calib: &Calibration) -> Result<Norms> {
    if calib.is_empty() {
        bail!(
            "--criterion wanda needs calibration data: pass --calib NAME=FILE.npy (or FILE.npz); \
             activation statistics of random inputs are meaningless"
        );
    }
    let wanted = activations(ix, weights)?;
    if wanted.is_empty() {
        return Ok(Norms::new());
    }
    let spec = InputSpec { files: calib.files.clone(), ..Default::default() };
    let made = inputs::make(model.graph(), &spec).context("calibration data")?;
    if let Some((d, _)) = made.iter().find(|(d, _)| d.source == "random") {
        bail!(
            "--calib gives no array for model input {:?}; every input needs calibration data \
             (activation statistics of random inputs are meaningless)",
            d.name
        );
    }
    let samples = batch_len(&made)?;
    let names: Vec<String> = wanted.iter().map(|(v, _)| v.clone()).collect();
    let mut sums: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut runners: HashMap<usize, (Runnable, Widen)> = HashMap::new();
    let mut start = 0;
    while start < samples {
        let end = (start + BATCH).min(samples);
        let batch: Vec<(String, Tensor)> =
            made.iter().map(|(d, t)| Ok((d.name.clone(), t.slice(0, start, end)?))).collect::<TractResult<_>>()?;
        if let std::collections::hash_map::Entry::Vacant(e) = runners.entry(end - start) {
            e.insert(runner(model, &batch, &names)?);
        }
        let (r, widen) = &runners[&(end - start)];
        let outs = run(r, *widen, &batch).with_context(|| format!("calibration samples {start}..{end}"))?;
        for (k, t) in outs.iter().enumerate() {
            accumulate(&mut sums[k], t, wanted[k].1).with_context(|| format!("activation {:?}", names[k]))?;
        }
        start = end;
    }
    eprintln!("emprune: calibrated {} activations on {samples} samples", names.len());
    Ok(names.into_iter().zip(sums).map(|(n, s)| (n, s.into_iter().map(f64::sqrt).collect())).collect())
}

/// Attaches each weight's activation norms (`act_norms`).
pub fn attach(weights: &mut [Weight], norms: &Norms) -> Result<()> {
    for w in weights.iter_mut() {
        let act = w.activation.as_ref().ok_or_else(|| no_activation(w))?;
        let n = norms.get(&act.value).ok_or_else(|| anyhow!("no statistics for activation {:?}", act.value))?;
        w.act_norms = Some(std::sync::Arc::new(n.clone()));
    }
    Ok(())
}

fn no_activation(w: &Weight) -> anyhow::Error {
    anyhow!(
        "weight {:?} ({} node {:?}) multiplies no ONNX value wanda can measure (e.g. a recurrent \
         state); exclude it with --exclude",
        w.name,
        w.op,
        w.node
    )
}

/// The distinct activations to capture, with their feature axis. Values must be defined in
/// the main graph (tract cannot expose values computed inside If/Loop bodies).
fn activations(ix: &Index, weights: &[Weight]) -> Result<Vec<(String, isize)>> {
    let mut out: Vec<(String, isize)> = vec![];
    for w in weights {
        let act = w.activation.as_ref().ok_or_else(|| no_activation(w))?;
        if ix.uses(0, &act.value).is_empty() {
            bail!(
                "weight {:?}: its input {:?} is computed inside a subgraph, which tract cannot \
                 expose for calibration; exclude it with --exclude",
                w.name,
                act.value
            );
        }
        match out.iter().find(|(v, _)| *v == act.value) {
            Some((_, a)) if *a != act.act_axis => {
                bail!("activation {:?} is read with two different feature axes", act.value)
            }
            Some(_) => {}
            None => out.push((act.value.clone(), act.act_axis)),
        }
    }
    Ok(out)
}

fn batch_len(made: &[(inputs::InputDesc, Tensor)]) -> Result<usize> {
    let lens: Vec<usize> = made.iter().map(|(_, t)| t.shape().first().copied().unwrap_or(1)).collect();
    let n = lens.first().copied().unwrap_or(0);
    ensure!(n > 0, "the calibration arrays hold no samples");
    ensure!(lens.iter().all(|&l| l == n), "calibration arrays disagree on the number of samples: {lens:?}");
    Ok(n)
}

type Runnable = std::sync::Arc<TypedRunnableModel>;

/// A tract plan of the original model whose outputs are the activations `names`. Falls back
/// to every float widened to f32 when tract cannot run the model's own precision.
fn runner(model: &Model, batch: &[(String, Tensor)], names: &[String]) -> Result<(Runnable, Widen)> {
    match build(model, batch, names, Widen::Bf16) {
        Ok(r) => Ok((r, Widen::Bf16)),
        Err(e) if prepare::uses_narrow_or_wide_floats(model) => build(model, batch, names, Widen::AllFloats)
            .map(|r| (r, Widen::AllFloats))
            .with_context(|| format!("also in f32 after: {e:#}")),
        Err(e) => Err(e),
    }
}

fn build(model: &Model, batch: &[(String, Tensor)], names: &[String], widen: Widen) -> Result<Runnable> {
    let bytes = prepare::for_tract(model, widen)?;
    let mut m = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .model_for_read(&mut &bytes[..])
        .map_err(|e| anyhow!("tract cannot load the model: {e:#}"))?;
    let outlets = m.input_outlets()?.to_vec();
    for (i, outlet) in outlets.iter().enumerate() {
        let name = m.node(outlet.node).name.clone();
        let (_, t) = batch.iter().find(|(n, _)| *n == name).ok_or_else(|| anyhow!("no calibration input {name:?}"))?;
        let t = cast_input(t, widen)?;
        m.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
    }
    m.select_outputs_by_name(names).map_err(|e| anyhow!("tract cannot expose the activations: {e:#}"))?;
    let plan = m.into_optimized().map_err(|e| anyhow!("tract cannot optimise the model: {e:#}"))?.into_runnable()?;
    Ok(plan)
}

fn cast_input(t: &Tensor, widen: Widen) -> Result<Tensor> {
    Ok(if widen == Widen::AllFloats && t.datum_type().is_float() {
        t.cast_to::<f32>()?.into_owned()
    } else {
        t.clone()
    })
}

fn run(r: &Runnable, widen: Widen, batch: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    let m = r.model();
    let mut values: TVec<TValue> = tvec![];
    for o in m.input_outlets()? {
        let name = &m.node(o.node).name;
        let (_, t) = batch.iter().find(|(n, _)| n == name).ok_or_else(|| anyhow!("no calibration input {name:?}"))?;
        values.push(cast_input(t, widen)?.into_tvalue());
    }
    let out = r.run(values).map_err(|e| anyhow!("tract failed to run the model: {e:#}"))?;
    Ok(out.into_iter().map(|v| v.into_tensor()).collect())
}

/// Adds `Σ x²` per feature (along `axis`) of activation `t` to `sums`.
pub fn accumulate(sums: &mut Vec<f64>, t: &Tensor, axis: isize) -> Result<()> {
    let shape = t.shape();
    let rank = shape.len() as isize;
    let a = if rank == 1 {
        0
    } else if axis < 0 {
        rank + axis
    } else {
        axis
    };
    ensure!((0..rank.max(1)).contains(&a), "feature axis {axis} is outside its rank-{rank} shape {shape:?}");
    let a = a as usize;
    let dim = shape.get(a).copied().unwrap_or(1);
    let stride: usize = shape.get(a + 1..).map(|s| s.iter().product()).unwrap_or(1);
    if sums.is_empty() {
        *sums = vec![0.0; dim];
    }
    ensure!(sums.len() == dim, "feature axis has {dim} entries, earlier batches had {}", sums.len());
    let t = t.cast_to::<f64>()?;
    let v = t.to_plain_array_view::<f64>()?;
    for (i, &x) in v.iter().enumerate() {
        ensure!(x.is_finite(), "non-finite activation value {x}");
        sums[(i / stride.max(1)) % dim.max(1)] += x * x;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_squares_per_feature_on_the_right_axis() {
        // [N=2, C=2, 2 positions]: channel 0 holds 1,2 / 5,6; channel 1 holds 3,4 / 7,8.
        let t = Tensor::from_shape(&[2, 2, 2], &[1f32, 2., 3., 4., 5., 6., 7., 8.]).unwrap();
        let mut s = vec![];
        accumulate(&mut s, &t, 1).unwrap();
        assert_eq!(s, [1. + 4. + 25. + 36., 9. + 16. + 49. + 64.]);
        let mut s = vec![];
        accumulate(&mut s, &t, -1).unwrap();
        assert_eq!(s, [1. + 9. + 25. + 49., 4. + 16. + 36. + 64.]);
    }
}
