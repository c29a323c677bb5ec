//! Running a prepared model with tract: load, pin input facts, optimise, run, time.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tract_onnx::prelude::*;

/// A model ready to run on the validation inputs.
pub struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
}

impl Runner {
    /// Loads a serialized model and fixes its inputs to the given tensors' types and shapes.
    pub fn new(bytes: &[u8], inputs: &[(String, &Tensor)]) -> Result<Self> {
        // tract 0.23 can panic on ops it misreads (e.g. it takes com.microsoft.Attention for
        // the ONNX Attention op): turn that into an error instead of crashing.
        no_panic("loading the model", || Self::load(bytes, inputs))
    }

    fn load(bytes: &[u8], inputs: &[(String, &Tensor)]) -> Result<Self> {
        let mut model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow!("tract cannot load the model: {e:#}"))?;
        let outlets = model.input_outlets()?.to_vec();
        for (i, outlet) in outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| anyhow!("tract expects an input {name:?} that the validation inputs lack"))?;
            model.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
        }
        let plan =
            model.into_optimized().map_err(|e| anyhow!("tract cannot optimise the model: {e:#}"))?.into_runnable()?;
        Ok(Self { plan })
    }

    /// Names of the model inputs in the order `run` expects them.
    pub fn input_names(&self) -> Vec<String> {
        let m = self.plan.model();
        m.input_outlets().map(|o| o.iter().map(|o| m.node(o.node).name.clone()).collect()).unwrap_or_default()
    }

    /// Runs once.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        no_panic("running the model", || self.run_once(inputs))
    }

    fn run_once(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let values: TVec<TValue> = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
        let out = self.plan.run(values).map_err(|e| anyhow!("tract failed to run the model: {e:#}"))?;
        Ok(out.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// Runs `runs` more times after the first and returns the outputs of the first run and the
    /// median latency in milliseconds.
    pub fn run_timed(&self, inputs: &[Tensor], runs: usize) -> Result<(Vec<Tensor>, f64)> {
        let out = self.run(inputs).context("first run")?;
        let mut times = vec![];
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            self.run(inputs)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok((out, times[times.len() / 2]))
    }
}

/// Runs `f`, converting a panic inside tract into a one-line error (the default panic
/// message is silenced meanwhile so stderr keeps one line per error).
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(anyhow!("tract panicked while {what}: {}", msg.unwrap_or_else(|| "unknown panic".into())))
    })
}
