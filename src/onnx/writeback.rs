//! An output file that starts the kernel's writeback as it goes. Every output is fsynced
//! before it is renamed into place; without a hint the kernel keeps the whole output dirty in
//! the page cache until then, and the fsync waits for all of it at the end. Here, every
//! [`KICK`] bytes the range just written is handed to `sync_file_range(SYNC_FILE_RANGE_WRITE)`
//! (Linux; a no-op elsewhere), which queues it for writeback without waiting, so the disk
//! works while emprune computes the next tensors and the final fsync only waits for the tail.

use std::fs::File;
use std::io::{self, Write};

/// Bytes written between two writeback hints.
const KICK: u64 = 32 << 20;

/// A [`File`] written sequentially from its start, hinting writeback every [`KICK`] bytes.
pub struct Writeback {
    file: File,
    written: u64,
    kicked: u64,
}

impl Writeback {
    pub fn new(file: File) -> Self {
        Writeback { file, written: 0, kicked: 0 }
    }

    /// The file, once everything was written (the caller fsyncs it).
    pub fn into_inner(self) -> File {
        self.file
    }

    fn kick(&mut self) {
        if self.written - self.kicked >= KICK {
            start_writeback(&self.file, self.kicked, self.written - self.kicked);
            self.kicked = self.written;
        }
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.kick();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Queues `len` bytes from `offset` for writeback without waiting (only a hint: errors are
/// ignored here and reported by the fsync that follows).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_everything_in_order_across_hints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut w = Writeback::new(File::create(&path).unwrap());
        let block: Vec<u8> = (0..(KICK as usize / 3 + 7)).map(|i| (i % 251) as u8).collect();
        let mut want = vec![];
        for k in 0..5u8 {
            let b: Vec<u8> = block.iter().map(|x| x ^ k).collect();
            w.write_all(&b).unwrap();
            want.extend(b);
        }
        assert!(w.kicked > 0 && w.kicked <= w.written, "a hint was given within what was written");
        w.into_inner().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
