//! Row scope planning without copying a weight: the scores of a block of rows are decoded into
//! a small buffer — contiguous rows as they are, rows along the last axis by transposing a
//! block of columns — and each row gets its mass, decision and exact cut. Blocks run in
//! parallel and results come back in row order, so the plan does not depend on the thread
//! count. Other layouts gather the whole weight once.

use anyhow::Result;
use rayon::prelude::*;

use super::rows::{Kind, Rows};
use super::scope::{cut_for, group};
use super::scores::Scores;
use super::Group;
use crate::emp::{Cut, Decision, Mass};
use crate::weights::Weight;

/// Scores buffered per block of rows, at most (1 MiB of f32; at least one row, or [`LINE`]
/// rows along the last axis). Wide blocks keep the reads of rows along the last axis long
/// enough for the prefetcher.
const BLOCK_ENTRIES: usize = 1 << 18;

/// Columns per line read when gathering rows along the last axis, at least: a 64-byte cache
/// line of f16.
const LINE: usize = 32;

/// Lines read ahead when gathering rows along the last axis.
const PREFETCH_AHEAD: usize = 8;

/// Lines transposed at once when gathering rows along the last axis (one cache line of f32).
const TILE: usize = 16;

/// The decision and cut of every row of `w`, in row order.
pub fn rows_of_weight(w: &Weight, scores: &Scores, beta: f64) -> Result<(Vec<Group>, Vec<Cut>)> {
    let rows = Rows::new(&w.shape, &w.unit_axes);
    let per_block = match rows.kind() {
        // Each line read is LINE columns or a multiple: whole cache lines, and whole vectors
        // for the decoder (a 21-column line cost more in call and tail than in decoding).
        Kind::Trailing => (BLOCK_ENTRIES / rows.len.max(1)).max(LINE) / LINE * LINE,
        _ => (BLOCK_ENTRIES / rows.len.max(1)).max(1),
    };
    let blocks: Vec<usize> = (0..rows.count).step_by(per_block).collect();
    let decide = |r: usize, row: &[f32]| -> Result<(Group, Cut)> {
        let mass = Mass::of(row)?;
        let d = Decision::new(&mass, beta);
        Ok((group(format!("{}[row {r}]", w.name), &d, &mass, beta), cut_for(&d, row)))
    };
    let decided: Vec<Vec<(Group, Cut)>> = match rows.kind() {
        Kind::Leading | Kind::Trailing => blocks
            .par_iter()
            .map(|&first| {
                let n = per_block.min(rows.count - first);
                let buf = read_block(&rows, scores, first, n)?;
                buf.chunks(rows.len.max(1)).take(n).enumerate().map(|(j, row)| decide(first + j, row)).collect()
            })
            .collect::<Result<_>>()?,
        Kind::General => {
            let by_row = rows.gather(&scores.to_vec()?);
            vec![by_row
                .chunks(rows.len.max(1))
                .take(rows.count)
                .enumerate()
                .map(|(r, row)| decide(r, row))
                .collect::<Result<_>>()?]
        }
    };
    scores.release();
    Ok(decided.into_iter().flatten().unzip())
}

/// Rows `first..first + n`, each contiguous in the returned buffer (`n * rows.len` entries).
fn read_block(rows: &Rows, scores: &Scores, first: usize, n: usize) -> Result<Vec<f32>> {
    let len = rows.len;
    let mut buf = vec![0f32; n * len];
    if rows.kind() == Kind::Leading {
        scores.read(first * len, &mut buf)?;
        return Ok(buf);
    }
    // Trailing: entry k of row r sits at flat index k * count + r. Each line of n columns is
    // spread into a small row-major tile (TILE entries per row, inside L1), and every TILE
    // lines each row's run is copied out whole: scattering lines straight into `buf` would
    // store to n addresses a row apart, which alias in the cache when rows are 4 KiB multiples.
    let (mut line, mut tile) = (vec![0f32; n], vec![0f32; n * TILE]);
    for k0 in (0..len).step_by(TILE) {
        let t = TILE.min(len - k0);
        for i in 0..t {
            // The lines are a whole matrix row apart: too far for the hardware prefetcher.
            scores.prefetch((k0 + i + PREFETCH_AHEAD) * rows.count + first, n);
            scores.read((k0 + i) * rows.count + first, &mut line)?;
            for (j, &v) in line.iter().enumerate() {
                tile[j * TILE + i] = v;
            }
        }
        for (row, run) in buf.chunks_mut(len).zip(tile.chunks(TILE)) {
            row[k0..k0 + t].copy_from_slice(&run[..t]);
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The reference: every row gathered from the whole weight, then decided.
    fn reference(w: &Weight, s: &[f32], beta: f64) -> Vec<(f64, usize, Cut)> {
        let rows = Rows::new(&w.shape, &w.unit_axes);
        let mut by_row = vec![vec![]; rows.count];
        for (i, r) in rows.ids().into_iter().enumerate() {
            by_row[r as usize].push(s[i]);
        }
        by_row
            .iter()
            .map(|row| {
                let mass = Mass::of(row).unwrap();
                let d = Decision::new(&mass, beta);
                (mass.l1.value(), d.keep, cut_for(&d, row))
            })
            .collect()
    }

    #[test]
    fn blocks_equal_the_gathered_rows_for_every_layout() {
        let mut rng = Rng::new(12);
        // Leading, trailing (with a size-1 axis), general; more rows than one block holds.
        for (shape, unit) in [
            (vec![600, 700], vec![0]),
            (vec![700, 1, 600], vec![2]),
            (vec![3, 40, 5], vec![0, 2]),
            (vec![1, 9000, 31], vec![2]),
        ] {
            let n: usize = shape.iter().product();
            let s: Vec<f32> = (0..n).map(|i| if i % 11 == 0 { 0.5 } else { rng.normal() as f32 }).collect();
            let w = Weight::fixture(&shape, &unit);
            let (groups, cuts) = rows_of_weight(&w, &Scores::Values(s.clone()), 1.0).unwrap();
            let want = reference(&w, &s, 1.0);
            assert_eq!(groups.len(), want.len(), "{shape:?}");
            for (r, ((g, c), (mass, keep, cut))) in groups.iter().zip(&cuts).zip(&want).enumerate() {
                assert_eq!((g.keep, *c), (*keep, *cut), "{shape:?} row {r}");
                assert!((g.mass - mass).abs() <= 1e-9 * mass, "{shape:?} row {r}");
                assert_eq!(g.name, format!("w[row {r}]"));
            }
        }
    }
}
