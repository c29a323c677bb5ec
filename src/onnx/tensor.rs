//! Read and write access to one `TensorProto`'s elements, whatever its storage: `raw_data`
//! (zero-copy), external data (zero-copy through the mmap) or the typed repeated fields.
//! A tensor whose `data_location` is EXTERNAL reads its external file (the spec forbids
//! `raw_data` there); otherwise `raw_data` when set, else the typed fields.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;

use super::dtype::{onnx_elem_size, onnx_type_name, FloatType};
use super::external::{ExternalRef, ExternalStore};
use super::proto::tensor_proto::DataLocation;
use super::proto::TensorProto;

/// How a tensor's payload is stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    Raw,
    External,
    Typed,
}

pub fn storage(t: &TensorProto) -> Storage {
    if t.data_location == DataLocation::External as i32 {
        Storage::External
    } else if !t.raw_data.is_empty() {
        Storage::Raw
    } else {
        Storage::Typed
    }
}

/// The tensor's shape as sizes; negative dims are malformed.
pub fn shape(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("tensor {:?} has negative dimension {d}", t.name)))
        .collect()
}

/// Number of elements, checked for overflow.
pub fn numel(t: &TensorProto) -> Result<usize> {
    shape(t)?
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow!("tensor {:?} has more elements than fit in memory", t.name))
}

/// The little-endian element bytes of a fixed-size tensor. Raw and external storage are
/// returned without copying; typed fields are encoded into a new buffer.
pub fn element_bytes(t: &TensorProto, store: &ExternalStore) -> Result<Bytes> {
    let n = numel(t)?;
    let size = onnx_elem_size(t.data_type)?;
    let bytes = match storage(t) {
        Storage::External => {
            let r = ExternalRef::parse(t)?;
            store.read(&r)?
        }
        Storage::Raw => t.raw_data.clone(),
        Storage::Typed => typed_to_bytes(t, n)?,
    };
    ensure!(
        bytes.len() == n * size,
        "tensor {:?} holds {} bytes but its shape {:?} of {} needs {}",
        t.name,
        bytes.len(),
        t.dims,
        onnx_type_name(t.data_type),
        n * size
    );
    Ok(bytes)
}

/// Encodes the typed repeated fields as little-endian bytes.
fn typed_to_bytes(t: &TensorProto, n: usize) -> Result<Bytes> {
    use super::proto::tensor_proto::DataType as D;
    let mut out = Vec::with_capacity(n * onnx_elem_size(t.data_type)?);
    match D::try_from(t.data_type).map_err(|_| anyhow!("unknown data type {}", t.data_type))? {
        D::Float => t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        D::Double => t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        D::Int64 => t.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        D::Uint64 | D::Uint32 => t.uint64_data.iter().for_each(|&v| match t.data_type {
            x if x == D::Uint32 as i32 => out.extend_from_slice(&(v as u32).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }),
        D::Int32 => t.int32_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16 => {
            t.int32_data.iter().for_each(|&v| out.extend_from_slice(&(v as u16).to_le_bytes()))
        }
        D::Int8 | D::Uint8 | D::Bool => t.int32_data.iter().for_each(|&v| out.push(v as u8)),
        other => bail!("tensor {:?}: typed storage of {} is not supported", t.name, other.as_str_name()),
    }
    Ok(Bytes::from(out))
}

/// Decodes a float tensor to f32 values (exact for f32/f16/bf16, rounded for f64), refusing
/// NaN/Inf with the tensor's name.
pub fn read_floats(t: &TensorProto, store: &ExternalStore) -> Result<(FloatType, Vec<f32>)> {
    let ft = float_type(t)?;
    let bytes = element_bytes(t, store).with_context(|| format!("reading tensor {:?}", t.name))?;
    let values = decode_f32(&t.name, ft, &bytes)?;
    // The values are copied out: the mapped pages need not stay resident.
    super::external::release_pages(&bytes);
    Ok((ft, values))
}

/// Decodes little-endian elements of type `ft` to f32, refusing non-finite values.
pub fn decode_f32(name: &str, ft: FloatType, bytes: &[u8]) -> Result<Vec<f32>> {
    let n = bytes.len() / ft.size();
    let mut out = vec![0f32; n];
    if let Some(i) = ft.decode_f32_into(&bytes[..n * ft.size()], &mut out) {
        let v = ft.read_f64(bytes, i);
        bail!("tensor {name:?} has a non-finite value ({v}) at flat index {i}");
    }
    Ok(out)
}

/// The tensor's float element type, or an error naming the unsupported type.
pub fn float_type(t: &TensorProto) -> Result<FloatType> {
    FloatType::from_onnx(t.data_type).ok_or_else(|| {
        anyhow!(
            "tensor {:?} has unsupported data type {} (prunable weights must be f32, f16, bf16 or f64)",
            t.name,
            onnx_type_name(t.data_type)
        )
    })
}

/// Replaces the tensor's payload with `raw` (little-endian elements) stored inline in
/// `raw_data`, clearing typed fields and any external reference.
pub fn set_raw(t: &mut TensorProto, raw: Bytes) {
    t.float_data.clear();
    t.double_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = DataLocation::Default as i32;
    t.raw_data = raw;
}

/// Points the tensor at a range of an external data file, dropping any inline payload.
pub fn set_external(t: &mut TensorProto, location: &str, offset: u64, length: u64) {
    use super::proto::StringStringEntryProto as Kv;
    set_raw(t, Bytes::new());
    t.data_location = DataLocation::External as i32;
    t.external_data = vec![
        Kv { key: "location".into(), value: location.into() },
        Kv { key: "offset".into(), value: offset.to_string() },
        Kv { key: "length".into(), value: length.to_string() },
    ];
}

/// A test tensor: f32 elements given as raw little-endian bytes.
#[cfg(test)]
pub(crate) fn raw_f32_fixture(name: &str, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![raw.len() as i64 / 4],
        data_type: super::proto::tensor_proto::DataType::Float as i32,
        raw_data: Bytes::from(raw),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::tensor_proto::DataType;

    fn store() -> ExternalStore {
        ExternalStore::new(std::path::Path::new("."))
    }

    #[test]
    fn typed_and_raw_storage_decode_to_the_same_values() {
        let vals = [1.5f32, -2.0, 0.0, 3.25];
        let typed = TensorProto {
            dims: vec![2, 2],
            data_type: DataType::Float as i32,
            float_data: vals.to_vec(),
            ..Default::default()
        };
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let rawt = TensorProto {
            dims: vec![2, 2],
            data_type: DataType::Float as i32,
            raw_data: raw.into(),
            ..Default::default()
        };
        let a = read_floats(&typed, &store()).unwrap().1;
        let b = read_floats(&rawt, &store()).unwrap().1;
        assert_eq!(a, b);
        assert_eq!(a, vec![1.5, -2.0, 0.0, 3.25]);
    }

    #[test]
    fn f16_typed_field_uses_low_16_bits() {
        let h = half::f16::from_f32(-0.5).to_bits() as i32;
        let t = TensorProto {
            dims: vec![1],
            data_type: DataType::Float16 as i32,
            int32_data: vec![h],
            ..Default::default()
        };
        assert_eq!(read_floats(&t, &store()).unwrap().1, vec![-0.5]);
    }

    #[test]
    fn nan_and_size_mismatch_are_errors_naming_the_tensor() {
        let t = TensorProto {
            name: "w".into(),
            dims: vec![2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, f32::NAN],
            ..Default::default()
        };
        let e = read_floats(&t, &store()).unwrap_err().to_string();
        assert!(e.contains("\"w\"") && e.contains("non-finite"), "{e}");
        let t = TensorProto {
            name: "w".into(),
            dims: vec![3],
            data_type: DataType::Float as i32,
            float_data: vec![1.0],
            ..Default::default()
        };
        let e = format!("{:#}", read_floats(&t, &store()).unwrap_err());
        assert!(e.contains("needs 12"), "{e}");
    }

    #[test]
    fn unsupported_type_is_named() {
        let t = TensorProto {
            name: "q".into(),
            dims: vec![1],
            data_type: DataType::Int8 as i32,
            int32_data: vec![1],
            ..Default::default()
        };
        let e = read_floats(&t, &store()).unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("\"q\""), "{e}");
    }
}
