//! Reading `.npy`/`.npz` arrays (numpy's format, C order, little-endian) into a plain
//! [`Array`], and writing `.npy` files, without a numpy dependency.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Element types numpy arrays may carry into emprune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyType {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl NpyType {
    fn from_descr(d: &str) -> Result<Self> {
        Ok(match d {
            "<f2" => Self::F16,
            "<f4" => Self::F32,
            "<f8" => Self::F64,
            "|i1" => Self::I8,
            "<i2" => Self::I16,
            "<i4" => Self::I32,
            "<i8" => Self::I64,
            "|u1" => Self::U8,
            "<u2" => Self::U16,
            "<u4" => Self::U32,
            "<u8" => Self::U64,
            "|b1" => Self::Bool,
            other => bail!("unsupported numpy dtype {other:?} (little-endian numbers and bool only)"),
        })
    }

    fn descr(self) -> &'static str {
        match self {
            Self::F16 => "<f2",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
            Self::I8 => "|i1",
            Self::I16 => "<i2",
            Self::I32 => "<i4",
            Self::I64 => "<i8",
            Self::U8 => "|u1",
            Self::U16 => "<u2",
            Self::U32 => "<u4",
            Self::U64 => "<u8",
            Self::Bool => "|b1",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 | Self::Bool => 1,
            Self::F16 | Self::I16 | Self::U16 => 2,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }
}

/// An n-d array: shape, element type and little-endian bytes in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: NpyType,
    pub data: Vec<u8>,
}

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a readable .npy file", path.display()))
}

/// Reads every array of an `.npz` archive, keyed by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not an .npz archive", path.display()))?;
    let mut out = vec![];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        let mut buf = vec![];
        entry.read_to_end(&mut buf)?;
        out.push((name.clone(), parse(&buf).with_context(|| format!("{}: array {name:?}", path.display()))?));
    }
    Ok(out)
}

fn parse(b: &[u8]) -> Result<Array> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("missing the \\x93NUMPY magic");
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                bail!("truncated header");
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy version {v}"),
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or_else(|| anyhow!("truncated header"))?)?;
    let dtype = NpyType::from_descr(&dict_value(header, "descr")?.trim_matches(|c| c == '\'' || c == '"'))?;
    if dict_value(header, "fortran_order")?.trim() != "False" {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape = parse_shape(&dict_value(header, "shape")?)?;
    let n: usize = shape.iter().product();
    let data = b[start + hlen..].to_vec();
    if data.len() != n * dtype.size() {
        bail!("holds {} bytes, shape {shape:?} needs {}", data.len(), n * dtype.size());
    }
    Ok(Array { shape, dtype, data })
}

/// The raw text of `key`'s value in numpy's header dict.
fn dict_value(header: &str, key: &str) -> Result<String> {
    let k = header.find(&format!("'{key}'")).ok_or_else(|| anyhow!("header has no {key:?}"))?;
    let rest = header[k + key.len() + 2..].trim_start().trim_start_matches(':').trim_start();
    let end = if rest.starts_with('(') { rest.find(')').map(|e| e + 1) } else { rest.find(',') };
    Ok(rest[..end.unwrap_or(rest.len())].trim().to_string())
}

fn parse_shape(s: &str) -> Result<Vec<usize>> {
    s.trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().with_context(|| format!("bad shape entry {p:?}")))
        .collect()
}

/// Writes `a` as a version-1 `.npy` file.
pub fn write_npy(path: &Path, a: &Array) -> Result<()> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!("({})", a.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", a.dtype.descr());
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&a.data);
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_our_writer() {
        let dir = tempfile::tempdir().unwrap();
        let a = Array {
            shape: vec![2, 3],
            dtype: NpyType::F32,
            data: (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        };
        let p = dir.path().join("a.npy");
        write_npy(&p, &a).unwrap();
        assert_eq!(read_npy(&p).unwrap(), a);
        let s = Array { shape: vec![], dtype: NpyType::I64, data: 7i64.to_le_bytes().to_vec() };
        write_npy(&p, &s).unwrap();
        assert_eq!(read_npy(&p).unwrap(), s);
    }

    #[test]
    fn parses_numpy_headers() {
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend((0i64..3).flat_map(|v| v.to_le_bytes()));
        let a = parse(&b).unwrap();
        assert_eq!((a.shape.clone(), a.dtype), (vec![3], NpyType::I64));
        assert!(parse(&b[..b.len() - 1]).is_err(), "truncated data must fail");
        assert!(parse(b"not numpy at all").is_err());
    }
}
