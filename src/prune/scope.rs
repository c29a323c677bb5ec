//! The three unstructured scopes: which entries form one EMP score vector, and the cut each
//! vector gets. `global`: all prunable weights at once (the paper's MLP/CNN setting), found
//! by streaming radix selection; `tensor`: each weight; `row`: each output unit of each weight
//! (the paper's LLM setting).

use anyhow::Result;
use rayon::prelude::*;

use super::rows::Rows;
use super::scores::Scores;
use super::{Group, WeightCut};
use crate::emp::radix::{self, Histogram};
use crate::emp::{Cut, Decision, Mass};
use crate::weights::Weight;

/// Which entries are compared with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Global,
    Tensor,
    Row,
    /// Structures only: one vector per coupled group of structures (per layer).
    Layer,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tensor => "tensor",
            Scope::Row => "row",
            Scope::Layer => "layer",
        }
    }
}

/// Computes (or reads) a weight's scores on demand.
pub type Scorer<'a> = dyn Fn(&Weight) -> Result<Scores> + Sync + 'a;

fn group(name: String, d: &Decision, mass: &Mass, beta: f64) -> Group {
    Group { name, n: d.n, n_eff: d.n_eff, keep: d.keep, s_eff: 1.0, s_eff_bound: d.bound(beta), mass: mass.l1.value() }
}

fn cut_for(d: &Decision, scores: &[f32]) -> Cut {
    if d.n_eff.is_none() {
        Cut::ALL
    } else {
        Cut::find(scores, d.keep)
    }
}

/// One vector over every weight. Ties at the threshold go to the earliest weights first.
pub fn global(weights: &[Weight], scorer: &Scorer, beta: f64) -> Result<(Vec<Group>, Vec<WeightCut>)> {
    // Pass 1: mass and high-bits histogram.
    let (mass, high) = weights
        .par_iter()
        .map(|w| {
            let (mut m, mut h) = (Mass::default(), Histogram::default());
            scorer(w)?.for_chunks(|_, s| {
                h.add_high(s);
                m.extend(s)
            })?;
            Ok::<_, anyhow::Error>((m, h))
        })
        .try_reduce(|| (Mass::default(), Histogram::default()), |a, b| Ok((a.0.merge(b.0), a.1.merge(b.1))))?;
    let d = Decision::new(&mass, beta);
    let g = group("global".into(), &d, &mass, beta);
    if d.n_eff.is_none() || d.keep >= d.n {
        return Ok((vec![g], weights.iter().map(|_| WeightCut::All { cut: Cut::ALL, group: 0 }).collect()));
    }
    // Pass 2: low-bits histogram of the threshold bin.
    let mut failure = None;
    let low_of = |hb: u32| {
        weights
            .par_iter()
            .map(|w| {
                let mut h = Histogram::default();
                scorer(w)?.for_chunks(|_, s| {
                    h.add_low(s, hb);
                    Ok(())
                })?;
                Ok::<_, anyhow::Error>(h)
            })
            .try_reduce(Histogram::default, |a, b| Ok(a.merge(b)))
            .unwrap_or_else(|e: anyhow::Error| {
                failure = Some(e);
                Histogram::default()
            })
    };
    let (cut, equal) = radix::cut_from(&high, low_of, d.keep as u64);
    if let Some(e) = failure {
        return Err(e);
    }
    // Pass 3 (only when ties bind): split the tie budget over weights in order.
    let budgets: Vec<usize> = if cut.ties as u64 >= equal {
        vec![usize::MAX; weights.len()]
    } else {
        let count = |w: &Weight| {
            let mut c = 0;
            scorer(w)?.for_chunks(|_, s| {
                c += cut.tie_count(s);
                Ok(())
            })?;
            Ok(c)
        };
        let counts: Vec<usize> = weights.par_iter().map(count).collect::<Result<_>>()?;
        let mut left = cut.ties;
        counts
            .iter()
            .map(|&c| {
                let b = c.min(left);
                left -= b;
                b
            })
            .collect()
    };
    let cuts =
        budgets.into_iter().map(|ties| WeightCut::All { cut: Cut { value: cut.value, ties }, group: 0 }).collect();
    Ok((vec![g], cuts))
}

/// One vector per weight.
pub fn per_tensor(weights: &[Weight], scorer: &Scorer, beta: f64) -> Result<(Vec<Group>, Vec<WeightCut>)> {
    let out: Vec<(Group, Cut)> = weights
        .par_iter()
        .map(|w| {
            let (mass, cut) = tensor_cut(scorer(w)?, beta)?;
            let d = Decision::new(&mass, beta);
            Ok((group(w.name.clone(), &d, &mass, beta), cut))
        })
        .collect::<Result<_>>()?;
    let (groups, cuts): (Vec<Group>, Vec<Cut>) = out.into_iter().unzip();
    Ok((groups, cuts.into_iter().enumerate().map(|(i, cut)| WeightCut::All { cut, group: i }).collect()))
}

/// The mass and cut of one weight's scores. Long vectors take two streaming passes (mass and
/// high-bits histogram, then low bits of the threshold bin); short ones are selected in memory.
fn tensor_cut(scores: Scores, beta: f64) -> Result<(Mass, Cut)> {
    if scores.len() < radix::MIN_LEN {
        let s = scores.into_vec()?;
        let mass = Mass::of(&s)?;
        return Ok((mass, cut_for(&Decision::new(&mass, beta), &s)));
    }
    let (mut mass, mut high) = (Mass::default(), Histogram::default());
    scores.for_chunks(|_, s| {
        high.add_high(s);
        mass.extend(s)
    })?;
    let d = Decision::new(&mass, beta);
    if d.n_eff.is_none() || d.keep >= d.n {
        return Ok((mass, Cut::ALL));
    }
    let mut failure = Ok(());
    let low_of = |hb: u32| {
        let mut low = Histogram::default();
        failure = scores.for_chunks(|_, s| {
            low.add_low(s, hb);
            Ok(())
        });
        low
    };
    let (cut, _) = radix::cut_from(&high, low_of, d.keep as u64);
    failure.map(|_| (mass, cut))
}

/// One vector per output unit of every weight.
pub fn per_row(weights: &[Weight], scorer: &Scorer, beta: f64) -> Result<(Vec<Group>, Vec<WeightCut>)> {
    let out: Vec<(Vec<Group>, Vec<Cut>)> =
        weights.par_iter().map(|w| rows_of_weight(w, &scorer(w)?.into_vec()?, beta)).collect::<Result<_>>()?;
    let mut groups = vec![];
    let mut cuts = vec![];
    for (g, c) in out {
        cuts.push(WeightCut::Rows { cuts: c, first_group: groups.len() });
        groups.extend(g);
    }
    Ok((groups, cuts))
}

fn rows_of_weight(w: &Weight, s: &[f32], beta: f64) -> Result<(Vec<Group>, Vec<Cut>)> {
    let rows = Rows::new(&w.shape, &w.unit_axes);
    let by_row = rows.gather(s);
    let decided: Vec<(Group, Cut)> = by_row
        .par_chunks(rows.len.max(1))
        .enumerate()
        .map(|(r, row)| {
            let mass = Mass::of(row)?;
            let d = Decision::new(&mass, beta);
            Ok((group(format!("{}[row {r}]", w.name), &d, &mass, beta), cut_for(&d, row)))
        })
        .collect::<Result<_>>()?;
    Ok(decided.into_iter().unzip())
}
