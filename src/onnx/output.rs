//! Where rewritten bytes go. Every output file is laid out before anything is written (each
//! tensor's offset is known), so the thread that rewrites a tensor writes it itself, piece by
//! piece, at its offset ([`Slot`]): each piece is still in the core's cache when the kernel
//! copies it into the page cache. Staging whole tensors in memory and writing them from one
//! thread made that copy read cold memory — 3-5 s of kernel time per 3.3 GB on the benchmark
//! machine against 1.1 s for 256 KiB pieces (see the README's benchmark notes).
//!
//! Writeback starts as the files are written, not at the final fsync: a [`Flusher`] thread
//! hands whatever is dirty to the disk every few milliseconds
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux, nothing elsewhere), so the disk works
//! while the next tensors are rewritten, the fsync only waits for the tail, and no rewriting
//! thread ever blocks on submitting I/O (kicking from the rewriting threads left the disk idle
//! in bursts and added 0.9 s of fsync to a 1 GB save).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A receiver of one tensor's new bytes, written as pieces at byte offsets within the tensor
/// (in any order, from any thread; together they must cover it exactly once).
pub trait Sink: Sync {
    fn put(&self, at: usize, bytes: &[u8]) -> Result<()>;
}

/// An output file of a fixed length, written at known offsets from many threads.
pub struct OutFile {
    file: File,
    path: PathBuf,
}

impl OutFile {
    /// Creates (or truncates) `path` with length `len`; ranges never written read as zeros.
    pub fn create(path: &Path, len: u64) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        file.set_len(len).with_context(|| format!("cannot size {} to {len} bytes", path.display()))?;
        Ok(OutFile { file, path: path.to_path_buf() })
    }

    /// Writes `bytes` at `offset`.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        write_all_at(&self.file, bytes, offset).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Flushes everything to disk.
    pub fn finish(self) -> Result<()> {
        self.file.sync_all().with_context(|| format!("cannot sync {}", self.path.display()))
    }
}

/// One tensor's place in an [`OutFile`]: pieces land at `base + at`, never past the tensor's
/// end, and the bytes received are counted so a rewrite that leaves a gap is caught.
pub struct Slot<'f> {
    file: &'f OutFile,
    base: u64,
    len: u64,
    received: AtomicU64,
}

impl<'f> Slot<'f> {
    pub fn new(file: &'f OutFile, base: u64, len: u64) -> Self {
        Slot { file, base, len, received: AtomicU64::new(0) }
    }

    /// Checks that exactly the tensor's length arrived.
    pub fn close(self, name: &str) -> Result<()> {
        let got = self.received.load(Ordering::Relaxed);
        if got != self.len {
            bail!("internal error: tensor {name:?} received {got} of its {} bytes", self.len);
        }
        Ok(())
    }
}

impl Sink for Slot<'_> {
    fn put(&self, at: usize, bytes: &[u8]) -> Result<()> {
        let end = at as u64 + bytes.len() as u64;
        if end > self.len {
            bail!("internal error: a {}-byte piece at {at} passes the tensor's {} bytes", bytes.len(), self.len);
        }
        self.file.write_at(self.base + at as u64, bytes)?;
        self.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Starts the writeback of everything dirty in some files, every [`FLUSH_EVERY`], on its own
/// thread, until stopped.
pub struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How often the [`Flusher`] hands dirty pages to the disk.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

impl Flusher {
    /// Starts flushing `files` (a hint only: if the descriptors cannot be shared or the
    /// thread cannot start, the fsync at the end does all the work).
    pub fn start(files: &[&OutFile]) -> Flusher {
        let files: Vec<File> = files.iter().filter_map(|f| f.file.try_clone().ok()).collect();
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("emprune-flush".into())
            .spawn(move || loop {
                match rx.recv_timeout(FLUSH_EVERY) {
                    Err(RecvTimeoutError::Timeout) => files.iter().for_each(start_writeback),
                    _ => return,
                }
            })
            .ok();
        Flusher { stop: Some(tx), thread }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sink into memory, for rewrites whose result stays in the model message.
pub struct ToVec(Mutex<Vec<u8>>);

impl ToVec {
    pub fn new(len: usize) -> Self {
        ToVec(Mutex::new(vec![0u8; len]))
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for ToVec {
    fn put(&self, at: usize, bytes: &[u8]) -> Result<()> {
        let Ok(mut v) = self.0.lock() else { bail!("internal error: a rewrite task panicked") };
        let Some(dst) = v.get_mut(at..at + bytes.len()) else {
            bail!("internal error: a {}-byte piece at {at} passes the tensor's end", bytes.len())
        };
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

/// A sink that keeps nothing, for passes that only count (`inspect`).
pub struct Discard;

impl Sink for Discard {
    fn put(&self, _at: usize, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, bytes, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Queues every dirty page of `file` for writeback without waiting for it (errors are only
/// reported by the fsync that follows).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed. Length 0 means
    // "to the end of the file".
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_take_pieces_in_any_order_and_catch_gaps_and_overruns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let f = OutFile::create(&path, 40).unwrap();
        let slot = Slot::new(&f, 8, 24);
        slot.put(16, &[3u8; 8]).unwrap();
        slot.put(0, &[1u8; 16]).unwrap();
        assert!(slot.put(20, &[9u8; 8]).unwrap_err().to_string().contains("passes"));
        slot.close("t").unwrap();
        let short = Slot::new(&f, 0, 8);
        short.put(0, &[5u8; 4]).unwrap();
        assert!(short.close("s").unwrap_err().to_string().contains("received 4 of its 8"));
        f.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        let mut want = vec![0u8; 40];
        want[..4].fill(5);
        want[8..24].fill(1);
        want[24..32].fill(3);
        assert_eq!(got, want, "unwritten ranges read as zeros");
    }

    #[test]
    fn memory_sink_places_pieces() {
        let v = ToVec::new(6);
        v.put(4, &[7, 8]).unwrap();
        v.put(0, &[1, 2, 3, 4]).unwrap();
        assert!(v.put(5, &[1, 2]).is_err());
        assert_eq!(v.into_inner(), vec![1, 2, 3, 4, 7, 8]);
    }
}
