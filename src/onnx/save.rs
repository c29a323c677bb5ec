//! Saving a model: never over an input, atomically (temp files renamed into place), with
//! tensors that were external kept external in a new data file beside the output (offsets
//! aligned to 4096), and large tensors moved out automatically when the model file would
//! reach protobuf's 2 GiB limit.
//!
//! Nothing is encoded into one big buffer: the data file is written tensor by tensor, and the
//! model file is streamed field by field — the main graph's initializers one at a time, each
//! optionally replaced on the fly by a same-sized payload ([`save_streaming`]) — and the input
//! pages of every tensor written are handed back to the kernel. Writeback to disk starts as
//! the files are written ([`Writeback`]), not at the final fsync. Peak memory is the graph plus
//! the tensors a caller keeps in flight, not the model size.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use prost::Message;

use super::external::{release_pages, ExternalStore};
use super::proto::{ModelProto, TensorProto};
use super::tensor::{self, Storage};
use super::walk::visit_tensors_mut;
use super::writeback::Writeback;

/// Protobuf messages must stay below 2 GiB; we leave head-room for the graph itself.
pub const MODEL_FILE_LIMIT: u64 = (1 << 31) - 1;
const EXTERNALIZE_TARGET: u64 = 1_800_000_000;
const ALIGN: u64 = 4096;

/// What was written.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Saved {
    pub model_bytes: u64,
    pub data_file: Option<PathBuf>,
    pub data_bytes: u64,
    /// Tensors moved to external data only because the model would pass 2 GiB.
    pub externalized_for_size: usize,
}

/// Deletes a written output (model and data file): an error after writing (e.g. tract cannot
/// run the model) must not leave a file behind that looks like a result.
pub fn discard(out: &Path) {
    let _ = fs::remove_file(out);
    let _ = fs::remove_file(data_path(out));
}

/// The data file written beside `out`: `<out file name>.data`.
pub fn data_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".data");
    out.with_file_name(name)
}

/// Supplies, when the data file is written, the new payload of a tensor that is still marked
/// external (`None`: copy the input's bytes). This lets edits of external tensors stream from
/// the input map to the output file one tensor at a time.
pub type Payload<'a> = dyn FnMut(usize) -> Result<Option<Bytes>> + 'a;

/// Writes `proto` to `out`. `store` resolves tensors that are still external; `payload` may
/// replace their bytes. `inputs` are files that must not be overwritten (the input model and
/// its data files).
pub fn save(
    proto: ModelProto,
    store: &ExternalStore,
    out: &Path,
    inputs: &[PathBuf],
    payload: &mut Payload,
) -> Result<Saved> {
    save_streaming(proto, store, out, inputs, payload, &mut |_| Ok(None))
}

/// [`save`], where `inline(id)` may also replace, as the model file is written, the
/// `raw_data` of main-graph initializers that stay inline. A replacement must have the same
/// length as the bytes it replaces (dense rewrites do), so sizes are known before writing.
pub fn save_streaming(
    mut proto: ModelProto,
    store: &ExternalStore,
    out: &Path,
    inputs: &[PathBuf],
    payload: &mut Payload,
    inline: &mut Payload,
) -> Result<Saved> {
    let data = data_path(out);
    refuse_inputs(out, &data, inputs)?;
    let mut to_external = HashSet::new();
    collect_external(&mut proto, &mut to_external)?;
    let for_size = plan_size_limit(&mut proto, &mut to_external, EXTERNALIZE_TARGET)?;
    let mut guard = TempFiles::default();
    let mut saved = Saved { externalized_for_size: for_size, ..Default::default() };
    if !to_external.is_empty() {
        let tmp = guard.temp_for(&data);
        saved.data_bytes = write_data_file(&mut proto, store, &to_external, &tmp, &data, payload)?;
        saved.data_file = Some(data.clone());
    }
    let len = proto.encoded_len() as u64;
    if len > MODEL_FILE_LIMIT {
        bail!("the model graph alone is {len} bytes, over protobuf's 2 GiB limit");
    }
    let tmp = guard.temp_for(out);
    saved.model_bytes = write_model(proto, &tmp, inline)?;
    ensure!(saved.model_bytes == len, "internal error: wrote {} bytes of a {len}-byte model", saved.model_bytes);
    guard.commit()?;
    Ok(saved)
}

/// Streams `proto` to `path`: the model without its graph, then the graph without its
/// initializers, then each initializer (protobuf accepts fields in any order and merges
/// repeated ones in order, so this decodes to the same message). Returns the bytes written.
fn write_model(mut proto: ModelProto, path: &Path, inline: &mut Payload) -> Result<u64> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = Counting { inner: BufWriter::with_capacity(1 << 20, Writeback::new(file)), written: 0 };
    let graph = proto.graph.take();
    w.write_all(&proto.encode_to_vec())?;
    if let Some(mut g) = graph {
        let inits = std::mem::take(&mut g.initializer);
        let sizes: Vec<usize> = inits.iter().map(|t| t.encoded_len()).collect();
        let graph_len = g.encoded_len() + sizes.iter().map(|&n| 1 + varint_len(n as u64) + n).sum::<usize>();
        put_len_field(&mut w, 7, graph_len)?;
        w.write_all(&g.encode_to_vec())?;
        drop(g);
        for ((id, t), size) in inits.into_iter().enumerate().zip(sizes) {
            put_len_field(&mut w, 5, size)?;
            write_initializer(&mut w, id, t, inline)?;
        }
    }
    let written = w.written;
    let file = w.inner.into_inner().map_err(|e| anyhow!("writing {}: {}", path.display(), e.error()))?;
    file.into_inner().sync_all()?;
    Ok(written)
}

/// Writes one initializer's body, its `raw_data` last (replaced when `inline` says so).
fn write_initializer(w: &mut impl Write, id: usize, mut t: TensorProto, inline: &mut Payload) -> Result<()> {
    if t.raw_data.is_empty() || tensor::storage(&t) == Storage::External {
        w.write_all(&t.encode_to_vec())?;
        return Ok(());
    }
    let raw = std::mem::take(&mut t.raw_data);
    w.write_all(&t.encode_to_vec())?;
    let data = match inline(id).with_context(|| format!("tensor {:?}", t.name))? {
        Some(new) => {
            ensure!(
                new.len() == raw.len(),
                "tensor {:?}: a streamed replacement must keep its size ({} bytes, got {})",
                t.name,
                raw.len(),
                new.len()
            );
            new
        }
        None => raw.clone(),
    };
    put_len_field(w, 9, data.len())?;
    w.write_all(&data)?;
    release_pages(&raw);
    Ok(())
}

/// Key of a length-delimited field, then the length.
fn put_len_field(w: &mut impl Write, tag: u32, len: usize) -> Result<()> {
    put_varint(w, ((tag as u64) << 3) | 2)?;
    put_varint(w, len as u64)
}

fn put_varint(w: &mut impl Write, mut v: u64) -> Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        buf[n] = if v == 0 { byte } else { byte | 0x80 };
        n += 1;
        if v == 0 {
            break;
        }
    }
    w.write_all(&buf[..n])?;
    Ok(())
}

fn varint_len(v: u64) -> usize {
    ((64 - (v | 1).leading_zeros() as usize) + 6) / 7
}

/// A writer that counts the bytes going through it.
struct Counting<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn refuse_inputs(out: &Path, data: &Path, inputs: &[PathBuf]) -> Result<()> {
    let inputs: Vec<PathBuf> = inputs.iter().filter_map(|p| p.canonicalize().ok()).collect();
    for target in [out, data] {
        if let Some(c) = canonical_target(target) {
            if inputs.contains(&c) {
                bail!("refusing to overwrite input file {}", target.display());
            }
        }
    }
    Ok(())
}

/// Canonical form of a path that may not exist yet (its folder must).
fn canonical_target(p: &Path) -> Option<PathBuf> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

/// Adds every tensor that is still stored externally to `set`.
fn collect_external(proto: &mut ModelProto, set: &mut HashSet<usize>) -> Result<()> {
    visit_tensors_mut(proto, &mut |id, t| {
        if tensor::storage(t) == Storage::External {
            set.insert(id);
        }
        Ok(())
    })
}

/// If the model would pass `target` bytes (the protobuf limit less head-room), moves the
/// largest inline tensors out until it fits. Returns how many were moved.
fn plan_size_limit(proto: &mut ModelProto, set: &mut HashSet<usize>, target: u64) -> Result<usize> {
    let mut inline: Vec<(usize, u64)> = vec![];
    let mut moved_bytes = 0u64;
    visit_tensors_mut(proto, &mut |id, t| {
        let len = t.raw_data.len() as u64;
        if set.contains(&id) {
            moved_bytes += len;
        } else if len >= ALIGN {
            inline.push((id, len));
        }
        Ok(())
    })?;
    let mut size = (proto.encoded_len() as u64).saturating_sub(moved_bytes);
    if size <= target {
        return Ok(0);
    }
    inline.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut moved = 0;
    for (id, len) in inline {
        if size <= target {
            break;
        }
        set.insert(id);
        size -= len;
        moved += 1;
    }
    Ok(moved)
}

/// Writes the payload of every tensor in `set` to `tmp`, at 4096-aligned offsets, and points
/// the tensors at `final_path`'s file name. Returns the data file size.
fn write_data_file(
    proto: &mut ModelProto,
    store: &ExternalStore,
    set: &HashSet<usize>,
    tmp: &Path,
    final_path: &Path,
    payload: &mut Payload,
) -> Result<u64> {
    let location = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("output name {} is not valid UTF-8", final_path.display()))?
        .to_string();
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, Writeback::new(file));
    let mut offset = 0u64;
    visit_tensors_mut(proto, &mut |id, t| {
        if !set.contains(&id) {
            return Ok(());
        }
        let source = tensor::element_bytes(t, store).with_context(|| format!("tensor {:?}", t.name))?;
        let bytes = match payload(id)? {
            Some(b) => b,
            None => source.clone(),
        };
        let pad = (ALIGN - offset % ALIGN) % ALIGN;
        w.write_all(&vec![0u8; pad as usize])?;
        offset += pad;
        w.write_all(&bytes)?;
        tensor::set_external(t, &location, offset, bytes.len() as u64);
        offset += bytes.len() as u64;
        release_pages(&source);
        Ok(())
    })?;
    let file = w.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    file.into_inner().sync_all()?;
    Ok(offset)
}

/// Temp files renamed onto their targets on commit, deleted if dropped uncommitted, so a
/// failed run leaves no partial output.
#[derive(Default)]
struct TempFiles {
    pending: Vec<(PathBuf, PathBuf)>,
}

impl TempFiles {
    fn temp_for(&mut self, target: &Path) -> PathBuf {
        let mut name = std::ffi::OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".tmp-{}", std::process::id()));
        let tmp = target.with_file_name(name);
        self.pending.push((tmp.clone(), target.to_path_buf()));
        tmp
    }

    fn commit(mut self) -> Result<()> {
        for (tmp, target) in std::mem::take(&mut self.pending) {
            fs::rename(&tmp, &target)
                .with_context(|| format!("cannot move output into place at {}", target.display()))?;
        }
        Ok(())
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{GraphProto, NodeProto};

    fn raw(name: &str, bytes: usize) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![bytes as i64 / 4],
            data_type: 1,
            raw_data: Bytes::from(vec![1u8; bytes]),
            ..Default::default()
        }
    }

    #[test]
    fn largest_tensors_move_out_when_the_model_would_pass_the_limit() {
        let g = GraphProto {
            initializer: vec![raw("a", 8192), raw("b", 65536), raw("c", 16384), raw("d", 4)],
            ..Default::default()
        };
        let mut proto = ModelProto { ir_version: 8, graph: Some(g), ..Default::default() };
        let mut set = HashSet::new();
        assert_eq!(plan_size_limit(&mut proto, &mut set, 1 << 20).unwrap(), 0, "fits: nothing moves");
        assert!(set.is_empty());
        // Under a 20 000-byte budget the 64 KiB tensor must go, then the 16 KiB one; the
        // 8 KiB one then fits, and tiny tensors never move.
        assert_eq!(plan_size_limit(&mut proto, &mut set, 20_000).unwrap(), 2);
        assert_eq!(set, HashSet::from([1, 2]));
    }

    #[test]
    fn streamed_model_decodes_to_the_same_message() {
        let t = |name: &str, n: usize| TensorProto {
            name: name.into(),
            dims: vec![n as i64],
            data_type: 1,
            raw_data: Bytes::from(vec![7u8; 4 * n]),
            ..Default::default()
        };
        let typed = TensorProto {
            name: "typed".into(),
            dims: vec![2],
            data_type: 1,
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            producer_name: "p".into(),
            graph: Some(GraphProto {
                name: "g".into(),
                node: vec![NodeProto { op_type: "Relu".into(), ..Default::default() }],
                initializer: vec![t("a", 3), typed, t("b", 40)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let n =
            write_model(proto.clone(), &path, &mut |id| Ok((id == 2).then(|| Bytes::from(vec![0u8; 160])))).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(n as usize, bytes.len());
        assert_eq!(bytes.len(), proto.encoded_len());
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        let mut expect = proto;
        expect.graph.as_mut().unwrap().initializer[2].raw_data = Bytes::from(vec![0u8; 160]);
        assert_eq!(back, expect);
        let bad = write_model(expect, &path, &mut |_| Ok(Some(Bytes::from_static(b"xy"))));
        assert!(bad.unwrap_err().to_string().contains("keep its size"));
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = vec![];
            put_varint(&mut b, v).unwrap();
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
