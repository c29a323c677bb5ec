//! Recycled output buffers for rewritten tensors. A fresh buffer per tensor costs a page fault
//! and a cleared page for every 4 KiB written (and an unmap when it is freed) — on a 1 GB model
//! that is as much kernel time as writing the output file. Buffers handed out here come back
//! when the last [`Bytes`] pointing at them is dropped (after the writer wrote them), and the
//! next tensor reuses their already-mapped pages. The pool keeps at most [`MAX_KEPT`] buffers
//! and [`MAX_KEPT_BYTES`] bytes, so memory stays bounded by what was in flight at once.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers kept for reuse, at most.
const MAX_KEPT: usize = 16;
/// Bytes kept for reuse, at most.
const MAX_KEPT_BYTES: usize = 1 << 30;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `len` bytes whose contents are unspecified (the caller overwrites all of it):
/// the smallest kept buffer that is large enough, or a new zeroed one.
pub fn take(len: usize) -> Vec<u8> {
    let reused = POOL.lock().ok().and_then(|mut pool| {
        let best = pool.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity());
        best.map(|(i, _)| i).map(|i| pool.swap_remove(i))
    });
    match reused {
        Some(mut b) => {
            // Within capacity: no reallocation; the bytes kept are the previous tensor's.
            b.resize(len, 0);
            b.truncate(len);
            b
        }
        None => vec![0u8; len],
    }
}

/// Wraps a buffer from [`take`] so that it returns to the pool when its last user drops it.
pub fn share(buf: Vec<u8>) -> Bytes {
    Bytes::from_owner(Pooled(buf))
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

fn give_back(buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    let Ok(mut pool) = POOL.lock() else { return };
    pool.push(buf);
    // Over a limit: drop the smallest buffers first (the large ones are the costly ones).
    while pool.len() > MAX_KEPT || pool.iter().map(Vec::capacity).sum::<usize>() > MAX_KEPT_BYTES {
        let Some(i) = pool.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) else { break };
        pool.swap_remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_without_reallocating() {
        // A size no other test uses, so parallel tests cannot take this buffer.
        let len = 3 * 4096 + 17;
        let mut a = take(len);
        assert_eq!(a.len(), len);
        a.iter_mut().for_each(|b| *b = 7);
        let ptr = a.as_ptr();
        let shared = share(a);
        let copy = shared.clone();
        drop(shared);
        assert_eq!(copy[len - 1], 7, "still alive while a clone is");
        drop(copy);
        let b = take(len - 5);
        assert_eq!(b.len(), len - 5);
        assert_eq!(b.as_ptr(), ptr, "the returned buffer is reused");
        share(b);
    }

    #[test]
    fn the_pool_stays_bounded() {
        for _ in 0..3 * MAX_KEPT {
            drop(share(vec![1u8; 64]));
        }
        assert!(POOL.lock().unwrap().len() <= MAX_KEPT);
    }
}
