//! A weight's score vector as the prune passes read it. Magnitude scores are the weights
//! themselves (every cut and mass works on `|s|`), so they are decoded straight from the
//! (memory-mapped) element bytes, one [`CHUNK`] at a time into a stack buffer: no score vector
//! is allocated, however many passes read it. Other criteria hand over computed values.

use anyhow::{bail, Result};
use bytes::Bytes;

use crate::emp::chunked::CHUNK;
use crate::emp::half::{Half, Hist16};
use crate::onnx::dtype::FloatType;

/// The scores of one weight, in flat order.
pub enum Scores {
    /// Computed scores.
    Values(Vec<f32>),
    /// `|w|` of little-endian elements of `dtype` (the sign is ignored by every consumer).
    Raw { name: String, dtype: FloatType, bytes: Bytes },
}

impl Scores {
    pub fn len(&self) -> usize {
        match self {
            Scores::Values(v) => v.len(),
            Scores::Raw { dtype, bytes, .. } => bytes.len() / dtype.size(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(start, chunk)` for consecutive chunks of at most [`CHUNK`] entries, in flat
    /// order (`start` is the flat index of the chunk's first entry). Raw scores are checked to
    /// be finite; computed ones are checked by whoever sums them.
    pub fn for_chunks(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let mut buf = [0f32; CHUNK];
        for c in 0..self.len().div_ceil(CHUNK) {
            f(c * CHUNK, self.chunk(c, &mut buf)?)?;
        }
        // Read through: the mapped pages need not stay resident.
        self.release();
        Ok(())
    }

    /// The scores of chunk `c` (entries `c*CHUNK..`, at most [`CHUNK`]), decoded into `buf`
    /// if raw; a non-finite raw value is an error. Chunks may be read in any order.
    pub fn chunk<'s>(&'s self, c: usize, buf: &'s mut [f32; CHUNK]) -> Result<&'s [f32]> {
        let range = |n: usize| c * CHUNK..((c + 1) * CHUNK).min(n);
        match self {
            Scores::Values(v) => Ok(&v[range(v.len())]),
            Scores::Raw { name, dtype, bytes } => {
                let size = dtype.size();
                let r = range(self.len());
                let out = &mut buf[..r.len()];
                if let Some(j) = dtype.decode_f32_into(&bytes[r.start * size..r.end * size], out) {
                    let i = r.start + j;
                    bail!("tensor {name:?} has a non-finite value ({}) at flat index {i}", dtype.read_f64(bytes, i));
                }
                Ok(out)
            }
        }
    }

    /// Entries `start..start + out.len()` into `out` (decoded if raw; a non-finite raw value
    /// is an error naming it). For passes that read a weight out of flat order (rows).
    pub fn read(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let r = start..start + out.len();
        match self {
            Scores::Values(v) => out.copy_from_slice(&v[r]),
            Scores::Raw { name, dtype, bytes } => {
                let size = dtype.size();
                if let Some(j) = dtype.decode_f32_into(&bytes[r.start * size..r.end * size], out) {
                    let i = r.start + j;
                    bail!("tensor {name:?} has a non-finite value ({}) at flat index {i}", dtype.read_f64(bytes, i));
                }
            }
        }
        Ok(())
    }

    /// Hints the CPU to start loading entries `start..start + len` of raw scores (out of range
    /// or computed scores: nothing).
    pub fn prefetch(&self, start: usize, len: usize) {
        let Scores::Raw { dtype, bytes, .. } = self else { return };
        let size = dtype.size();
        let Some(range) = bytes.get(start * size..(start + len) * size) else { return };
        for line in range.chunks(64) {
            prefetch_line(line.as_ptr());
        }
    }

    /// The exact histogram of raw f16/bf16 magnitudes, counted in one pass over the bits
    /// (nothing decoded); `None` for other scores. A non-finite value is an error naming it.
    pub fn exact16(&self) -> Option<Result<Hist16>> {
        let Scores::Raw { dtype, bytes, .. } = self else { return None };
        let kind = match dtype {
            FloatType::F16 => Half::F16,
            FloatType::Bf16 => Half::Bf16,
            FloatType::F32 | FloatType::F64 => return None,
        };
        let h = Hist16::of(kind, bytes);
        if h.has_non_finite() {
            // The chunked decoder names the tensor and the first bad index.
            return Some(self.for_chunks(|_, _| Ok(())).and_then(|_| bail!("non-finite value in a 16-bit tensor")));
        }
        self.release();
        Some(Ok(h))
    }

    /// Hands the mapped pages of raw scores back to the kernel (they were read through).
    pub fn release(&self) {
        if let Scores::Raw { bytes, .. } = self {
            crate::onnx::external::release_pages(bytes);
        }
    }

    /// The scores as one vector (for passes that need them all at once; magnitudes if raw).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match self {
            Scores::Values(v) => Ok(v.clone()),
            raw => {
                let mut v = Vec::with_capacity(raw.len());
                raw.for_chunks(|_, s| {
                    v.extend(s.iter().map(|x| x.abs()));
                    Ok(())
                })?;
                Ok(v)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch_line(p: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch_line(_p: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_chunks_decode_in_flat_order_and_refuse_non_finite() {
        let vals: Vec<f32> = (0..CHUNK + 5).map(|i| i as f32 - 7.0).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw = Scores::Raw { name: "w".into(), dtype: FloatType::F32, bytes: Bytes::from(bytes.clone()) };
        let mut seen = vec![];
        raw.for_chunks(|start, s| {
            assert_eq!(start, seen.len());
            seen.extend_from_slice(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vals);
        assert_eq!(raw.to_vec().unwrap(), vals.iter().map(|v| v.abs()).collect::<Vec<_>>());
        let mut bad = bytes;
        bad[4 * (CHUNK + 2)..4 * (CHUNK + 3)].copy_from_slice(&f32::NAN.to_le_bytes());
        let raw = Scores::Raw { name: "w".into(), dtype: FloatType::F32, bytes: Bytes::from(bad) };
        let err = raw.for_chunks(|_, _| Ok(())).unwrap_err().to_string();
        assert!(err.contains(&format!("flat index {}", CHUNK + 2)), "{err}");
    }
}
