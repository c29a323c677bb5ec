//! The three jobs end to end — inspect, prune, validate — as library calls the CLI wraps.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use rayon::prelude::*;

use crate::onnx::load::Model;
use crate::onnx::proto::ModelProto;
use crate::onnx::save;
use crate::onnx::tensor::{self, Storage};
use crate::onnx::walk::{visit_tensors_mut, Index};
use crate::prune::{self, Config, Plan};
use crate::report::{self, Report, TensorReport, Totals, ValidateReport};
use crate::rewrite::zero::{self, Counts};
use crate::validate::{self, Options};

/// A report and whether the job succeeded (validation passed, or was not asked for).
pub struct Outcome {
    pub report: Report,
    pub passed: bool,
}

/// Plans the pass and reports what EMP would do; writes nothing.
pub fn inspect(path: &Path, cfg: &Config) -> Result<Report> {
    let model = Model::load(path)?;
    let ix = Index::build(&model.proto);
    let mut plan = prune::plan(&model, &ix, cfg)?;
    let counts: Vec<Counts> = plan
        .weights
        .par_iter()
        .map(|p| zero::zero(&model, &ix, p, cfg.criterion).map(|(_, c)| c))
        .collect::<Result<_>>()?;
    let before = input_bytes(&model);
    Ok(build_report("inspect", &model, None, cfg, &mut plan, &counts, before, before))
}

/// Prunes `path` into `out` (dense format), then validates unless `validation` is `None`.
/// Inline weights are rewritten in parallel; external ones stream from the input's data file
/// to the output's, one tensor at a time.
pub fn prune_file(path: &Path, out: &Path, cfg: &Config, validation: Option<&Options>) -> Result<Outcome> {
    let model = Model::load(path)?;
    let ix = Index::build(&model.proto);
    let mut plan = prune::plan(&model, &ix, cfg)?;
    let mut counts: Vec<Option<Counts>> = vec![None; plan.weights.len()];
    let mut proto = model.proto.clone();
    rewrite_inline(&model, &ix, &plan, cfg, &mut proto, &mut counts)?;
    let by_id: HashMap<usize, usize> = plan.weights.iter().enumerate().map(|(i, p)| (p.weight.id, i)).collect();
    let inputs = protected_inputs(&model)?;
    let saved = save::save(proto, &model.external, out, &inputs, &mut |id| {
        let Some(&i) = by_id.get(&id) else { return Ok(None) };
        let (data, c) = zero::zero(&model, &ix, &plan.weights[i], cfg.criterion)?;
        counts[i] = Some(c);
        Ok(Some(data))
    })?;
    let counts: Vec<Counts> = counts.into_iter().map(Option::unwrap_or_default).collect();
    let before = input_bytes(&model);
    let after = saved.model_bytes + saved.data_bytes;
    let mut report = build_report("prune", &model, Some(out), cfg, &mut plan, &counts, before, after);
    if saved.externalized_for_size > 0 {
        report
            .notes
            .push(format!("{} tensors moved to external data to stay under 2 GiB", saved.externalized_for_size));
    }
    let mut passed = true;
    if let Some(opts) = validation {
        let pruned = Model::load(out).context("reloading the written model")?;
        let v = validate::validate(&model, &pruned, opts)?;
        passed = v.passed;
        report.validation = Some(v);
    }
    Ok(Outcome { report, passed })
}

/// Zeroes every inline weight (in parallel) and writes the result into `proto`.
fn rewrite_inline(
    model: &Model,
    ix: &Index,
    plan: &Plan,
    cfg: &Config,
    proto: &mut ModelProto,
    counts: &mut [Option<Counts>],
) -> Result<()> {
    let done: Vec<(usize, Bytes, Counts)> = plan
        .weights
        .par_iter()
        .enumerate()
        .filter(|(_, p)| p.weight.storage != Storage::External)
        .map(|(i, p)| zero::zero(model, ix, p, cfg.criterion).map(|(b, c)| (i, b, c)))
        .collect::<Result<_>>()?;
    let mut data: HashMap<usize, Bytes> = HashMap::new();
    for (i, b, c) in done {
        data.insert(plan.weights[i].weight.id, b);
        counts[i] = Some(c);
    }
    visit_tensors_mut(proto, &mut |id, t| {
        if let Some(b) = data.remove(&id) {
            tensor::set_raw(t, b);
        }
        Ok(())
    })
}

/// Compares two model files.
pub fn validate_files(a: &Path, b: &Path, opts: &Options) -> Result<ValidateReport> {
    let original = Model::load(a)?;
    let pruned = Model::load(b)?;
    let validation = validate::validate(&original, &pruned, opts)?;
    Ok(ValidateReport {
        tool: report::tool(),
        command: "validate".into(),
        original: a.display().to_string(),
        pruned: b.display().to_string(),
        validation,
    })
}

/// The input model file and every data file it references (none of them may be overwritten).
fn protected_inputs(model: &Model) -> Result<Vec<std::path::PathBuf>> {
    let ix = Index::build(&model.proto);
    let mut files = vec![model.path.clone()];
    for e in &ix.tensors {
        if tensor::storage(e.tensor) == Storage::External {
            let r = crate::onnx::external::ExternalRef::parse(e.tensor)?;
            files.push(model.external.resolve(&r.location)?);
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Model file plus the external data files it references.
fn input_bytes(model: &Model) -> u64 {
    let data: u64 = protected_inputs(model)
        .unwrap_or_default()
        .iter()
        .skip(1) // the model file itself, counted below
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    model.file_size + data
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    command: &str,
    model: &Model,
    out: Option<&Path>,
    cfg: &Config,
    plan: &mut Plan,
    counts: &[Counts],
    before: u64,
    after: u64,
) -> Report {
    let kept: Vec<_> = counts.iter().flat_map(|c| c.kept.iter().copied()).collect();
    plan.settle(&kept);
    let tensors: Vec<TensorReport> = plan
        .weights
        .iter()
        .zip(counts)
        .map(|(p, z)| {
            let w = &p.weight;
            TensorReport {
                name: w.name.clone(),
                op: w.op.clone(),
                node: w.node.clone(),
                graph: w.graph.clone(),
                shape: w.shape.clone(),
                dtype: w.dtype.name().into(),
                storage: format!("{:?}", w.storage).to_lowercase(),
                n: w.numel(),
                nonzero_before: z.nonzero_before,
                kept: z.nonzero_after,
                sparsity: report::sparsity(z.nonzero_after, w.numel()),
            }
        })
        .collect();
    let totals = Totals::from_tensors(&tensors, before, after);
    let mut notes = vec![];
    let zero_groups = plan.groups.iter().filter(|g| g.n_eff.is_none()).count();
    if zero_groups > 0 {
        notes.push(format!("{zero_groups} score vectors were all zero and were left as they are"));
    }
    Report {
        tool: report::tool(),
        command: command.into(),
        model: model.path.display().to_string(),
        output: out.map(|o| o.display().to_string()),
        criterion: cfg.criterion.name().into(),
        scope: cfg.scope.name().into(),
        beta: cfg.beta,
        format: "dense".into(),
        groups: std::mem::take(&mut plan.groups),
        tensors,
        skipped: std::mem::take(&mut plan.skipped),
        totals,
        validation: None,
        notes,
    }
}
