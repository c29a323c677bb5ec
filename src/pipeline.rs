//! The three jobs end to end — inspect, prune, validate — as library calls the CLI wraps.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::onnx::load::Model;
use crate::onnx::output::{Discard, Sink, ToVec};
use crate::onnx::proto::ModelProto;
use crate::onnx::save;
use crate::onnx::tensor::{self, Storage};
use crate::onnx::walk::{visit_tensors_mut, Index};
use crate::prune::{self, Config, Plan, Planned, WeightCut};
use crate::report::{self, Report, TensorReport, Totals, ValidateReport};
use crate::rewrite::zero::{self, Counts};
use crate::validate::{self, Options};
use crate::weights::Weight;

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
    let counts: Vec<Counts> =
        plan.weights.par_iter().map(|p| zero::zero(&model, &ix, p, cfg.criterion, &Discard)).collect::<Result<_>>()?;
    let before = input_bytes(&model);
    Ok(build_report("inspect", &model, None, cfg, &mut plan, &counts, before, before))
}

/// Prunes `path` into `out` (dense format), then validates unless `validation` is `None`.
/// Weights are rewritten in parallel, each straight into its place in the output files.
pub fn prune_file(path: &Path, out: &Path, cfg: &Config, validation: Option<&Options>) -> Result<Outcome> {
    prune_file_with(path, out, cfg, validation, &Output::default())
}

/// How [`prune_file_with`] writes and checks its output, beyond [`prune_file`]'s defaults.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// `--format sparse`: weights whose sparse encoding is smaller become `SparseTensorProto`s.
    pub sparse: bool,
    /// `--guard`: when validation fails, restore the responsible weights dense (needs validation).
    pub guard: bool,
}

/// [`prune_file`] with an output format and the validation guard.
///
/// Local scopes (`tensor`, `row`) writing dense output without the guard decide each weight
/// as the save rewrites it, so planning overlaps writing and each weight's passes run back to
/// back; everything else is planned up front.
pub fn prune_file_with(
    path: &Path,
    out: &Path,
    cfg: &Config,
    validation: Option<&Options>,
    how: &Output,
) -> Result<Outcome> {
    let model = Model::load(path)?;
    let ix = Index::build(&model.proto);
    if how.guard && validation.is_none() {
        anyhow::bail!("--guard needs validation (drop --no-validate)");
    }
    let on_the_fly = cfg.scope.is_local() && !how.sparse && !how.guard;
    let Written { mut plan, counts, saved, converted, guard } = match on_the_fly {
        true => write_deciding(&model, &ix, out, cfg)?,
        false => write_planned(&model, &ix, out, cfg, validation, how)?,
    };
    let before = input_bytes(&model);
    let after = saved.model_bytes + saved.data_bytes;
    let mut report = build_report("prune", &model, Some(out), cfg, &mut plan, &counts, before, after);
    if let Some(c) = &converted {
        record_formats(&mut report, &plan, c);
    }
    if guard.as_ref().is_some_and(|g| !g.restored.is_empty()) {
        report.notes.push("guard: the EMP groups show the planned cut; restored weights were written whole".into());
    }
    report.guard = guard;
    if saved.externalized_for_size > 0 {
        report
            .notes
            .push(format!("{} tensors moved to external data to stay under 2 GiB", saved.externalized_for_size));
    }
    let mut passed = true;
    if let Some(opts) = validation {
        let v = Model::load(out)
            .context("reloading the written model")
            .and_then(|pruned| validate::validate(&model, &pruned, opts))
            .inspect_err(|_| save::discard(out))?;
        passed = v.passed;
        report.validation = Some(v);
    }
    Ok(Outcome { report, passed })
}

/// What writing the output produced: the plan as applied, each weight's counts, the files.
struct Written {
    plan: Plan,
    counts: Vec<Counts>,
    saved: save::Saved,
    converted: Option<crate::rewrite::sparse::Converted>,
    guard: Option<crate::guard::GuardReport>,
}

/// Local scope, dense output: each weight is decided inside its rewrite task, then the
/// decisions are assembled into the plan (groups numbered in weight order).
fn write_deciding(model: &Model, ix: &Index, out: &Path, cfg: &Config) -> Result<Written> {
    let sel = prune::select(model, ix, cfg)?;
    let decided: Mutex<Vec<Option<Decided>>> = Mutex::new(vec![None; sel.weights.len()]);
    let rewrite = |i: usize, sink: &dyn Sink| -> Result<Counts> {
        let (groups, cut) = prune::decide(model, ix, cfg, &sel.weights[i])?;
        let p = Planned { weight: sel.weights[i].clone(), cut };
        let done = zero::zero(model, ix, &p, cfg.criterion, sink)?;
        if let Ok(mut d) = decided.lock() {
            d[i] = Some((groups, p.cut));
        }
        Ok(done)
    };
    let empty = vec![None; sel.weights.len()];
    let (counts, saved) = write(model, ix, out, &sel.weights, &rewrite, model.proto.clone(), empty, None)?;
    let decided = decided.into_inner().map_err(|_| anyhow::anyhow!("internal error: a rewrite task panicked"))?;
    // Every weight was rewritten, so every one was decided; deciding a missing one keeps this total.
    let decided: Vec<Decided> = decided
        .into_iter()
        .zip(&sel.weights)
        .map(|(d, w)| d.map_or_else(|| prune::decide(model, ix, cfg, w), Ok))
        .collect::<Result<_>>()?;
    let (plan, offsets) = prune::assemble(sel, decided, cfg.criterion);
    let counts = counts.into_iter().zip(offsets).map(|(c, o)| c.renumbered(o)).collect();
    Ok(Written { plan, counts, saved, converted: None, guard: None })
}

/// Every other case: plan every cut first (global scope, the guard and sparse output need the
/// whole plan), run the guard, convert to sparse if asked, then write.
fn write_planned(
    model: &Model,
    ix: &Index,
    out: &Path,
    cfg: &Config,
    validation: Option<&Options>,
    how: &Output,
) -> Result<Written> {
    let spinner = crate::progress::spinner("planning");
    let mut plan = prune::plan(model, ix, cfg)?;
    spinner.finish_and_clear();
    let guard = match validation {
        Some(opts) if how.guard => Some(crate::guard::run(model, ix, &mut plan, cfg.criterion, opts)?),
        _ => None,
    };
    let weights: Vec<Weight> = plan.weights.iter().map(|p| p.weight.clone()).collect();
    let rewrite = |i: usize, sink: &dyn Sink| zero::zero(model, ix, &plan.weights[i], cfg.criterion, sink);
    let mut counts: Vec<Option<Counts>> = vec![None; plan.weights.len()];
    let mut proto = model.proto.clone();
    let converted = match how.sparse {
        true => {
            // Every inline weight is zeroed in place first; sparsify reads them from `proto`.
            rewrite_inline(&weights, &rewrite, &mut proto, &mut counts, &vec![false; weights.len()])?;
            Some(sparsify(model, ix, &plan, cfg, &ids(&weights), &mut proto, &mut counts)?)
        }
        false => None,
    };
    let (counts, saved) = write(model, ix, out, &weights, &rewrite, proto, counts, converted.as_ref())?;
    Ok(Written { plan, counts, saved, converted, guard })
}

/// One weight's EMP groups (numbered from 0) and cut.
type Decided = (Vec<prune::Group>, WeightCut);

/// Rewrites weight `i` (dense) into a sink: its counts.
type Rewrite<'a> = dyn Fn(usize, &dyn Sink) -> Result<Counts> + Sync + 'a;

/// Index of each weight by tensor id.
fn ids(weights: &[Weight]) -> HashMap<usize, usize> {
    weights.iter().enumerate().map(|(i, w)| (w.id, i)).collect()
}

/// Writes the output: weights not rewritten in place (see [`in_place_weights`]) are rewritten into
/// `proto` first (with `sparse`, the caller already rewrote and converted them); the others
/// are rewritten by the pool straight into the output files as the save reaches them.
/// Returns every weight's counts.
#[allow(clippy::too_many_arguments)]
fn write(
    model: &Model,
    ix: &Index,
    out: &Path,
    weights: &[Weight],
    rewrite: &Rewrite,
    mut proto: ModelProto,
    mut counts: Vec<Option<Counts>>,
    sparse: Option<&crate::rewrite::sparse::Converted>,
) -> Result<(Vec<Counts>, save::Saved)> {
    let in_place = if sparse.is_some() { vec![false; weights.len()] } else { in_place_weights(ix, weights) };
    if sparse.is_none() {
        rewrite_inline(weights, rewrite, &mut proto, &mut counts, &in_place)?;
    }
    let by_id = ids(weights);
    let weight_of =
        |id: usize| sparse.map_or(Some(id), |c| c.remap.get(id).copied()).and_then(|w| by_id.get(&w).copied());
    let targets = save_targets(&mut proto, &in_place, &weight_of)?;
    let inputs = protected_inputs(model)?;
    let counts = Mutex::new(counts);
    let bytes_of = |w: &Weight| (w.numel() * w.dtype.size()) as u64;
    let bar = crate::progress::bytes(weights.iter().map(bytes_of).sum(), "pruning");
    let fill = |id: usize, sink: &dyn Sink| -> Result<()> {
        let i = weight_of(id).ok_or_else(|| anyhow::anyhow!("internal error: tensor {id} is not a weight"))?;
        let c = rewrite(i, sink)?;
        bar.inc(bytes_of(&weights[i]));
        if let Ok(mut counts) = counts.lock() {
            counts[i] = Some(c);
        }
        Ok(())
    };
    let saved = save::save_with(proto, &model.external, out, &inputs, &targets, &fill)?;
    bar.finish_and_clear();
    let counts = counts.into_inner().map_err(|_| anyhow::anyhow!("internal error: a rewrite task panicked"))?;
    Ok((counts.into_iter().map(Option::unwrap_or_default).collect(), saved))
}

/// The tensors the save asks `rewrite` for, in place: weights still stored externally, and
/// the ones rewritten in place (`in_place`, by weight index).
fn save_targets(
    proto: &mut ModelProto,
    in_place: &[bool],
    weight_of: &dyn Fn(usize) -> Option<usize>,
) -> Result<HashSet<usize>> {
    let mut set = HashSet::new();
    visit_tensors_mut(proto, &mut |id, t| {
        if let Some(i) = weight_of(id) {
            if tensor::storage(t) == Storage::External || in_place[i] {
                set.insert(id);
            }
        }
        Ok(())
    })?;
    Ok(set)
}

/// Which planned weights are rewritten in place in the output (dense): main-graph
/// initializers stored in `raw_data`, whose rewritten bytes keep their size. Constant values,
/// subgraph tensors and typed fields are rewritten up front by [`rewrite_inline`].
fn in_place_weights(ix: &Index, weights: &[Weight]) -> Vec<bool> {
    weights
        .iter()
        .map(|w| {
            let e = &ix.tensors[w.id];
            e.graph == 0 && e.site == crate::onnx::walk::Site::Initializer && w.storage == Storage::Raw
        })
        .collect()
}

/// Rewrites every inline weight not rewritten in place (in parallel) into `proto`.
fn rewrite_inline(
    weights: &[Weight],
    rewrite: &Rewrite,
    proto: &mut ModelProto,
    counts: &mut [Option<Counts>],
    in_place: &[bool],
) -> Result<()> {
    let done: Vec<(usize, Vec<u8>, Counts)> = (0..weights.len())
        .into_par_iter()
        .filter(|&i| weights[i].storage != Storage::External && !in_place[i])
        .map(|i| {
            let sink = ToVec::new(weights[i].numel() * weights[i].dtype.size());
            rewrite(i, &sink).map(|c| (i, sink.into_inner(), c))
        })
        .collect::<Result<_>>()?;
    let mut data: HashMap<usize, bytes::Bytes> = HashMap::new();
    for (i, b, c) in done {
        data.insert(weights[i].id, b.into());
        counts[i] = Some(c);
    }
    visit_tensors_mut(proto, &mut |id, t| {
        if let Some(b) = data.remove(&id) {
            tensor::set_raw(t, b);
        }
        Ok(())
    })
}

/// Converts the planned weights to sparse tensors where that is smaller (after the dense
/// edits, before saving). External weights are zeroed here, one at a time.
#[allow(clippy::too_many_arguments)]
fn sparsify(
    model: &Model,
    ix: &Index,
    plan: &Plan,
    cfg: &Config,
    by_id: &HashMap<usize, usize>,
    proto: &mut ModelProto,
    counts: &mut [Option<Counts>],
) -> Result<crate::rewrite::sparse::Converted> {
    crate::rewrite::sparse::sparsify(proto, &mut |id, t| {
        let Some(&i) = by_id.get(&id) else { return Ok(None) };
        if plan.weights[i].weight.storage != Storage::External {
            return Ok(Some(tensor::element_bytes(t, &model.external)?));
        }
        let (data, c) = zero::zero_to_bytes(model, ix, &plan.weights[i], cfg.criterion)?;
        counts[i] = Some(c);
        Ok(Some(data))
    })
}

/// Fills in each weight's written format and the bytes the sparse form saved.
fn record_formats(report: &mut Report, plan: &Plan, c: &crate::rewrite::sparse::Converted) {
    for (t, p) in report.tensors.iter_mut().zip(&plan.weights) {
        let Some(o) = c.outcomes.get(&p.weight.id) else { continue };
        if o.sparse {
            t.format = "sparse".into();
            t.bytes_saved = o.bytes_saved;
        }
        if let Some(n) = &o.note {
            report.notes.push(n.clone());
        }
    }
    report.format = "sparse".into();
    report.totals = Totals::from_tensors(&report.tensors, report.totals.bytes_before, report.totals.bytes_after);
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
pub fn protected_inputs(model: &Model) -> Result<Vec<std::path::PathBuf>> {
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
pub fn input_bytes(model: &Model) -> u64 {
    let own = model.path.canonicalize().ok();
    let data: u64 = protected_inputs(model)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.canonicalize().ok() != own) // the model file itself, counted below
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
                format: "dense".into(),
                bytes_saved: 0,
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
        guard: None,
        notes,
        level: None,
        structures: vec![],
    }
}
