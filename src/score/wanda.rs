//! Activation-aware scores (Wanda, Sun et al. 2023): `|W_ij| · ‖X_j‖₂`, where `‖X_j‖₂` is the
//! L2 norm of input feature `j` over every calibration sample and position (see [`super::calib`]).
//! The paper's LLM setting compares them per output row (`--scope row`, the default with this
//! criterion). A structure's Wanda score is the sum of its entries' scores ([`entry_scores`]).

use anyhow::{anyhow, ensure, Result};

use crate::onnx::external::ExternalStore;
use crate::onnx::proto::TensorProto;
use crate::onnx::tensor;
use crate::weights::Weight;

/// `|w| · ‖X_feature(w)‖₂` for every entry of `w`, from its attached activation norms.
pub fn scores(t: &TensorProto, store: &ExternalStore, w: &Weight) -> Result<Vec<f32>> {
    let norms = w.act_norms.as_ref().ok_or_else(|| {
        anyhow!("weight {:?} has no activation statistics (wanda scores need calibration data)", w.name)
    })?;
    let (_, values) = tensor::read_floats(t, store)?;
    entry_scores(w, &values, norms)
}

/// Wanda scores of flat `values` (stored order) of weight `w` given per-feature norms.
pub fn entry_scores(w: &Weight, values: &[f32], norms: &[f64]) -> Result<Vec<f32>> {
    let act = w.activation.as_ref().ok_or_else(|| anyhow!("weight {:?} has no input activation", w.name))?;
    let features = FeatureMap::new(&w.shape, act.weight_axis, act.groups)?;
    ensure!(
        norms.len() == features.count,
        "weight {:?}: its activation {:?} has {} features, the weight expects {}",
        w.name,
        act.value,
        norms.len(),
        features.count
    );
    Ok(values.iter().enumerate().map(|(i, &v)| (v.abs() as f64 * norms[features.of(i)]) as f32).collect())
}

/// Maps a flat index of the stored weight to the input feature it multiplies.
#[derive(Clone, Debug)]
pub struct FeatureMap {
    /// Number of input features (channels × groups for a grouped Conv).
    pub count: usize,
    stride: usize,
    dim: usize,
    /// Grouped Conv: stride and size of the output-channel axis 0, and outputs per group.
    out_stride: usize,
    per_group_out: usize,
}

impl FeatureMap {
    pub fn new(shape: &[usize], axis: usize, groups: usize) -> Result<Self> {
        ensure!(axis < shape.len(), "feature axis {axis} is outside a rank-{} weight", shape.len());
        let stride: usize = shape[axis + 1..].iter().product();
        let dim = shape[axis];
        let out_stride: usize = shape[1..].iter().product();
        let groups = groups.max(1);
        ensure!(shape[0].is_multiple_of(groups), "{} output channels do not split into {groups} groups", shape[0]);
        Ok(Self { count: dim * groups, stride, dim, out_stride, per_group_out: (shape[0] / groups).max(1) })
    }

    #[inline]
    pub fn of(&self, i: usize) -> usize {
        let j = (i / self.stride.max(1)) % self.dim.max(1);
        if self.count == self.dim {
            j
        } else {
            let group = i / self.out_stride.max(1) / self.per_group_out;
            group * self.dim + j
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_gemm_matmul_and_grouped_conv() {
        // Gemm transB=1 W [out=2, in=3]: feature = column.
        let f = FeatureMap::new(&[2, 3], 1, 1).unwrap();
        assert_eq!((0..6).map(|i| f.of(i)).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
        // MatMul B [in=3, out=2]: feature = row.
        let f = FeatureMap::new(&[3, 2], 0, 1).unwrap();
        assert_eq!((0..6).map(|i| f.of(i)).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2]);
        // Conv W [M=4, C/g=1, 1, 1] with 2 groups: outputs 0,1 see channel 0; 2,3 see channel 1.
        let f = FeatureMap::new(&[4, 1, 1, 1], 1, 2).unwrap();
        assert_eq!(f.count, 2);
        assert_eq!((0..4).map(|i| f.of(i)).collect::<Vec<_>>(), [0, 0, 1, 1]);
    }
}
