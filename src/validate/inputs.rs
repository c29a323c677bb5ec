//! The inputs both models are run on: real arrays from `.npy`/`.npz` files, or seeded random
//! tensors shaped from the model's declared inputs with dynamic dimensions pinned.
//!
//! Pinning rule for dynamic dimensions without `--input-shape`: axis 0 (batch) →
//! [`DEFAULT_BATCH`] (several samples make the similarity metrics meaningful), any other
//! dynamic axis → [`DEFAULT_DYNAMIC_DIM`] (so sequence models see more than one token).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use super::npy::{self, Array, NpyType};
use crate::onnx::dtype::onnx_type_name;
use crate::onnx::proto::tensor_proto::DataType as D;
use crate::onnx::proto::{type_proto, GraphProto};
use crate::rng::Rng;

/// Size used for a dynamic axis 0 (batch) when none is given.
pub const DEFAULT_BATCH: usize = 8;

/// Length used for a dynamic non-batch dimension when none is given.
pub const DEFAULT_DYNAMIC_DIM: usize = 16;

/// How the user asked inputs to be made.
#[derive(Clone, Debug, Default)]
pub struct InputSpec {
    /// `--input-shape name=1x3x224x224`
    pub shapes: HashMap<String, Vec<usize>>,
    /// `--input-range name=lo..hi` (inclusive bounds for integer inputs, [lo, hi) for floats)
    pub ranges: HashMap<String, (f64, f64)>,
    /// `--input name=file.npy`, or a bare `file.npz` holding arrays named after inputs.
    pub files: Vec<(Option<String>, PathBuf)>,
    pub seed: u64,
}

/// One model input as fed to both models.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// `random` or the file it came from.
    pub source: String,
}

/// The real (non-initializer) inputs of a graph, with their declared element type and dims
/// (`None` where dynamic).
pub fn declared(g: &GraphProto) -> Result<Vec<(String, i32, Vec<Option<usize>>)>> {
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = vec![];
    for vi in g.input.iter().filter(|v| !inits.contains(v.name.as_str())) {
        let Some(type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            bail!("input {:?} is not a tensor; only tensor inputs can be validated", vi.name);
        };
        let dims = tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(crate::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((vi.name.clone(), tt.elem_type, dims));
    }
    Ok(out)
}

/// Builds the input tensors for graph `g`.
pub fn make(g: &GraphProto, spec: &InputSpec) -> Result<Vec<(InputDesc, Tensor)>> {
    let files = load_files(spec)?;
    let mut rng = Rng::new(spec.seed);
    let mut out = vec![];
    for (name, elem, dims) in declared(g)? {
        let dt = datum_type(elem).with_context(|| format!("input {name:?}"))?;
        if let Some((path, arr)) = files.get(&name) {
            let t = array_to_tensor(arr)?
                .cast_to_dt(dt)
                .with_context(|| format!("input {name:?}: converting {}", path))?
                .into_owned();
            let desc = InputDesc { name, shape: t.shape().to_vec(), dtype: format!("{dt:?}"), source: path.clone() };
            out.push((desc, t));
            continue;
        }
        let shape = pinned_shape(&name, &dims, spec)?;
        let t = random_tensor(dt, &shape, spec.ranges.get(&name).copied(), &mut rng)?;
        out.push((InputDesc { name, shape, dtype: format!("{dt:?}"), source: "random".into() }, t));
    }
    if let Some(unused) = files.keys().find(|k| !out.iter().any(|(d, _)| &d.name == *k)) {
        bail!("--input names {unused:?}, which is not an input of the model");
    }
    Ok(out)
}

fn load_files(spec: &InputSpec) -> Result<HashMap<String, (String, Array)>> {
    let mut m = HashMap::new();
    for (name, path) in &spec.files {
        let shown = path.display().to_string();
        let is_npz = path.extension().is_some_and(|e| e == "npz");
        match (name, is_npz) {
            (Some(n), false) => {
                m.insert(n.clone(), (shown, npy::read_npy(path)?));
            }
            (Some(n), true) => {
                let arrays = npy::read_npz(path)?;
                let arr = match arrays.iter().find(|(k, _)| k == n) {
                    Some((_, a)) => a.clone(),
                    None if arrays.len() == 1 => arrays[0].1.clone(),
                    None => bail!("{shown} has no array named {n:?}"),
                };
                m.insert(n.clone(), (shown, arr));
            }
            (None, true) => {
                for (k, a) in npy::read_npz(path)? {
                    m.insert(k, (shown.clone(), a));
                }
            }
            (None, false) => bail!("--input {shown}: name the input (NAME=FILE.npy) or pass an .npz"),
        }
    }
    Ok(m)
}

fn pinned_shape(name: &str, dims: &[Option<usize>], spec: &InputSpec) -> Result<Vec<usize>> {
    if let Some(s) = spec.shapes.get(name) {
        if !dims.is_empty() && s.len() != dims.len() {
            bail!("--input-shape for {name:?} has rank {}, the model declares rank {}", s.len(), dims.len());
        }
        for (i, (given, decl)) in s.iter().zip(dims).enumerate() {
            if let Some(d) = decl {
                if d != given {
                    bail!("--input-shape for {name:?}: axis {i} is fixed to {d} by the model, got {given}");
                }
            }
        }
        return Ok(s.clone());
    }
    Ok(dims
        .iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or(if i == 0 { DEFAULT_BATCH } else { DEFAULT_DYNAMIC_DIM }))
        .collect())
}

/// tract's type for an ONNX element type (bf16 is widened to f32 for validation).
pub fn datum_type(elem: i32) -> Result<DatumType> {
    Ok(match D::try_from(elem).map_err(|_| anyhow!("unknown element type {elem}"))? {
        D::Float | D::Bfloat16 => DatumType::F32,
        D::Float16 => DatumType::F16,
        D::Double => DatumType::F64,
        D::Int8 => DatumType::I8,
        D::Int16 => DatumType::I16,
        D::Int32 => DatumType::I32,
        D::Int64 => DatumType::I64,
        D::Uint8 => DatumType::U8,
        D::Uint16 => DatumType::U16,
        D::Uint32 => DatumType::U32,
        D::Uint64 => DatumType::U64,
        D::Bool => DatumType::Bool,
        _ => bail!("element type {} is not supported for validation inputs", onnx_type_name(elem)),
    })
}

fn random_tensor(dt: DatumType, shape: &[usize], range: Option<(f64, f64)>, rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = if dt.is_float() {
        match range {
            Some((lo, hi)) => (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect(),
            None => (0..n).map(|_| rng.normal()).collect(),
        }
    } else if dt == DatumType::Bool {
        (0..n).map(|_| (rng.next_u64() & 1) as f64).collect()
    } else {
        let (lo, hi) = range.unwrap_or((0.0, 9.0));
        (0..n).map(|_| rng.int_in(lo as i64, hi as i64) as f64).collect()
    };
    let t = Tensor::from_shape(shape, &vals)?;
    let t = if dt == DatumType::Bool {
        t.cast_to_dt(DatumType::U8)?.cast_to_dt(dt)?.into_owned()
    } else {
        t.cast_to_dt(dt)?.into_owned()
    };
    Ok(t)
}

/// Converts a numpy array into a tract tensor of the same type.
pub fn array_to_tensor(a: &Array) -> Result<Tensor> {
    let dt = match a.dtype {
        NpyType::F16 => DatumType::F16,
        NpyType::F32 => DatumType::F32,
        NpyType::F64 => DatumType::F64,
        NpyType::I8 => DatumType::I8,
        NpyType::I16 => DatumType::I16,
        NpyType::I32 => DatumType::I32,
        NpyType::I64 => DatumType::I64,
        NpyType::U8 => DatumType::U8,
        NpyType::U16 => DatumType::U16,
        NpyType::U32 => DatumType::U32,
        NpyType::U64 => DatumType::U64,
        NpyType::Bool => DatumType::Bool,
    };
    let mut t = Tensor::zero_dt(dt, &a.shape)?;
    if a.dtype == NpyType::Bool && a.data.iter().any(|&b| b > 1) {
        bail!("bool array holds bytes other than 0/1");
    }
    t.as_bytes_mut().copy_from_slice(&a.data);
    Ok(t)
}

/// Converts a tract tensor to a numpy array (for `--save-io`).
pub fn tensor_to_array(t: &Tensor) -> Result<Array> {
    let dtype = match t.datum_type() {
        DatumType::F16 => NpyType::F16,
        DatumType::F32 => NpyType::F32,
        DatumType::F64 => NpyType::F64,
        DatumType::I8 => NpyType::I8,
        DatumType::I16 => NpyType::I16,
        DatumType::I32 => NpyType::I32,
        DatumType::I64 => NpyType::I64,
        DatumType::U8 => NpyType::U8,
        DatumType::U16 => NpyType::U16,
        DatumType::U32 => NpyType::U32,
        DatumType::U64 => NpyType::U64,
        DatumType::Bool => NpyType::Bool,
        other => bail!("cannot save a {other:?} tensor as .npy"),
    };
    Ok(Array { shape: t.shape().to_vec(), dtype, data: t.as_bytes().to_vec() })
}
