//! Bounded parallel rewriting for streaming writers. A writer asks for tensors one at a time,
//! in a fixed order; [`Prefetch`] computes the next few of the same stream in parallel (at most
//! `window` tensors and `budget` source bytes at once), hands each out once, and drops it as soon
//! as the writer has it. Results do not depend on the thread count: each tensor is computed on
//! its own, and the writer's order decides the layout.

use std::collections::HashMap;

use anyhow::Result;
use rayon::prelude::*;

/// Source bytes computed at once, at most (one tensor is always allowed, whatever its size).
pub const DEFAULT_BUDGET: u64 = 512 << 20;

/// Lazily computed per-tensor results, fetched in stream order.
pub struct Prefetch<T, F> {
    /// Each stream: tensor ids in the order the writer will ask for them, with their sizes.
    streams: Vec<Vec<(usize, u64)>>,
    /// Where each id sits: (stream, position).
    at: HashMap<usize, (usize, usize)>,
    ready: HashMap<usize, T>,
    compute: F,
    window: usize,
    budget: u64,
}

impl<T: Send, F: Fn(usize) -> Result<T> + Sync> Prefetch<T, F> {
    /// `streams`: the id order of each writer pass (ids not listed are not computed here).
    pub fn new(streams: Vec<Vec<(usize, u64)>>, compute: F) -> Self {
        let at = streams
            .iter()
            .enumerate()
            .flat_map(|(s, ids)| ids.iter().enumerate().map(move |(p, &(id, _))| (id, (s, p))))
            .collect();
        let window = (2 * rayon::current_num_threads()).max(2);
        Self { streams, at, ready: HashMap::new(), compute, window, budget: DEFAULT_BUDGET }
    }

    /// The result for `id` (`None` if it is in no stream). Computes it, and the next ones of its
    /// stream up to the window, when it is not ready yet.
    pub fn take(&mut self, id: usize) -> Result<Option<T>> {
        let Some(&(s, p)) = self.at.get(&id) else { return Ok(None) };
        if let Some(t) = self.ready.remove(&id) {
            return Ok(Some(t));
        }
        let mut batch = vec![];
        let mut bytes = 0u64;
        for &(next, size) in &self.streams[s][p..] {
            if !batch.is_empty() && (batch.len() >= self.window || bytes + size > self.budget) {
                break;
            }
            if !self.ready.contains_key(&next) {
                batch.push(next);
                bytes += size;
            }
        }
        let compute = &self.compute;
        let done: Vec<(usize, T)> = batch.par_iter().map(|&i| compute(i).map(|t| (i, t))).collect::<Result<_>>()?;
        self.ready.extend(done);
        Ok(self.ready.remove(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_result_once_in_any_order() {
        let mut p = Prefetch::new(vec![vec![(3, 1), (5, 1), (9, 1)], vec![(1, 1)]], |i| Ok(i * 10));
        assert_eq!(p.take(3).unwrap(), Some(30));
        assert_eq!(p.take(9).unwrap(), Some(90));
        assert_eq!(p.take(5).unwrap(), Some(50));
        assert_eq!(p.take(4).unwrap(), None);
        assert_eq!(p.take(1).unwrap(), Some(10));
        assert!(p.ready.is_empty());
    }
}
