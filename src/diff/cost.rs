//! Parameter and MAC totals. The MAC rule, for every Conv, ConvTranspose, Gemm and MatMul:
//!
//! * a product with a constant weight `W` costs `numel(W) × positions`, and `nnz(W) ×
//!   positions` counting only non-zero weights, where *positions* is how many times the
//!   weight is applied: Conv — batch × output pixels (`numel(Y) / M`); ConvTranspose — batch ×
//!   input pixels (`numel(X) / C`); Gemm — `M`; MatMul — the rows of the activation operand
//!   (`numel(A) / K`, divided by the weight's own batch dims);
//! * a MatMul of two activations costs `numel(Y) × K` (dense and non-zero alike);
//! * shapes come from [`super::shapes`] (declared, else propagated), with every dynamic
//!   dimension taken as 1; when a needed shape is unknown, positions = 1 and the totals are
//!   flagged `macs_exact = false`.

use std::collections::HashMap;

use super::shapes::{self, Shapes};
use super::tensors::Named;
use crate::onnx::walk::Index;

/// MAC totals of one model.
pub struct Macs {
    pub dense: u64,
    pub nonzero: u64,
    pub exact: bool,
}

pub fn macs(ix: &Index, stats: &[Named]) -> Macs {
    let weights: HashMap<(&str, &str), &Named> =
        stats.iter().map(|t| ((t.graph.as_str(), t.name.as_str()), t)).collect();
    let mut total = Macs { dense: 0, nonzero: 0, exact: true };
    let mut known: Vec<Shapes> = Vec::with_capacity(ix.graphs.len());
    for (gi, g) in ix.graphs.iter().enumerate() {
        let outer = ix.parent(gi).and_then(|p| known.get(p)).cloned().unwrap_or_default();
        let s = shapes::infer(g.graph, &outer);
        for n in &g.graph.node {
            let weight = |slot: usize| n.input.get(slot).and_then(|name| find(ix, gi, name, &weights));
            let shape = |slot: usize| n.input.get(slot).and_then(|x| s.get(x));
            let out = n.output.first().and_then(|x| s.get(x));
            let cost = match n.op_type.as_str() {
                "Conv" => weight(1).map(|w| (w, out.and_then(|y| per(y, y.get(1))))),
                "ConvTranspose" => weight(1).map(|w| (w, shape(0).and_then(|x| per(x, x.get(1))))),
                "Gemm" => weight(1).map(|w| {
                    let trans_a = n.attribute.iter().any(|a| a.name == "transA" && a.i == 1);
                    (w, shape(0).and_then(|a| if trans_a { a.get(1) } else { a.first() }).copied())
                }),
                "MatMul" => match (weight(1), weight(0)) {
                    (Some(w), _) => Some((w, shape(0).and_then(|a| matmul_rows(a, &w.stat.shape)))),
                    (None, Some(w)) => {
                        Some((w, shape(1).and_then(|b| per(b, b.len().checked_sub(2).and_then(|k| b.get(k))))))
                    }
                    (None, None) => {
                        activation_product(shape(0), out, &mut total);
                        None
                    }
                },
                _ => None,
            };
            if let Some((w, positions)) = cost {
                total.exact &= positions.is_some();
                let p = positions.unwrap_or(1).max(1);
                total.dense = total.dense.saturating_add(w.stat.n.saturating_mul(p));
                total.nonzero = total.nonzero.saturating_add(w.stat.nonzero.saturating_mul(p));
            }
        }
        known.push(s);
    }
    total
}

/// A constant defined in graph `gi` or one it is nested in.
fn find<'a>(ix: &Index, mut gi: usize, name: &str, w: &HashMap<(&str, &str), &'a Named>) -> Option<&'a Named> {
    loop {
        if let Some(t) = w.get(&(ix.graphs[gi].path.as_str(), name)) {
            return Some(t);
        }
        gi = ix.parent(gi)?;
    }
}

/// `numel(shape) / divisor`.
fn per(shape: &[u64], divisor: Option<&u64>) -> Option<u64> {
    let d = (*divisor?).max(1);
    Some(shape.iter().product::<u64>() / d)
}

/// Rows of the activation `a` multiplied by a weight of shape `w` (`[..., K, N]`).
fn matmul_rows(a: &[u64], w: &[i64]) -> Option<u64> {
    let k = (*a.last()?).max(1);
    let wbatch: u64 = w.iter().rev().skip(2).map(|&d| d.max(1) as u64).product();
    Some((a.iter().product::<u64>() / k / wbatch.max(1)).max(1))
}

fn activation_product(a: Option<&Vec<u64>>, y: Option<&Vec<u64>>, total: &mut Macs) {
    match (a.and_then(|a| a.last()), y) {
        (Some(&k), Some(y)) => {
            let m = y.iter().product::<u64>().saturating_mul(k);
            total.dense = total.dense.saturating_add(m);
            total.nonzero = total.nonzero.saturating_add(m);
        }
        _ => total.exact = false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_rows_and_per_position_rule() {
        assert_eq!(matmul_rows(&[1, 7, 64], &[64, 128]), Some(7));
        assert_eq!(matmul_rows(&[4, 7, 64], &[4, 64, 128]), Some(7));
        assert_eq!(per(&[1, 16, 10, 10], Some(&16)), Some(100));
        assert_eq!(shapes::matmul(&[2, 3, 4], &[4, 5]), Some(vec![2, 3, 5]));
    }
}
