//! Choosing which structures survive: EMP over structure scores, per coupled group (`layer`
//! scope) or over all structures of one kind at once (`global`, the paper's GPT-2 head
//! setting). A group never loses every structure: with a global cut, a group that would keep
//! none keeps its best one (reported).

use anyhow::Result;

use super::score::{group_scores, Norm, Values};
use super::{Analysis, Group, Kind, Level};
use crate::emp::{Cut, Decision, Mass};
use crate::rewrite::remove::Keeps;

/// Everything that decides a structured pass.
#[derive(Clone, Debug)]
pub struct StructConfig {
    pub level: Level,
    pub norm: Norm,
    /// One EMP vector over all groups (otherwise one per group).
    pub global: bool,
    pub beta: f64,
    /// Calibration data for [`Norm::Wanda`] (empty otherwise).
    pub calib: crate::score::calib::Calibration,
    /// `--guard`: when validation fails, restore the groups responsible whole.
    pub guard: bool,
}

/// What EMP decided for one structure group.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StructureReport {
    pub kind: Kind,
    /// The producing node(s) of the group (coupled producers joined by `+`).
    pub producer: String,
    pub n: usize,
    /// `null` when the group's scores are all zero or it was blocked.
    pub n_eff: Option<f64>,
    pub kept: usize,
    pub removed: Vec<usize>,
    pub s_eff: f64,
    pub s_eff_bound: Option<f64>,
    /// Why the group was left intact (the blocking node or unrecognised pattern).
    pub blocked: Option<String>,
}

/// Scores every unblocked group, applies EMP, returns the keep sets and the report rows.
pub fn decide(
    values: &mut Values,
    a: &Analysis,
    cfg: &StructConfig,
) -> Result<(Keeps, Vec<StructureReport>, Vec<String>)> {
    let mut scores: Vec<Option<Vec<f32>>> = vec![];
    for g in &a.groups {
        let ok = g.blocked.is_none() && g.n > 1;
        scores.push(if ok { Some(group_scores(values, a, g, cfg.norm)?) } else { None });
    }
    let mut notes = vec![];
    let cuts: Vec<Option<(Decision, Cut, Mass)>> = if cfg.global {
        let (cuts, d) = global_cuts(&scores, cfg.beta)?;
        notes.push(format!(
            "global EMP over {} structures: N_eff {}, keep {}",
            d.n,
            d.n_eff.map(|v| format!("{v:.1}")).unwrap_or_else(|| "all-zero".into()),
            d.keep
        ));
        cuts
    } else {
        scores.iter().map(|s| s.as_ref().map(|s| layer_cut(s, cfg.beta)).transpose()).collect::<Result<_>>()?
    };
    let mut keeps = vec![];
    let mut rows = vec![];
    for ((g, s), c) in a.groups.iter().zip(&scores).zip(&cuts) {
        let producer = g.spaces.iter().map(|&i| a.spaces[i].producer.as_str()).collect::<Vec<_>>().join("+");
        let (Some(s), Some((d, cut, mass))) = (s, c) else {
            keeps.push(None);
            let blocked = g.blocked.clone().or_else(|| (g.n <= 1).then(|| "a single structure".to_string()));
            rows.push(StructureReport {
                kind: g.kind,
                producer,
                n: g.n,
                n_eff: None,
                kept: g.n,
                removed: vec![],
                s_eff: 1.0,
                s_eff_bound: None,
                blocked,
            });
            continue;
        };
        let mut kept_idx = vec![];
        cut.apply(s, &mut 0, |i, k| {
            if k {
                kept_idx.push(i)
            }
        });
        notes.extend(cover_every_range(a, g, &mut kept_idx, |i| s[i]));
        let removed: Vec<usize> = (0..g.n).filter(|i| kept_idx.binary_search(i).is_err()).collect();
        let total = mass.l1.value();
        let kept_share: f64 = kept_idx.iter().map(|&i| s[i] as f64).sum();
        rows.push(StructureReport {
            kind: g.kind,
            producer,
            n: g.n,
            n_eff: d.n_eff,
            kept: kept_idx.len(),
            removed,
            s_eff: if total > 0.0 { kept_share / total } else { 1.0 },
            // The Theorem 4.2 bound is about the vector EMP was applied to: the group in layer
            // scope; in global scope it is not a per-group guarantee.
            s_eff_bound: if cfg.global { None } else { d.bound(cfg.beta) },
            blocked: None,
        });
        keeps.push((kept_idx.len() < g.n).then_some(kept_idx));
    }
    Ok((keeps, rows, notes))
}

fn layer_cut(s: &[f32], beta: f64) -> Result<(Decision, Cut, Mass)> {
    let mass = Mass::of(s)?;
    let d = Decision::new(&mass, beta);
    let cut = if d.n_eff.is_none() { Cut::ALL } else { Cut::find(s, d.keep) };
    Ok((d, cut, mass))
}

/// One EMP decision over the concatenation of every scored group; each group gets the global
/// cut (ties spread in group order) and its own mass for `s_eff`.
type GroupCut = Option<(Decision, Cut, Mass)>;

fn global_cuts(scores: &[Option<Vec<f32>>], beta: f64) -> Result<(Vec<GroupCut>, Decision)> {
    let parts: Vec<&[f32]> = scores.iter().flatten().map(Vec::as_slice).collect();
    let mass = parts.iter().try_fold(Mass::default(), |m, p| Mass::of(p).map(|x| m.merge(x)))?;
    let d = Decision::new(&mass, beta);
    let cut = if d.n_eff.is_none() { Cut::ALL } else { Cut::find_in_parts(&parts, d.keep) };
    let mut left = cut.ties;
    let cuts = scores
        .iter()
        .map(|s| {
            let Some(s) = s else { return Ok(None) };
            let ties = cut.tie_count(s).min(left);
            left -= ties;
            let own = Mass::of(s)?;
            Ok(Some((Decision::new(&own, beta), Cut { value: cut.value, ties }, own)))
        })
        .collect::<Result<_>>()?;
    Ok((cuts, d))
}

/// Makes `keep` (group indices) leave at least one structure in every member producer and in
/// every slice range a member owns (a Conv without filters, or a Split/Slice output without
/// channels, is not a model): the best-scoring structure of an emptied range is put back.
/// Sorts `keep`; returns a note per range restored.
pub fn cover_every_range(a: &Analysis, g: &Group, keep: &mut Vec<usize>, score: impl Fn(usize) -> f32) -> Vec<String> {
    let mut notes = vec![];
    for (&m, &o) in g.spaces.iter().zip(&g.offsets) {
        let space = &a.spaces[m];
        let ranges = std::iter::once(0..space.n).chain(space.slices.iter().map(|s| s.covers(space.n)));
        for r in ranges.map(|r| o + r.start..o + r.end).filter(|r| !r.is_empty()) {
            if !keep.iter().any(|k| r.contains(k)) {
                let best = r.clone().max_by(|&x, &y| score(x).total_cmp(&score(y)).then(y.cmp(&x))).unwrap_or(r.start);
                keep.push(best);
                notes.push(format!("{}: EMP emptied part of its structures; its best one is kept", space.producer));
            }
        }
    }
    keep.sort_unstable();
    keep.dedup();
    notes
}
