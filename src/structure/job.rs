//! The structured jobs end to end: analyse → (calibrate) → score → EMP → (guard) → remove →
//! save → validate, with a report of every structure group, parameters, MACs and file sizes
//! before and after.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::plan::{decide, StructConfig, StructureReport};
use super::score::{self, Norm, Values};
use super::{Analysis, Level};
use crate::guard::{self, GuardReport};
use crate::onnx::load::Model;
use crate::onnx::proto::ModelProto;
use crate::onnx::save;
use crate::onnx::walk::Index;
use crate::pipeline::Outcome;
use crate::report::{self, Report, Totals};
use crate::rewrite::remove::{self, Keeps};
use crate::validate::{self, Options};

/// Reports what structured EMP would remove; writes nothing.
pub fn inspect(path: &Path, cfg: &StructConfig) -> Result<Report> {
    let model = Model::load(path)?;
    let ix = Index::build(&model.proto);
    let planned = plan(&model, &ix, cfg)?;
    let (_, report) = build(&model, cfg, planned, "inspect", None)?;
    Ok(report)
}

/// Removes structures from `path` into `out`, then validates unless `validation` is `None`.
/// With `cfg.guard`, groups whose removal breaks validation are found first and kept whole.
pub fn prune(path: &Path, out: &Path, cfg: &StructConfig, validation: Option<&Options>) -> Result<Outcome> {
    let model = Model::load(path)?;
    let ix = Index::build(&model.proto);
    let mut planned = plan(&model, &ix, cfg)?;
    let guard = match (cfg.guard, validation) {
        (true, Some(opts)) => Some(guard_groups(&model, &mut planned, opts)?),
        (true, None) => bail!("--guard needs validation (drop --no-validate)"),
        (false, _) => None,
    };
    let (proto, mut report) = build(&model, cfg, planned, "prune", Some(out))?;
    report.guard = guard;
    let inputs = crate::pipeline::protected_inputs(&model)?;
    let saved = save::save(proto, &model.external, out, &inputs)?;
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

/// The analysis and what EMP decided for it.
struct Planned {
    analysis: Analysis,
    keeps: Keeps,
    structures: Vec<StructureReport>,
    notes: Vec<String>,
}

/// Analysis, (calibration,) scores and EMP decisions.
fn plan(model: &Model, ix: &Index, cfg: &StructConfig) -> Result<Planned> {
    let analysis = super::analyse(ix, &model.external, cfg.level);
    let mut values = Values::new(model, ix);
    if cfg.norm == Norm::Wanda {
        values.set_wanda(score::calibrate(model, ix, &analysis, &cfg.calib)?);
    }
    let (keeps, structures, notes) = decide(&mut values, &analysis, cfg)?;
    Ok(Planned { analysis, keeps, structures, notes })
}

/// A copy of the model with the structures `keeps` drops removed.
fn removed(model: &Model, a: &Analysis, keeps: &Keeps) -> Result<ModelProto> {
    let mut proto = model.proto.clone();
    remove::remove(&mut proto, &model.external, a, keeps)?;
    Ok(proto)
}

/// The validation guard over structure groups: the units are the groups that lose
/// structures; a culprit group is restored whole (its row is marked as kept by the guard).
fn guard_groups(model: &Model, p: &mut Planned, opts: &Options) -> Result<GuardReport> {
    let quick = guard::quick(opts);
    let units: Vec<usize> = p.keeps.iter().enumerate().filter(|(_, k)| k.is_some()).map(|(i, _)| i).collect();
    let subset = |set: &[usize]| -> Keeps {
        let mut k: Keeps = vec![None; p.keeps.len()];
        set.iter().for_each(|&u| k[units[u]] = p.keeps[units[u]].clone());
        k
    };
    let params_of = |keeps: &Keeps| -> Result<u64> {
        Ok(cost(&Model::from_proto(removed(model, &p.analysis, keeps)?, model.external.dir()))?.0)
    };
    let found = {
        let mut passes = |set: &[usize]| -> Result<bool> {
            let candidate = Model::from_proto(removed(model, &p.analysis, &subset(set))?, model.external.dir());
            Ok(validate::validate(model, &candidate, &quick).context("guard validation")?.passed)
        };
        guard::search(units.len(), &mut passes, &|u| format!("structure group {:?}", p.structures[units[u]].producer))?
    };
    let original = cost(model)?.0;
    let before = params_of(&p.keeps)?;
    let after = params_of(&subset(&found.active))?;
    let restored: Vec<String> = found.restored.iter().map(|&u| p.structures[units[u]].producer.clone()).collect();
    for &u in &found.restored {
        let g = units[u];
        p.keeps[g] = None;
        let row = &mut p.structures[g];
        (row.kept, row.removed, row.s_eff) = (row.n, vec![], 1.0);
        row.blocked = Some("restored whole by --guard (validation failed with it pruned)".into());
    }
    Ok(GuardReport {
        restored,
        sparsity_before: report::sparsity(before as usize, original as usize),
        sparsity_after: report::sparsity(after as usize, original as usize),
        params_before: Some(before),
        params_after: Some(after),
        validations: found.validations,
        passed: found.passed,
    })
}

/// Removal and the report so far (before saving).
fn build(
    model: &Model,
    cfg: &StructConfig,
    planned: Planned,
    command: &str,
    out: Option<&Path>,
) -> Result<(ModelProto, Report)> {
    let proto = removed(model, &planned.analysis, &planned.keeps)?;
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
        notes: planned.notes,
        level: Some(match cfg.level {
            Level::Channel => "channel".into(),
            Level::Head => "head".into(),
        }),
        structures: planned.structures,
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
