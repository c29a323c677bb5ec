//! Bounded parallel rewriting for streaming writers. A writer asks for tensors one at a time,
//! in a fixed order; [`Prefetch`] keeps the next few of the same stream computing on the rayon
//! pool while the writer writes (at most `window` tensors and `budget` source bytes ahead),
//! hands each result out once, and forgets it as soon as the writer has it. Computing overlaps
//! writing, yet results do not depend on the thread count: each tensor is computed on its own,
//! and the writer's order decides the layout.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Result};

/// Source bytes computed ahead of the writer, at most (one tensor is always allowed, whatever
/// its size).
pub const DEFAULT_BUDGET: u64 = 512 << 20;

/// Finished results, waiting for the writer.
pub struct Done<T> {
    results: Mutex<HashMap<usize, Result<T>>>,
    arrived: Condvar,
}

impl<T> Default for Done<T> {
    fn default() -> Self {
        Done { results: Mutex::new(HashMap::new()), arrived: Condvar::new() }
    }
}

impl<T> Done<T> {
    fn put(&self, id: usize, r: Result<T>) {
        if let Ok(mut m) = self.results.lock() {
            m.insert(id, r);
        }
        self.arrived.notify_all();
    }

    /// Blocks until the result of `id` has arrived, and takes it.
    fn wait(&self, id: usize) -> Result<T> {
        let mut m = self.results.lock().map_err(|_| anyhow!("internal error: a rewrite task poisoned its results"))?;
        loop {
            if let Some(r) = m.remove(&id) {
                return r;
            }
            m = self.arrived.wait(m).map_err(|_| anyhow!("internal error: a rewrite task poisoned its results"))?;
        }
    }
}

/// Per-tensor results computed ahead of a writer on the scope's thread pool.
pub struct Prefetch<'s, 'r, T, F> {
    /// Each stream: tensor ids in the order the writer will ask for them, with their sizes.
    streams: Vec<Vec<(usize, u64)>>,
    /// Where each id sits: (stream, position).
    at: HashMap<usize, (usize, usize)>,
    /// Ids started and not yet handed out, with their sizes.
    started: HashMap<usize, u64>,
    taken: HashSet<usize>,
    ahead: u64,
    scope: &'r rayon::Scope<'s>,
    done: &'s Done<T>,
    compute: &'s F,
    window: usize,
    budget: u64,
}

impl<'s, 'r, T: Send + 's, F: Fn(usize) -> Result<T> + Sync + 's> Prefetch<'s, 'r, T, F> {
    /// `streams`: the id order of each writer pass (ids not listed are not computed here).
    /// Work is spawned on `scope`; results meet the writer in `done`.
    pub fn new(
        scope: &'r rayon::Scope<'s>,
        done: &'s Done<T>,
        streams: Vec<Vec<(usize, u64)>>,
        compute: &'s F,
        budget: u64,
    ) -> Self {
        let at = streams
            .iter()
            .enumerate()
            .flat_map(|(s, ids)| ids.iter().enumerate().map(move |(p, &(id, _))| (id, (s, p))))
            .collect();
        let window = (2 * rayon::current_num_threads()).max(2);
        let (started, taken) = (HashMap::new(), HashSet::new());
        Self { streams, at, started, taken, ahead: 0, scope, done, compute, window, budget }
    }

    /// Starts the head of the first non-empty stream (up to the window and budget), so the
    /// pool works while the writer is still busy with what comes before the first rewritten
    /// tensor (the graph, or large tensors that are copied unchanged).
    pub fn start_ahead(&mut self) {
        let Some(first) = self.streams.iter().position(|s| !s.is_empty()) else { return };
        for k in 0..self.streams[first].len() {
            let (id, size) = self.streams[first][k];
            if k > 0 && (self.started.len() >= self.window || self.ahead + size > self.budget) {
                break;
            }
            self.start(id, size);
        }
    }

    /// The result for `id` (`None` if it is in no stream or was already handed out). Starts it
    /// if needed, keeps the following ones of its stream computing up to the window and budget,
    /// and waits for it.
    pub fn take(&mut self, id: usize) -> Result<Option<T>> {
        let Some(&(s, p)) = self.at.get(&id) else { return Ok(None) };
        if self.taken.contains(&id) {
            return Ok(None);
        }
        let size = self.streams[s][p].1;
        self.start(id, size);
        for k in p + 1..self.streams[s].len() {
            let (next, size) = self.streams[s][k];
            if self.started.len() >= self.window || self.ahead + size > self.budget {
                break;
            }
            self.start(next, size);
        }
        let r = self.done.wait(id);
        if let Some(size) = self.started.remove(&id) {
            self.ahead -= size;
        }
        self.taken.insert(id);
        r.map(Some)
    }

    fn start(&mut self, id: usize, size: u64) {
        if self.started.contains_key(&id) || self.taken.contains(&id) {
            return;
        }
        self.started.insert(id, size);
        self.ahead += size;
        let (done, compute) = (self.done, self.compute);
        self.scope.spawn(move |_| {
            // A panic must reach the writer as an error, or it would wait for ever.
            let r = catch_unwind(AssertUnwindSafe(|| compute(id)))
                .unwrap_or_else(|_| Err(anyhow!("internal error: rewriting tensor {id} panicked")));
            done.put(id, r);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn hands_out_each_result_once_in_any_order() {
        let calls = AtomicUsize::new(0);
        let compute = |i: usize| {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(i * 10)
        };
        let done = Done::default();
        rayon::in_place_scope(|scope| {
            let streams = vec![vec![(3, 1), (5, 1), (9, 1)], vec![(1, 1)]];
            let mut p = Prefetch::new(scope, &done, streams, &compute, DEFAULT_BUDGET);
            assert_eq!(p.take(3).unwrap(), Some(30));
            assert_eq!(p.take(9).unwrap(), Some(90));
            assert_eq!(p.take(5).unwrap(), Some(50));
            assert_eq!(p.take(4).unwrap(), None);
            assert_eq!(p.take(1).unwrap(), Some(10));
            assert_eq!(p.take(3).unwrap(), None, "handed out once");
            assert!(p.started.is_empty() && p.ahead == 0);
        });
        assert_eq!(calls.load(Ordering::Relaxed), 4, "each tensor computed once");
        let done2 = Done::default();
        rayon::in_place_scope(|scope| {
            let done = &done2;
            let streams = vec![vec![], vec![(4, 1), (6, 1)]];
            let mut p = Prefetch::new(scope, done, streams, &compute, DEFAULT_BUDGET);
            p.start_ahead();
            assert_eq!(p.started.len(), 2, "the head of the first non-empty stream starts at once");
            assert_eq!((p.take(4).unwrap(), p.take(6).unwrap()), (Some(40), Some(60)));
        });
        assert_eq!(calls.load(Ordering::Relaxed), 6, "each tensor computed once");
        assert!(done.results.lock().unwrap().is_empty());
    }

    #[test]
    fn stays_within_the_budget_and_reports_errors_and_panics() {
        let compute = |i: usize| match i {
            7 => Err(anyhow!("bad tensor 7")),
            8 => panic!("boom"),
            _ => Ok(i),
        };
        let done = Done::default();
        rayon::in_place_scope(|scope| {
            let streams = vec![vec![(1, 60), (2, 60), (3, 60), (7, 1), (8, 1)]];
            let mut p = Prefetch::new(scope, &done, streams, &compute, 100);
            // Two 60-byte tensors never run ahead together under a 100-byte budget.
            assert_eq!(p.take(1).unwrap(), Some(1));
            assert!(p.started.is_empty(), "2 must not have started beside 1");
            assert_eq!(p.take(2).unwrap(), Some(2));
            assert_eq!(p.take(3).unwrap(), Some(3));
            // 7 and 8 are small: 8 runs ahead while 7 is waited for.
            assert!(p.take(7).unwrap_err().to_string().contains("bad tensor 7"));
            assert!(p.started.contains_key(&8));
            assert!(p.take(8).unwrap_err().to_string().contains("panicked"));
        });
    }
}
