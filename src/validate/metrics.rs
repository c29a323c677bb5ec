//! How close two outputs are: max |Δ|, relative L2 error, cosine similarity and argmax
//! agreement along the last axis, all computed in f64.

use anyhow::{bail, Result};
use tract_onnx::prelude::*;

/// Comparison of one output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputCmp {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs: f64,
    /// `‖a − b‖₂ / ‖a‖₂` (a = original).
    pub rel_l2: f64,
    pub cosine: f64,
    /// Share of positions whose argmax over the last axis agrees; `null` when the last axis
    /// has a single element.
    pub argmax_agreement: Option<f64>,
}

/// The values of a numeric tensor as f64.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    let c = if t.datum_type() == DatumType::Bool { t.cast_to_dt(DatumType::U8)?.into_owned() } else { t.clone() };
    Ok(c.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect())
}

pub fn compare(name: &str, a: &Tensor, b: &Tensor) -> Result<OutputCmp> {
    if a.shape() != b.shape() {
        bail!("output {name:?} has shape {:?} in the original but {:?} in the pruned model", a.shape(), b.shape());
    }
    let (x, y) = (values(a)?, values(b)?);
    let (mut dot, mut xx, mut yy, mut dd, mut max_abs) = (0.0, 0.0, 0.0, 0.0, 0.0f64);
    for (&p, &q) in x.iter().zip(&y) {
        dot += p * q;
        xx += p * p;
        yy += q * q;
        dd += (p - q) * (p - q);
        max_abs = max_abs.max((p - q).abs());
    }
    if x.iter().chain(&y).any(|v| !v.is_finite()) {
        max_abs = f64::INFINITY;
    }
    let cosine = match (xx > 0.0, yy > 0.0) {
        (true, true) => dot / (xx.sqrt() * yy.sqrt()),
        (false, false) => 1.0,
        _ => 0.0,
    };
    let rel_l2 = if xx > 0.0 { (dd / xx).sqrt() } else { dd.sqrt() };
    let last = a.shape().last().copied().unwrap_or(1);
    let argmax_agreement = (last > 1).then(|| agreement(&argmaxes(&x, last), &argmaxes(&y, last)));
    Ok(OutputCmp {
        name: name.into(),
        shape: a.shape().to_vec(),
        max_abs,
        rel_l2,
        cosine: if cosine.is_finite() { cosine } else { 0.0 },
        argmax_agreement,
    })
}

/// Argmax over each consecutive run of `last` values (first maximum wins).
pub fn argmaxes(v: &[f64], last: usize) -> Vec<usize> {
    v.chunks(last.max(1))
        .map(|c| {
            c.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
        })
        .collect()
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    if a.is_empty() {
        return 1.0;
    }
    a.iter().zip(b).filter(|(p, q)| p == q).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_are_perfect_and_flipped_ones_are_not() {
        let a = Tensor::from_shape(&[2, 3], &[1f32, 2., 3., 3., 2., 1.]).unwrap();
        let c = compare("y", &a, &a).unwrap();
        assert_eq!((c.max_abs, c.rel_l2, c.argmax_agreement), (0.0, 0.0, Some(1.0)));
        assert!((c.cosine - 1.0).abs() < 1e-12);
        let b = Tensor::from_shape(&[2, 3], &[3f32, 2., 1., 3., 2., 1.]).unwrap();
        let c = compare("y", &a, &b).unwrap();
        assert_eq!(c.argmax_agreement, Some(0.5));
        assert_eq!(c.max_abs, 2.0);
        // cos = (3+4+3+9+4+1)/(sqrt(28)·sqrt(28)) = 24/28
        assert!((c.cosine - 24.0 / 28.0).abs() < 1e-12);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = Tensor::from_shape(&[2], &[1f32, 2.]).unwrap();
        let b = Tensor::from_shape(&[1, 2], &[1f32, 2.]).unwrap();
        assert!(compare("y", &a, &b).is_err());
    }
}
