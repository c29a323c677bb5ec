//! The byte layout of a save, decided before anything is written: where each tensor payload
//! goes in the data file (4096-aligned offsets) and in the model file, and the model file's
//! other bytes. Knowing every offset up front lets many threads write payloads at once, each
//! straight from where it was computed (see [`super::output`]).
//!
//! The model file is laid out as a stream of fields: the model without its graph, the graph
//! without its initializers, then each initializer with its `raw_data` last. Protobuf accepts
//! fields in any order and merges repeated ones in order, so this decodes to the same message
//! (tested). Nothing is copied: payloads are the input's bytes (`Bytes` slices of the maps).

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use prost::Message;

use super::external::ExternalStore;
use super::proto::{ModelProto, TensorProto};
use super::tensor::{self, Storage};
use super::walk::visit_tensors_mut;

/// Data-file payloads start at multiples of this.
pub const ALIGN: u64 = 4096;
/// Unchanged model-file payloads at least this large are written on their own (in parallel);
/// smaller ones travel with the model file's other bytes.
const OWN_WRITE: usize = 1 << 20;

/// One tensor payload in an output file.
#[derive(Debug)]
pub struct Payload {
    /// The tensor's id in walk order.
    pub id: usize,
    pub name: String,
    pub offset: u64,
    /// The input's bytes: written as they are unless `rewrite`; their length is the payload's.
    pub source: Bytes,
    /// The caller supplies new bytes of the same length.
    pub rewrite: bool,
}

/// One output file: its length, the byte runs that are not payloads, and the payloads.
#[derive(Debug, Default)]
pub struct FileLayout {
    pub len: u64,
    pub fixed: Vec<(u64, Vec<u8>)>,
    pub payloads: Vec<Payload>,
}

/// Both files of a save.
#[derive(Debug)]
pub struct Layout {
    /// `None` when no tensor is external.
    pub data: Option<FileLayout>,
    pub model: FileLayout,
}

/// Lays out `proto`: tensors in `to_external` go to the data file (referenced as `location`),
/// the rest stay in the model file; payloads of tensors in `rewrite` are left to the caller.
pub fn plan(
    mut proto: ModelProto,
    store: &ExternalStore,
    to_external: &HashSet<usize>,
    rewrite: &HashSet<usize>,
    location: &str,
) -> Result<Layout> {
    let data = match to_external.is_empty() {
        true => None,
        false => Some(plan_data(&mut proto, store, to_external, rewrite, location)?),
    };
    let len = proto.encoded_len() as u64;
    let model = plan_model(proto, rewrite)?;
    ensure!(model.len == len, "internal error: laid out {} bytes of a {len}-byte model", model.len);
    Ok(Layout { data, model })
}

/// Every tensor of `set`, in walk order at aligned offsets, now pointing at `location`.
fn plan_data(
    proto: &mut ModelProto,
    store: &ExternalStore,
    set: &HashSet<usize>,
    rewrite: &HashSet<usize>,
    location: &str,
) -> Result<FileLayout> {
    let mut file = FileLayout::default();
    visit_tensors_mut(proto, &mut |id, t| {
        if !set.contains(&id) {
            return Ok(());
        }
        let source = tensor::element_bytes(t, store).with_context(|| format!("tensor {:?}", t.name))?;
        let offset = file.len.next_multiple_of(ALIGN);
        let n = source.len() as u64;
        tensor::set_external(t, location, offset, n);
        file.payloads.push(Payload { id, name: t.name.clone(), offset, source, rewrite: rewrite.contains(&id) });
        file.len = offset + n;
        Ok(())
    })?;
    Ok(file)
}

/// The model file as a stream of fields (see the module header). Main-graph initializers are
/// the first tensors in walk order, so their ids are their positions.
fn plan_model(mut proto: ModelProto, rewrite: &HashSet<usize>) -> Result<FileLayout> {
    let mut w = Fixed::default();
    let graph = proto.graph.take();
    w.bytes(&proto.encode_to_vec());
    if let Some(mut g) = graph {
        let inits = std::mem::take(&mut g.initializer);
        let sizes: Vec<usize> = inits.iter().map(|t| t.encoded_len()).collect();
        let graph_len = g.encoded_len() + sizes.iter().map(|&n| 1 + varint_len(n as u64) + n).sum::<usize>();
        w.len_field(7, graph_len);
        w.bytes(&g.encode_to_vec());
        drop(g);
        for ((id, t), size) in inits.into_iter().enumerate().zip(sizes) {
            w.len_field(5, size);
            initializer(&mut w, id, t, rewrite.contains(&id));
        }
    }
    Ok(w.finish())
}

/// One initializer's body, its `raw_data` last: a payload of its own when it is rewritten or
/// large, else inline with the other bytes.
fn initializer(w: &mut Fixed, id: usize, mut t: TensorProto, rewritten: bool) {
    if t.raw_data.is_empty() || tensor::storage(&t) == Storage::External {
        w.bytes(&t.encode_to_vec());
        return;
    }
    let raw = std::mem::take(&mut t.raw_data);
    w.bytes(&t.encode_to_vec());
    w.len_field(9, raw.len());
    if rewritten || raw.len() >= OWN_WRITE {
        w.payload(Payload { id, name: t.name, offset: 0, source: raw, rewrite: rewritten });
    } else {
        w.bytes(&raw);
    }
}

/// Builds a [`FileLayout`] front to back.
#[derive(Default)]
struct Fixed {
    file: FileLayout,
    run: Vec<u8>,
}

impl Fixed {
    fn bytes(&mut self, b: &[u8]) {
        self.run.extend_from_slice(b);
    }

    /// Key of a length-delimited field, then the length.
    fn len_field(&mut self, tag: u32, len: usize) {
        put_varint(&mut self.run, ((tag as u64) << 3) | 2);
        put_varint(&mut self.run, len as u64);
    }

    fn payload(&mut self, mut p: Payload) {
        self.close_run();
        p.offset = self.file.len;
        self.file.len += p.source.len() as u64;
        self.file.payloads.push(p);
    }

    fn close_run(&mut self) {
        if !self.run.is_empty() {
            let run = std::mem::take(&mut self.run);
            let n = run.len() as u64;
            self.file.fixed.push((self.file.len, run));
            self.file.len += n;
        }
    }

    fn finish(mut self) -> FileLayout {
        self.close_run();
        self.file
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{GraphProto, NodeProto};

    fn t(name: &str, bytes: usize) -> TensorProto {
        tensor::raw_f32_fixture(name, (0..bytes).map(|i| (i % 251) as u8).collect())
    }

    fn model() -> ModelProto {
        let typed = TensorProto {
            name: "typed".into(),
            dims: vec![2],
            data_type: 1,
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            producer_name: "p".into(),
            graph: Some(GraphProto {
                name: "g".into(),
                node: vec![NodeProto { op_type: "Relu".into(), ..Default::default() }],
                initializer: vec![t("a", 12), typed, t("b", 160), t("big", OWN_WRITE + 4)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The bytes a layout describes, with `fill` supplying rewritten payloads.
    fn assemble(f: &FileLayout, fill: impl Fn(&Payload) -> Vec<u8>) -> Vec<u8> {
        let mut out = vec![0u8; f.len as usize];
        for (at, run) in &f.fixed {
            out[*at as usize..][..run.len()].copy_from_slice(run);
        }
        for p in &f.payloads {
            let b = if p.rewrite { fill(p) } else { p.source.to_vec() };
            assert_eq!(b.len(), p.source.len());
            out[p.offset as usize..][..b.len()].copy_from_slice(&b);
        }
        out
    }

    #[test]
    fn the_model_file_stream_decodes_to_the_same_message() {
        let proto = model();
        let store = ExternalStore::new(std::path::Path::new("."));
        let layout = plan(proto.clone(), &store, &HashSet::new(), &HashSet::from([2]), "x.data").unwrap();
        assert!(layout.data.is_none());
        let ids: Vec<(usize, bool)> = layout.model.payloads.iter().map(|p| (p.id, p.rewrite)).collect();
        assert_eq!(ids, vec![(2, true), (3, false)], "the rewritten tensor and the large one are written apart");
        let bytes = assemble(&layout.model, |p| vec![0u8; p.source.len()]);
        assert_eq!(bytes.len(), proto.encoded_len());
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        let mut want = proto;
        want.graph.as_mut().unwrap().initializer[2].raw_data = Bytes::from(vec![0u8; 160]);
        assert_eq!(back, want);
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = vec![];
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn data_file_payloads_are_aligned_and_referenced() {
        let proto = model();
        let store = ExternalStore::new(std::path::Path::new("."));
        let moved = HashSet::from([0, 1, 2]);
        let layout = plan(proto.clone(), &store, &moved, &HashSet::from([1]), "m.onnx.data").unwrap();
        let data = layout.data.unwrap();
        let offsets: Vec<u64> = data.payloads.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![0, ALIGN, 2 * ALIGN], "each payload starts on a 4096-byte boundary");
        assert_eq!(data.len, 2 * ALIGN + 160);
        // The typed tensor travels as raw little-endian bytes.
        assert_eq!(data.payloads[1].source[..], [1f32.to_le_bytes(), 2f32.to_le_bytes()].concat());
        let bytes = assemble(&layout.model, |_| unreachable!("nothing inline is rewritten"));
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        let inits = &back.graph.unwrap().initializer;
        for (i, t) in inits.iter().enumerate().take(3) {
            assert_eq!(tensor::storage(t), Storage::External, "initializer {i}");
            let r = crate::onnx::external::ExternalRef::parse(t).unwrap();
            assert_eq!((r.location.as_str(), r.offset), ("m.onnx.data", offsets[i]));
        }
        assert_eq!(inits[3].raw_data, proto.graph.unwrap().initializer[3].raw_data, "the rest stays inline");
    }
}
