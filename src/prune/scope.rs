//! The three unstructured scopes: which entries form one EMP score vector.
//! `global`: all prunable weights at once (the paper's MLP/CNN setting); `tensor`: each weight;
//! `row`: each output unit of each weight (the paper's LLM setting).

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::rows::Rows;
use super::Group;
use crate::emp::{Cut, Decision, Mass, Sum};
use crate::weights::Weight;

/// Which entries are compared with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Global,
    Tensor,
    Row,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tensor => "tensor",
            Scope::Row => "row",
        }
    }
}

type Masks = Vec<Vec<bool>>;

fn group(name: String, d: &Decision, kept: Sum, mass: &Mass, beta: f64) -> Group {
    let total = mass.l1.value();
    Group {
        name,
        n: d.n,
        n_eff: d.n_eff,
        keep: d.keep,
        s_eff: if total > 0.0 { kept.value() / total } else { 1.0 },
        s_eff_bound: d.bound(beta),
    }
}

fn cut_for(d: &Decision, parts: &[&[f32]]) -> Cut {
    if d.n_eff.is_none() {
        Cut::ALL
    } else {
        Cut::find_in_parts(parts, d.keep)
    }
}

/// One vector over every weight; ties at the threshold go to the earliest weights first.
pub fn global(scores: &[Vec<f32>], beta: f64) -> Result<(Vec<Group>, Masks)> {
    let masses: Vec<Mass> = scores.par_iter().map(|s| Mass::of(s)).collect::<Result<_>>()?;
    let mass = masses.into_iter().fold(Mass::default(), Mass::merge);
    let d = Decision::new(&mass, beta);
    let parts: Vec<&[f32]> = scores.iter().map(Vec::as_slice).collect();
    let cut = cut_for(&d, &parts);
    // Split the tie budget over weights in order, so each can be applied independently.
    let tie_counts: Vec<usize> = scores.par_iter().map(|s| cut.tie_count(s)).collect();
    let mut left = cut.ties;
    let budgets: Vec<usize> = tie_counts
        .iter()
        .map(|&c| {
            let b = c.min(left);
            left -= b;
            b
        })
        .collect();
    let applied: Vec<(Vec<bool>, Sum)> =
        scores.par_iter().zip(budgets).map(|(s, ties)| apply(&Cut { value: cut.value, ties }, s)).collect();
    let kept = applied.iter().fold(Sum::default(), |acc, (_, k)| acc.merge(*k));
    let g = group("global".into(), &d, kept, &mass, beta);
    Ok((vec![g], applied.into_iter().map(|(m, _)| m).collect()))
}

fn apply(cut: &Cut, s: &[f32]) -> (Vec<bool>, Sum) {
    let mut mask = vec![false; s.len()];
    let kept = cut.apply(s, &mut 0, |i, k| mask[i] = k);
    (mask, kept)
}

/// One vector per weight.
pub fn per_tensor(weights: &[Weight], scores: &[Vec<f32>], beta: f64) -> Result<(Vec<Group>, Masks)> {
    let out: Vec<(Group, Vec<bool>)> = weights
        .par_iter()
        .zip(scores)
        .map(|(w, s)| {
            let mass = Mass::of(s).with_context(|| format!("weight {:?}", w.name))?;
            let d = Decision::new(&mass, beta);
            let (mask, kept) = apply(&cut_for(&d, &[s]), s);
            Ok((group(w.name.clone(), &d, kept, &mass, beta), mask))
        })
        .collect::<Result<_>>()?;
    Ok(out.into_iter().unzip())
}

/// One vector per output unit of every weight.
pub fn per_row(weights: &[Weight], scores: &[Vec<f32>], beta: f64) -> Result<(Vec<Group>, Masks)> {
    let out: Vec<(Vec<Group>, Vec<bool>)> = weights
        .par_iter()
        .zip(scores)
        .map(|(w, s)| rows_of_weight(w, s, beta).with_context(|| format!("weight {:?}", w.name)))
        .collect::<Result<_>>()?;
    let (groups, masks): (Vec<Vec<Group>>, Masks) = out.into_iter().unzip();
    Ok((groups.into_iter().flatten().collect(), masks))
}

fn rows_of_weight(w: &Weight, s: &[f32], beta: f64) -> Result<(Vec<Group>, Vec<bool>)> {
    let rows = Rows::new(&w.shape, &w.unit_axes);
    let ids = rows.ids();
    // Gather each row's scores contiguously, in flat order within the row.
    let mut by_row = vec![0f32; s.len()];
    let mut fill = vec![0usize; rows.count];
    for (i, &r) in ids.iter().enumerate() {
        let r = r as usize;
        by_row[r * rows.len + fill[r]] = s[i];
        fill[r] += 1;
    }
    let decided: Vec<(Decision, Cut, Mass)> = by_row
        .par_chunks(rows.len.max(1))
        .map(|row| {
            let mass = Mass::of(row)?;
            let d = Decision::new(&mass, beta);
            Ok((d, cut_for(&d, &[row]), mass))
        })
        .collect::<Result<_>>()?;
    let mut mask = vec![false; s.len()];
    let mut ties = vec![0usize; rows.count];
    let mut kept = vec![Sum::default(); rows.count];
    for (i, &r) in ids.iter().enumerate() {
        let r = r as usize;
        if decided[r].1.keeps(s[i], &mut ties[r]) {
            mask[i] = true;
            kept[r].add(s[i].abs() as f64);
        }
    }
    let groups = decided
        .iter()
        .enumerate()
        .map(|(r, (d, _, mass))| group(format!("{}[row {r}]", w.name), d, kept[r], mass, beta))
        .collect();
    Ok((groups, mask))
}
