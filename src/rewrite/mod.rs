//! Graph rewrites that turn a plan into a model. Each rewrite checks its result: `zero`
//! verifies that kept entries are bit-identical and dropped ones are zero.

pub mod zero;

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use bytes::Bytes;

use crate::onnx::proto::ModelProto;
use crate::onnx::tensor::{self, Storage};
use crate::onnx::walk::visit_tensors_mut;

/// New payloads for tensors, by tensor id, plus which of them were external in the input (and
/// so stay external in the output).
#[derive(Default)]
pub struct Edits {
    pub data: HashMap<usize, Bytes>,
    pub external: HashSet<usize>,
}

impl Edits {
    /// Writes the new payloads into `proto` (inline for now; `save` moves the ones in
    /// `external` to the data file).
    pub fn apply(&self, proto: &mut ModelProto) -> Result<()> {
        visit_tensors_mut(proto, &mut |id, t| {
            if let Some(b) = self.data.get(&id) {
                tensor::set_raw(t, b.clone());
            }
            Ok(())
        })
    }

    pub fn record(&mut self, id: usize, storage: Storage, data: Bytes) {
        if storage == Storage::External {
            self.external.insert(id);
        }
        self.data.insert(id, data);
    }
}
