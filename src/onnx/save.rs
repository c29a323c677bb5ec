//! Saving a model: never over an input, atomically (temp files renamed into place), with
//! tensors that were external kept external in a new data file beside the output (offsets
//! aligned to 4096), and large tensors moved out automatically when the model file would
//! reach protobuf's 2 GiB limit.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use prost::Message;

use super::external::ExternalStore;
use super::proto::ModelProto;
use super::tensor::{self, Storage};
use super::walk::visit_tensors_mut;

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
    mut proto: ModelProto,
    store: &ExternalStore,
    out: &Path,
    inputs: &[PathBuf],
    payload: &mut Payload,
) -> Result<Saved> {
    let data = data_path(out);
    refuse_inputs(out, &data, inputs)?;
    let mut to_external = HashSet::new();
    collect_external(&mut proto, &mut to_external)?;
    let for_size = plan_size_limit(&mut proto, &mut to_external)?;
    let mut guard = TempFiles::default();
    let mut saved = Saved { externalized_for_size: for_size, ..Default::default() };
    if !to_external.is_empty() {
        let tmp = guard.temp_for(&data);
        saved.data_bytes = write_data_file(&mut proto, store, &to_external, &tmp, &data, payload)?;
        saved.data_file = Some(data.clone());
    }
    let bytes = proto.encode_to_vec();
    if bytes.len() as u64 > MODEL_FILE_LIMIT {
        bail!("the model graph alone is {} bytes, over protobuf's 2 GiB limit", bytes.len());
    }
    let tmp = guard.temp_for(out);
    write_synced(&tmp, &bytes)?;
    saved.model_bytes = bytes.len() as u64;
    guard.commit()?;
    Ok(saved)
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

/// If the model would pass the protobuf limit, moves the largest inline tensors out until it
/// fits. Returns how many were moved.
fn plan_size_limit(proto: &mut ModelProto, set: &mut HashSet<usize>) -> Result<usize> {
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
    if size <= EXTERNALIZE_TARGET {
        return Ok(0);
    }
    inline.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut moved = 0;
    for (id, len) in inline {
        if size <= EXTERNALIZE_TARGET {
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
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    visit_tensors_mut(proto, &mut |id, t| {
        if !set.contains(&id) {
            return Ok(());
        }
        let bytes = match payload(id)? {
            Some(b) => b,
            None => tensor::element_bytes(t, store).with_context(|| format!("tensor {:?}", t.name))?,
        };
        let pad = (ALIGN - offset % ALIGN) % ALIGN;
        w.write_all(&vec![0u8; pad as usize])?;
        offset += pad;
        w.write_all(&bytes)?;
        tensor::set_external(t, &location, offset, bytes.len() as u64);
        offset += bytes.len() as u64;
        Ok(())
    })?;
    let file = w.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    file.sync_all()?;
    Ok(offset)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
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
