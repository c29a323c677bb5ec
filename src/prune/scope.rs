//! The three unstructured scopes: which entries form one EMP score vector, and the cut each
//! vector gets. `global`: all prunable weights at once (the paper's MLP/CNN setting), found
//! by streaming radix selection; `tensor`: each weight; `row`: each output unit of each weight
//! (the paper's LLM setting).

use std::collections::HashMap;

use anyhow::Result;
use rayon::prelude::*;

use super::by_row;
use super::scores::Scores;
use super::{Group, WeightCut};
use crate::emp::half::Hist16;
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
    /// Whether each weight's cut depends on that weight alone.
    pub fn is_local(self) -> bool {
        matches!(self, Scope::Tensor | Scope::Row)
    }

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

pub(super) fn group(name: String, d: &Decision, mass: &Mass, beta: f64) -> Group {
    Group { name, n: d.n, n_eff: d.n_eff, keep: d.keep, s_eff: 1.0, s_eff_bound: d.bound(beta), mass: mass.l1.value() }
}

pub(super) fn cut_for(d: &Decision, scores: &[f32]) -> Cut {
    if d.n_eff.is_none() {
        Cut::ALL
    } else {
        Cut::find(scores, d.keep)
    }
}

/// One vector over every weight. Ties at the threshold go to the earliest weights first.
pub fn global(weights: &[Weight], scorer: &Scorer, beta: f64) -> Result<(Vec<Group>, Vec<WeightCut>)> {
    // Pass 1: mass and high-bits histogram. Raw f16/bf16 weights are counted exactly instead,
    // and their histograms answer passes 2 and 3 without reading the weights again.
    let (mass, high, exact) = weights
        .par_iter()
        .enumerate()
        .map(|(i, w)| {
            let scores = scorer(w)?;
            let (mut m, mut h) = (Mass::default(), Histogram::default());
            let exact = match (scores.len() >= radix::MIN_LEN).then(|| scores.exact16()).flatten() {
                Some(e) => {
                    let e = e?;
                    m = e.mass();
                    e.add_to_high(&mut h);
                    vec![(i, e)]
                }
                None => {
                    scores.for_chunks(|_, s| {
                        h.add_high(s);
                        m.extend(s)
                    })?;
                    vec![]
                }
            };
            Ok::<_, anyhow::Error>((m, h, exact))
        })
        .try_reduce(
            || (Mass::default(), Histogram::default(), vec![]),
            |a, b| Ok((a.0.merge(b.0), a.1.merge(b.1), [a.2, b.2].concat())),
        )?;
    let exact: HashMap<usize, Hist16> = exact.into_iter().collect();
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
            .enumerate()
            .map(|(i, w)| {
                let mut h = Histogram::default();
                match exact.get(&i) {
                    Some(e) => e.add_to_low(&mut h, hb),
                    None => scorer(w)?.for_chunks(|_, s| {
                        h.add_low(s, hb);
                        Ok(())
                    })?,
                }
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
        let count = |(i, w): (usize, &Weight)| {
            if let Some(e) = exact.get(&i) {
                return Ok(e.tie_count(cut.value) as usize);
            }
            let mut c = 0;
            scorer(w)?.for_chunks(|_, s| {
                c += cut.tie_count(s);
                Ok(())
            })?;
            Ok(c)
        };
        let counts: Vec<usize> = weights.par_iter().enumerate().map(count).collect::<Result<_>>()?;
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

/// One vector per weight: the weight's group (index 0) and cut.
pub fn tensor(w: &Weight, scores: Scores, beta: f64) -> Result<(Vec<Group>, WeightCut)> {
    let (mass, cut) = tensor_cut(scores, beta)?;
    let d = Decision::new(&mass, beta);
    Ok((vec![group(w.name.clone(), &d, &mass, beta)], WeightCut::All { cut, group: 0 }))
}

/// One vector per output unit: the weight's row groups (from index 0) and cuts.
pub fn rows(w: &Weight, scores: Scores, beta: f64) -> Result<(Vec<Group>, WeightCut)> {
    let (groups, cuts) = by_row::rows_of_weight(w, &scores, beta)?;
    Ok((groups, WeightCut::Rows { cuts, first_group: 0 }))
}

/// The mass and cut of one weight's scores. Long vectors take two streaming passes (mass and
/// high-bits histogram, then low bits of the threshold bin), or one counting pass when they
/// are raw f16/bf16 weights; short ones are selected in memory.
fn tensor_cut(scores: Scores, beta: f64) -> Result<(Mass, Cut)> {
    if scores.len() < radix::MIN_LEN {
        let s = scores.to_vec()?;
        let mass = Mass::of(&s)?;
        return Ok((mass, cut_for(&Decision::new(&mass, beta), &s)));
    }
    if let Some(h) = scores.exact16() {
        // f16/bf16: one counting pass gives the mass and the exact cut.
        let h = h?;
        let (mass, d) = (h.mass(), Decision::new(&h.mass(), beta));
        let cut = if d.n_eff.is_none() { Cut::ALL } else { h.cut(d.keep as u64) };
        return Ok((mass, cut));
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
