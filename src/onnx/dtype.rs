//! Element types of weights emprune can score and rewrite (f32, f16, bf16, f64), their ONNX
//! codes, sizes, and lossless little-endian decoding to f32/f64 and encoding back. Bulk
//! decoding ([`FloatType::decode_f32_into`]) is specialised per type: f16 through a 65,536-entry
//! table, bf16 by a shift, f32/f64 with `chunks_exact`.

use anyhow::{bail, Result};

use super::proto::tensor_proto::DataType;

/// A floating-point element type that can hold prunable weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    F32,
    F16,
    Bf16,
    F64,
}

impl FloatType {
    /// Maps an ONNX `TensorProto.data_type` code; `None` for non-float types.
    pub fn from_onnx(code: i32) -> Option<Self> {
        match DataType::try_from(code).ok()? {
            DataType::Float => Some(Self::F32),
            DataType::Float16 => Some(Self::F16),
            DataType::Bfloat16 => Some(Self::Bf16),
            DataType::Double => Some(Self::F64),
            _ => None,
        }
    }

    pub fn onnx_code(self) -> i32 {
        match self {
            Self::F32 => DataType::Float as i32,
            Self::F16 => DataType::Float16 as i32,
            Self::Bf16 => DataType::Bfloat16 as i32,
            Self::F64 => DataType::Double as i32,
        }
    }

    /// Bytes per element in `raw_data` / external data.
    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::Bf16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F64 => "f64",
        }
    }

    /// Decodes every little-endian element of `raw` into `out` (same length as the element
    /// count), exactly for f32/f16/bf16 and rounded for f64. Returns the index of the first
    /// non-finite value, if any (the whole slice is decoded regardless).
    pub fn decode_f32_into(self, raw: &[u8], out: &mut [f32]) -> Option<usize> {
        debug_assert_eq!(raw.len(), out.len() * self.size());
        match self {
            Self::F32 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Self::F64 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(8)) {
                    *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
                }
            }
            Self::F16 => {
                let table = f16_table();
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = table[u16::from_le_bytes([c[0], c[1]]) as usize];
                }
            }
            Self::Bf16 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
        }
        // A value that was finite in f64 but overflows f32 is refused too (it would score inf).
        out.iter().position(|v| !v.is_finite())
    }

    /// Decodes element `i` of little-endian `raw` to f64 (exact for every type).
    #[inline]
    pub fn read_f64(self, raw: &[u8], i: usize) -> f64 {
        match self {
            Self::F32 => f32::from_le_bytes(le4(raw, i)) as f64,
            Self::F64 => f64::from_le_bytes(le8(raw, i)),
            Self::F16 => half::f16::from_bits(u16::from_le_bytes(le2(raw, i))).to_f64(),
            Self::Bf16 => half::bf16::from_bits(u16::from_le_bytes(le2(raw, i))).to_f64(),
        }
    }
}

#[inline]
fn le2(raw: &[u8], i: usize) -> [u8; 2] {
    [raw[2 * i], raw[2 * i + 1]]
}
#[inline]
fn le4(raw: &[u8], i: usize) -> [u8; 4] {
    let s = &raw[4 * i..4 * i + 4];
    [s[0], s[1], s[2], s[3]]
}
#[inline]
fn le8(raw: &[u8], i: usize) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[8 * i..8 * i + 8]);
    b
}

/// f16 bit pattern → f32 value, for all 65,536 patterns (exact; built once).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| half::f16::from_bits(b).to_f32()).collect())
}

/// Human-readable name of any ONNX data type code, for error messages and reports.
pub fn onnx_type_name(code: i32) -> String {
    match DataType::try_from(code) {
        Ok(t) => t.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("unknown type code {code}"),
    }
}

/// Byte size of one element of a fixed-size ONNX type (used for non-float tensors too).
pub fn onnx_elem_size(code: i32) -> Result<usize> {
    use DataType::*;
    Ok(match DataType::try_from(code) {
        Ok(Float | Int32 | Uint32) => 4,
        Ok(Double | Int64 | Uint64 | Complex64) => 8,
        Ok(Complex128) => 16,
        Ok(Float16 | Bfloat16 | Int16 | Uint16) => 2,
        Ok(Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz) => 1,
        _ => bail!("data type {} has no fixed element size", onnx_type_name(code)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_decoding_matches_per_element_decoding() {
        for ft in [FloatType::F32, FloatType::F64, FloatType::F16, FloatType::Bf16] {
            let n = 4096;
            let raw: Vec<u8> = (0..n * ft.size()).map(|i| (i * 37 % 251) as u8 & 0x3f).collect();
            let mut out = vec![0f32; n];
            assert_eq!(ft.decode_f32_into(&raw, &mut out), None, "{ft:?}");
            for (i, v) in out.iter().enumerate() {
                assert_eq!(v.to_bits(), (ft.read_f64(&raw, i) as f32).to_bits(), "{ft:?} at {i}");
            }
        }
        let mut out = [0f32; 2];
        assert_eq!(FloatType::F16.decode_f32_into(&[0, 0x3c, 0, 0x7c], &mut out), Some(1));
    }
}
