//! The structured jobs end to end: analyse → score → EMP → remove → save → validate, with a
//! report of every structure group, parameters, MACs and file sizes before and after.

use std::path::Path;

use anyhow::{Context, Result};

use super::plan::{decide, StructConfig};
use super::score::Values;
use super::Level;
use crate::onnx::load::Model;
use crate::onnx::save;
use crate::onnx::walk::Index;
use crate::pipeline::Outcome;
use crate::report::{self, Report, Totals};
use crate::rewrite::remove;
use crate::validate::{self, Options};

/// Reports what structured EMP would remove; writes nothing.
pub fn inspect(path: &Path, cfg: &StructConfig) -> Result<Report> {
    let model = Model::load(path)?;
    let (proto, report) = run(&model, cfg, "inspect", None)?;
    drop(proto);
    Ok(report)
}

/// Removes structures from `path` into `out`, then validates unless `validation` is `None`.
pub fn prune(path: &Path, out: &Path, cfg: &StructConfig, validation: Option<&Options>) -> Result<Outcome> {
    let model = Model::load(path)?;
    let (proto, mut report) = run(&model, cfg, "prune", Some(out))?;
    let inputs = crate::pipeline::protected_inputs(&model)?;
    let saved = save::save(proto, &model.external, out, &inputs, &mut |_| Ok(None))?;
    report.totals.bytes_after = saved.model_bytes + saved.data_bytes;
    let pruned = Model::load(out).context("reloading the written model").inspect_err(|_| save::discard(out))?;
    fill_after(&mut report, &pruned).inspect_err(|_| save::discard(out))?;
    let mut passed = true;
    if let Some(opts) = validation {
        let v = validate::validate(&model, &pruned, opts).inspect_err(|_| save::discard(out))?;
        passed = v.passed;
        report.validation = Some(v);
    }
    Ok(Outcome { report, passed })
}

/// Analysis, decision and removal in memory: the rewritten model and the report so far.
fn run(
    model: &Model,
    cfg: &StructConfig,
    command: &str,
    out: Option<&Path>,
) -> Result<(crate::onnx::proto::ModelProto, Report)> {
    let ix = Index::build(&model.proto);
    let analysis = super::analyse(&ix, &model.external, cfg.level);
    let mut values = Values::new(model, &ix);
    let (keeps, structures, notes) = decide(&mut values, &analysis, cfg)?;
    let mut proto = model.proto.clone();
    remove::remove(&mut proto, &model.external, &analysis, &keeps)?;
    let (params, macs) = cost(model)?;
    let mut report = Report {
        tool: report::tool(),
        command: command.into(),
        model: model.path.display().to_string(),
        output: out.map(|o| o.display().to_string()),
        criterion: format!("{:?}", cfg.norm).to_lowercase(),
        scope: if cfg.global { "global" } else { "layer" }.into(),
        beta: cfg.beta,
        format: "structured".into(),
        groups: vec![],
        tensors: vec![],
        skipped: vec![],
        totals: Totals::from_tensors(&[], crate::pipeline::input_bytes(model), crate::pipeline::input_bytes(model)),
        validation: None,
        guard: None,
        notes,
        level: Some(match cfg.level {
            Level::Channel => "channel".into(),
            Level::Head => "head".into(),
        }),
        structures,
    };
    report.totals.params = params as usize;
    report.totals.macs_before = Some(macs);
    let after = Model::from_proto(proto.clone(), model.external.dir());
    fill_after(&mut report, &after)?;
    Ok((proto, report))
}

/// Parameters (all float constants) and dense MACs of a model.
fn cost(model: &Model) -> Result<(u64, u64)> {
    let ix = Index::build(&model.proto);
    let stats = crate::diff::tensors::stats(model, &ix)?;
    let params = stats.iter().filter(|t| t.stat.is_float).map(|t| t.stat.n).sum();
    Ok((params, crate::diff::cost::macs(&ix, &stats).dense))
}

/// Parameters and MACs after removal, and the totals derived from them.
fn fill_after(report: &mut Report, after: &Model) -> Result<()> {
    let (params, macs) = cost(after)?;
    let before = report.totals.params;
    report.totals.kept = params as usize;
    report.totals.sparsity = report::sparsity(params as usize, before);
    report.totals.macs_after = Some(macs);
    Ok(())
}
