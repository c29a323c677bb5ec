//! External tensor data: resolves `location` safely inside the model folder and serves byte
//! ranges as zero-copy slices of memory-mapped data files (each file mapped once), and lets
//! writers hand pages they are done with back to the kernel ([`release_pages`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;

use super::proto::TensorProto;

/// Where one tensor's bytes live outside the model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

impl ExternalRef {
    /// Parses the `external_data` key/value list of a tensor stored with
    /// `data_location = EXTERNAL`.
    pub fn parse(t: &TensorProto) -> Result<Self> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            match kv.key.as_str() {
                "location" => location = Some(kv.value.clone()),
                "offset" => offset = parse_u64(&kv.value, "offset")?,
                "length" => length = Some(parse_u64(&kv.value, "length")?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| anyhow!("external data has no 'location' key"))?;
        Ok(Self { location, offset, length })
    }
}

fn parse_u64(v: &str, key: &str) -> Result<u64> {
    v.trim().parse().with_context(|| format!("external data '{key}' is not a non-negative integer: {v:?}"))
}

/// Lazily memory-maps the data files a model refers to, confined to the model's folder.
pub struct ExternalStore {
    dir: PathBuf,
    files: Mutex<HashMap<PathBuf, Bytes>>,
}

impl ExternalStore {
    pub fn new(model_dir: &Path) -> Self {
        Self { dir: model_dir.to_path_buf(), files: Mutex::new(HashMap::new()) }
    }

    /// The folder locations are relative to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bytes `r` designates, as a slice of the mapped file.
    pub fn read(&self, r: &ExternalRef) -> Result<Bytes> {
        let path = self.resolve(&r.location)?;
        let file = self.map(&path)?;
        let size = file.len() as u64;
        let end = match r.length {
            Some(len) => r.offset.checked_add(len).ok_or_else(|| anyhow!("offset + length overflows"))?,
            None => size,
        };
        if r.offset > size || end > size {
            bail!("external data range {}..{end} lies outside {:?} ({size} bytes)", r.offset, r.location);
        }
        Ok(file.slice(r.offset as usize..end as usize))
    }

    /// Checks that `location` names an existing file inside the model folder and returns its
    /// canonical path. Absolute paths, `..` and symlinks leading outside are refused.
    pub fn resolve(&self, location: &str) -> Result<PathBuf> {
        let rel = Path::new(location);
        if location.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            bail!("external data location {location:?} must be a relative path inside the model folder");
        }
        let dir = self.dir.canonicalize().with_context(|| format!("model folder {:?} is not accessible", self.dir))?;
        let full = dir.join(rel);
        let canon = full
            .canonicalize()
            .with_context(|| format!("external data file {location:?} is missing (looked for {full:?})"))?;
        if !canon.starts_with(&dir) {
            bail!("external data location {location:?} resolves outside the model folder (to {canon:?})");
        }
        Ok(canon)
    }

    fn map(&self, path: &Path) -> Result<Bytes> {
        let mut files = self.files.lock().map_err(|_| anyhow!("external data cache poisoned"))?;
        if let Some(b) = files.get(path) {
            return Ok(b.clone());
        }
        let bytes = map_file(path)?;
        files.insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }

    /// Canonical paths of every data file mapped so far (used to refuse overwriting inputs).
    pub fn mapped_paths(&self) -> Vec<PathBuf> {
        self.files.lock().map(|f| f.keys().cloned().collect()).unwrap_or_default()
    }
}

/// Maps a whole file read-only; an empty file gives empty bytes (mmap of length 0 fails).
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).with_context(|| format!("cannot open {path:?}"))?;
    let len = file.metadata().with_context(|| format!("cannot stat {path:?}"))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; emprune never writes to its inputs. Another process
    // truncating the file while we run is outside what any mmap-based reader can guard.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {path:?}"))?;
    let map = std::sync::Arc::new(map);
    if let Ok(mut live) = LIVE_MAPS.lock() {
        live.retain(|w| w.strong_count() > 0);
        live.push(std::sync::Arc::downgrade(&map));
    }
    Ok(Bytes::from_owner(SharedMap(map)))
}

/// A map shared between the `Bytes` that borrow it and the registry [`release_pages`] uses.
struct SharedMap(std::sync::Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Every map made by [`map_file`] that is still alive.
static LIVE_MAPS: Mutex<Vec<std::sync::Weak<memmap2::Mmap>>> = Mutex::new(Vec::new());

/// Tells the kernel that the whole pages inside `bytes` (a slice of a map made by
/// [`map_file`]) are not needed for now, so they stop counting towards our resident memory.
/// The maps are read-only and file-backed: a later read simply faults the page in again from
/// the page cache or the file. Slices of anything else are ignored; so are errors (this is
/// only a hint).
pub fn release_pages(bytes: &[u8]) {
    const PAGE: usize = 4096;
    let Ok(live) = LIVE_MAPS.lock() else { return };
    let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    for map in live.iter().filter_map(|w| w.upgrade()) {
        let base = map.as_ptr() as usize;
        if start < base || end > base + map.len() {
            continue;
        }
        // Whole pages only (page-aligned inside the map; the map itself starts on a page).
        let first = (start - base).div_ceil(PAGE) * PAGE;
        let last = (end - base) / PAGE * PAGE;
        if last > first {
            // SAFETY: DONTNEED on a read-only, file-backed private map only drops the page
            // table entries; the contents are unchanged when read again.
            #[cfg(unix)]
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escaping_locations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [1u8, 2, 3, 4]).unwrap();
        let store = ExternalStore::new(dir.path());
        assert!(store.resolve("w.bin").is_ok());
        for bad in ["../w.bin", "/etc/passwd", "", "a/../../w.bin"] {
            let err = store.resolve(bad).unwrap_err().to_string();
            assert!(err.contains("relative path inside"), "{bad}: {err}");
        }
        let missing = store.resolve("nope.bin").unwrap_err().to_string();
        assert!(missing.contains("missing"), "{missing}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlink_leaving_the_folder() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), [0u8; 8]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let err = ExternalStore::new(dir.path()).resolve("link").unwrap_err().to_string();
        assert!(err.contains("outside the model folder"), "{err}");
    }

    #[test]
    fn reads_ranges_and_rejects_out_of_bounds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d"), (0u8..16).collect::<Vec<_>>()).unwrap();
        let store = ExternalStore::new(dir.path());
        let r = ExternalRef { location: "d".into(), offset: 4, length: Some(4) };
        assert_eq!(&store.read(&r).unwrap()[..], &[4, 5, 6, 7]);
        let r = ExternalRef { location: "d".into(), offset: 12, length: Some(8) };
        assert!(store.read(&r).unwrap_err().to_string().contains("outside"));
    }
}
