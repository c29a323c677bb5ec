//! Element types of weights emprune can score and rewrite (f32, f16, bf16, f64), their ONNX
//! codes, sizes, and lossless little-endian decoding to f32/f64 and encoding back. Bulk
//! decoding ([`FloatType::decode_f32_into`]) is specialised per type: f16 with the F16C instruction (or a
//! 65,536-entry table), bf16 by a shift, f32/f64 with `chunks_exact`.

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
            Self::F16 => decode_f16(raw, out),
            Self::Bf16 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
        }
        // A value that was finite in f64 but overflows f32 is refused too (it would score inf).
        // One branch-free sweep (it vectorises); the position is only looked for when needed.
        let exponent = 0x7f80_0000u32;
        let any_bad = out.iter().fold(false, |bad, v| bad | (v.to_bits() & exponent == exponent));
        if any_bad {
            out.iter().position(|v| !v.is_finite())
        } else {
            None
        }
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
/// f16 → f32 for a whole slice, exactly: eight at a time with the F16C instruction where the
/// CPU has it (the table costs a dependent load per element), through the table otherwise.
fn decode_f16(raw: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports F16C and AVX (F16C implies AVX), checked just above.
        let done = unsafe { f16c::decode(raw, out) };
        return decode_f16_table(&raw[2 * done..], &mut out[done..]);
    }
    decode_f16_table(raw, out)
}

fn decode_f16_table(raw: &[u8], out: &mut [f32]) {
    let table = f16_table();
    for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
        *o = table[u16::from_le_bytes([c[0], c[1]]) as usize];
    }
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};

    /// Converts the leading multiple of eight elements; returns how many were converted.
    ///
    /// # Safety
    /// The CPU must support F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn decode(raw: &[u8], out: &mut [f32]) -> usize {
        let n = out.len().min(raw.len() / 2) / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 <= n`, so 16 bytes of `raw` from `2 * i` and 8 floats of `out`
            // from `i` are in bounds; both accesses are unaligned loads/stores.
            unsafe {
                let h = _mm_loadu_si128(raw.as_ptr().add(2 * i).cast::<__m128i>());
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        n
    }
}

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

    #[test]
    fn f16_fast_path_equals_the_table_for_every_bit_pattern() {
        // All 65,536 patterns (subnormals, infinities, NaNs included), from an odd byte offset
        // and with a length that is not a multiple of eight, so the tail path runs too.
        let mut raw = vec![0xffu8];
        raw.extend((0..=u16::MAX).flat_map(|b| b.to_le_bytes()));
        raw.extend([0x00, 0x3c, 0x01, 0x80, 0xff]);
        let src = &raw[1..raw.len() - 1];
        let n = src.len() / 2;
        let (mut fast, mut table) = (vec![0f32; n], vec![0f32; n]);
        decode_f16(src, &mut fast);
        decode_f16_table(src, &mut table);
        for (i, (a, b)) in fast.iter().zip(&table).enumerate() {
            // NaN payloads may differ in the quiet bit; both must stay NaN.
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "pattern {i}: {a} vs {b}");
            let want = half::f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f64();
            assert!(*a as f64 == want || (a.is_nan() && want.is_nan()), "pattern {i}");
        }
    }
}
