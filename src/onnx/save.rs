//! Saving a model: never over an input, atomically (temp files renamed into place), with
//! tensors that were external kept external in a new data file beside the output (offsets
//! aligned to 4096), and large tensors moved out automatically when the model file would
//! reach protobuf's 2 GiB limit.
//!
//! Both files are laid out first ([`layout`]), then written at known offsets: the model
//! file's small runs by this thread, the payloads by the pool — each unchanged one copied from
//! the input, each rewritten one by the caller's [`Fill`], which writes its pieces where they
//! belong as it computes them ([`super::output`]). Payloads are taken in file order, one per
//! pool thread, and their input pages are handed back to the kernel once written, so peak
//! memory is what the tensors in flight need, not the model size. Nothing is encoded into one
//! big buffer.

use std::collections::HashSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;

use super::external::{release_pages, ExternalStore};
use super::layout::{self, FileLayout, Payload, ALIGN};
use super::output::{Flusher, OutFile, Sink, Slot};
use super::proto::ModelProto;
use super::tensor::{self, Storage};
use super::walk::visit_tensors_mut;

/// Protobuf messages must stay below 2 GiB; we leave head-room for the graph itself.
pub const MODEL_FILE_LIMIT: u64 = (1 << 31) - 1;
const EXTERNALIZE_TARGET: u64 = 1_800_000_000;

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

/// Writes the new bytes of tensor `id` (same length as the input's) into the sink, in pieces
/// as they are computed. Called from the pool, for several tensors at once.
pub type Fill<'a> = dyn Fn(usize, &dyn Sink) -> Result<()> + Sync + 'a;

/// Bytes per write when a payload is copied unchanged.
const COPY_PIECE: usize = 4 << 20;

/// Writes `proto` to `out`. `store` resolves tensors that are still external. `inputs` are
/// files that must not be overwritten (the input model and its data files).
pub fn save(proto: ModelProto, store: &ExternalStore, out: &Path, inputs: &[PathBuf]) -> Result<Saved> {
    save_with(proto, store, out, inputs, &HashSet::new(), &|id, _| bail!("internal error: tensor {id} has no rewrite"))
}

/// [`save`], where the payloads of the tensors in `rewrite` (ids in walk order; main-graph
/// initializers in `raw_data` or external tensors) are written by `fill` instead of copied.
pub fn save_with(
    mut proto: ModelProto,
    store: &ExternalStore,
    out: &Path,
    inputs: &[PathBuf],
    rewrite: &HashSet<usize>,
    fill: &Fill,
) -> Result<Saved> {
    let data = data_path(out);
    refuse_inputs(out, &data, inputs)?;
    let mut to_external = HashSet::new();
    collect_external(&mut proto, &mut to_external)?;
    let for_size = plan_size_limit(&mut proto, &mut to_external, EXTERNALIZE_TARGET)?;
    let location = data
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("output name {} is not valid UTF-8", data.display()))?
        .to_string();
    let layout = layout::plan(proto, store, &to_external, rewrite, &location)?;
    if layout.model.len > MODEL_FILE_LIMIT {
        bail!("the model graph alone is {} bytes, over protobuf's 2 GiB limit", layout.model.len);
    }
    let mut guard = TempFiles::default();
    let data_out = match &layout.data {
        Some(d) => Some((OutFile::create(&guard.temp_for(&data), d.len)?, d)),
        None => None,
    };
    let model_out = OutFile::create(&guard.temp_for(out), layout.model.len)?;
    let files: Vec<(&OutFile, &FileLayout)> =
        data_out.iter().map(|(f, l)| (f, *l)).chain([(&model_out, &layout.model)]).collect();
    for (f, l) in &files {
        for (at, run) in &l.fixed {
            f.write_at(*at, run)?;
        }
    }
    let jobs: Vec<(&OutFile, &Payload)> = files.iter().flat_map(|(f, l)| l.payloads.iter().map(|p| (*f, p))).collect();
    let flusher = Flusher::start(&files.iter().map(|(f, _)| *f).collect::<Vec<_>>());
    write_payloads(&jobs, fill)?;
    drop(flusher);
    let saved = Saved {
        model_bytes: layout.model.len,
        data_file: layout.data.as_ref().map(|_| data.clone()),
        data_bytes: layout.data.as_ref().map_or(0, |d| d.len),
        externalized_for_size: for_size,
    };
    if let Some((f, _)) = data_out {
        f.finish()?;
    }
    model_out.finish()?;
    guard.commit()?;
    Ok(saved)
}

/// Writes every payload, in file order, one per pool thread at a time (rewrites may use the
/// pool within a tensor too). After an error no further payload starts; of the errors, the
/// one of the earliest payload is returned, so the message does not depend on timing (every
/// earlier payload had started, and ran to its end).
fn write_payloads(jobs: &[(&OutFile, &Payload)], fill: &Fill) -> Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::new(vec![]);
    let workers = rayon::current_num_threads().clamp(1, jobs.len().max(1));
    rayon::scope(|s| {
        for _ in 0..workers {
            s.spawn(|_| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(file, p)) = jobs.get(k) else { break };
                let r = catch_unwind(AssertUnwindSafe(|| write_payload(file, p, fill)))
                    .unwrap_or_else(|_| Err(anyhow!("internal error: writing tensor {:?} panicked", p.name)));
                if let Err(e) = r {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut errs) = errors.lock() {
                        errs.push((k, e));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    match errors.into_iter().min_by_key(|(k, _)| *k) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// One payload: rewritten by `fill` or copied from the input, then its input pages released.
fn write_payload(file: &OutFile, p: &Payload, fill: &Fill) -> Result<()> {
    let slot = Slot::new(file, p.offset, p.source.len() as u64);
    if p.rewrite {
        fill(p.id, &slot)?;
    } else {
        for (k, piece) in p.source.chunks(COPY_PIECE).enumerate() {
            slot.put(k * COPY_PIECE, piece)?;
        }
    }
    release_pages(&p.source);
    slot.close(&p.name)
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
    use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
    use bytes::Bytes;

    fn raw(name: &str, bytes: usize) -> TensorProto {
        tensor::raw_f32_fixture(name, vec![1u8; bytes])
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
    fn saved_files_hold_the_rewrites_the_copies_and_no_temp_files() {
        let g = GraphProto {
            name: "g".into(),
            node: vec![NodeProto { op_type: "Relu".into(), ..Default::default() }],
            initializer: vec![raw("a", 64), raw("b", 4 * COPY_PIECE + 12), raw("c", 40)],
            ..Default::default()
        };
        let proto = ModelProto { ir_version: 8, graph: Some(g), ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.onnx");
        let store = ExternalStore::new(dir.path());
        let fill = |id: usize, sink: &dyn Sink| {
            assert_eq!(id, 2);
            sink.put(20, &[9u8; 20])?;
            sink.put(0, &[8u8; 20])
        };
        let saved = save_with(proto.clone(), &store, &out, &[], &HashSet::from([2]), &fill).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(saved.model_bytes as usize, bytes.len());
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        let mut want = proto.clone();
        want.graph.as_mut().unwrap().initializer[2].raw_data = Bytes::from([vec![8u8; 20], vec![9u8; 20]].concat());
        assert_eq!(back, want);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.onnx")]);

        // A fill that fails (or leaves a gap) leaves no output behind.
        let out2 = dir.path().join("n.onnx");
        let short = |_: usize, sink: &dyn Sink| sink.put(0, &[1u8; 8]);
        let err = save_with(proto.clone(), &store, &out2, &[], &HashSet::from([2]), &short).unwrap_err();
        assert!(err.to_string().contains("received 8 of its 40 bytes"), "{err}");
        // Two failing tensors: the error of the first in file order is reported, whatever the
        // timing (here the first fails last, once another thread has failed on the second).
        let bad = |id: usize, _: &dyn Sink| -> Result<()> {
            if id == 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            bail!("bad tensor {id}")
        };
        for _ in 0..5 {
            let err = save_with(proto.clone(), &store, &out2, &[], &HashSet::from([0, 2]), &bad).unwrap_err();
            assert_eq!(err.to_string(), "bad tensor 0");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.onnx")], "no partial output");
    }
}
