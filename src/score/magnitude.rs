//! Magnitude scores `|w|`: the criterion of the paper's MLP, CNN and LLM experiments.

use anyhow::Result;

use crate::onnx::external::ExternalStore;
use crate::onnx::proto::TensorProto;
use crate::onnx::tensor;

/// `|w_i|` for every entry, as f32 (exact for f32/f16/bf16 weights). Non-finite weights are an
/// error naming the tensor.
pub fn scores(t: &TensorProto, store: &ExternalStore) -> Result<Vec<f32>> {
    let (_, mut v) = tensor::read_floats(t, store)?;
    v.iter_mut().for_each(|x| *x = x.abs());
    Ok(v)
}
