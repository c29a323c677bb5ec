//! Sparse output (`--format sparse`): the CSR form of pruned weights, and the conversion of
//! dense-zeroed weights to ONNX `SparseTensorProto`s.
//!
//! * CSR: rows are output units (the rows of `--scope row`), columns the entries feeding one
//!   unit in stored flat order — a weight is viewed as `[out, rest]`, so MatMul B `[in, out]`
//!   gives the CSR of its transpose. [`csr`] builds it with `sprs`.
//! * On disk: values `[NNZ]` and INT64 indices `[NNZ]` linearized row-major over the *stored*
//!   shape (strictly ascending, i.e. CSR order of the stored layout), indices in `int64_data`
//!   (varint) or `raw_data`, whichever is smaller. A weight is converted only when its sparse
//!   message is smaller than its dense one. Initializers move to `graph.sparse_initializer`;
//!   `Constant` weights get a `sparse_value` where the opset allows it (≥ 11), else stay dense.
//!
//! "Zero" is the all-zero bit pattern: a kept `-0.0` is stored as a value, so the sparse tensor
//! densifies back to the dense-zeroed tensor bit for bit.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;
use sprs::CsMat;

use crate::onnx::load::Model;
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{AttributeProto, ModelProto, SparseTensorProto, TensorProto};
use crate::onnx::walk::{is_default_domain, visit_graphs_mut, Index, Site};
use crate::prune::rows::Rows;
use crate::weights::Weight;

/// The lowest IR version with `sparse_initializer` and `SparseTensorProto`.
pub const SPARSE_MIN_IR: i64 = 6;
/// The lowest default-domain opset whose `Constant` has `sparse_value`.
pub const SPARSE_CONSTANT_MIN_OPSET: i64 = 11;

/// The CSR matrix `[out units, entries per unit]` of a weight's flat values.
pub fn csr(shape: &[usize], unit_axes: &[usize], values: &[f32]) -> CsMat<f32> {
    let rows = Rows::new(shape, unit_axes);
    let ids = rows.ids();
    let mut count = vec![0usize; rows.count + 1];
    for (&r, &v) in ids.iter().zip(values) {
        if v.to_bits() != 0 {
            count[r as usize + 1] += 1;
        }
    }
    for r in 0..rows.count {
        count[r + 1] += count[r];
    }
    let indptr = count.clone();
    let nnz = indptr[rows.count];
    let (mut cols, mut data) = (vec![0usize; nnz], vec![0f32; nnz]);
    let mut fill = count;
    let mut col = vec![0usize; rows.count];
    for (&r, &v) in ids.iter().zip(values) {
        let r = r as usize;
        if v.to_bits() != 0 {
            cols[fill[r]] = col[r];
            data[fill[r]] = v;
            fill[r] += 1;
        }
        col[r] += 1;
    }
    CsMat::new((rows.count, rows.len), indptr, cols, data)
}

/// The CSR form of weight `w` as currently stored in `model` (e.g. a pruned model, dense or
/// sparse on disk: sparse tensors are densified at load).
pub fn weight_csr(model: &Model, ix: &Index, w: &Weight) -> Result<CsMat<f32>> {
    let (_, values) = crate::onnx::tensor::read_floats(ix.tensors[w.id].tensor, &model.external)
        .with_context(|| format!("weight {:?}", w.name))?;
    Ok(csr(&w.shape, &w.unit_axes, &values))
}

/// A dense tensor's sparse encoding (values keep the dense tensor's name and type).
pub fn encode(name: &str, data_type: i32, dims: &[i64], raw: &[u8], elem: usize) -> SparseTensorProto {
    let mut idx = vec![];
    let mut vals = Vec::new();
    for (i, e) in raw.chunks_exact(elem).enumerate() {
        if e.iter().any(|&b| b != 0) {
            idx.push(i as i64);
            vals.extend_from_slice(e);
        }
    }
    let nnz = idx.len() as i64;
    let values = TensorProto {
        name: name.into(),
        dims: vec![nnz],
        data_type,
        raw_data: Bytes::from(vals),
        ..Default::default()
    };
    let mut indices = TensorProto { dims: vec![nnz], data_type: DataType::Int64 as i32, ..Default::default() };
    let varint: usize = idx.iter().map(|&i| prost::encoding::encoded_len_varint(i as u64)).sum();
    if varint <= idx.len() * 8 {
        indices.int64_data = idx;
    } else {
        indices.raw_data = Bytes::from(idx.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
    }
    SparseTensorProto { values: Some(values), indices: Some(indices), dims: dims.to_vec() }
}

/// What happened to one candidate tensor.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub sparse: bool,
    /// Encoded bytes saved (dense message − sparse message; 0 when left dense).
    pub bytes_saved: u64,
    /// Why a smaller encoding was not used, if it was not (e.g. opset too old).
    pub note: Option<String>,
}

/// The result of converting a model.
#[derive(Debug, Default)]
pub struct Converted {
    /// Per candidate tensor id (ids of the model before conversion).
    pub outcomes: HashMap<usize, Outcome>,
    /// `remap[new_id] = old_id` for the tensors still dense after conversion.
    pub remap: Vec<usize>,
}

/// Converts the candidate tensors of `proto` to sparse where that is smaller. `payload(id,
/// tensor)` returns a candidate's dense little-endian elements (the zeroed weight) or `None`
/// for tensors that are not candidates.
pub fn sparsify(
    proto: &mut ModelProto,
    payload: &mut dyn FnMut(usize, &TensorProto) -> Result<Option<Bytes>>,
) -> Result<Converted> {
    let constants_ok = default_opset(proto) >= SPARSE_CONSTANT_MIN_OPSET;
    let mut out = Converted::default();
    // (graph index, value name, is Constant) → sparse tensor
    let mut moves: HashMap<(usize, String), SparseTensorProto> = HashMap::new();
    {
        let ix = Index::build(proto);
        for e in &ix.tensors {
            let Some(raw) = payload(e.id, e.tensor)? else { continue };
            let elem = crate::onnx::dtype::onnx_elem_size(e.tensor.data_type)
                .with_context(|| format!("tensor {:?}", e.value))?;
            let s = encode(&e.value, e.tensor.data_type, &e.tensor.dims, &raw, elem);
            let dense_len = dense_len(e.tensor, raw.len()) as u64;
            let sparse_len = s.encoded_len() as u64;
            let is_const = matches!(e.site, Site::Constant { .. });
            let mut o = Outcome::default();
            if sparse_len >= dense_len {
                // dense is smaller: leave it
            } else if is_const && !constants_ok {
                o.note = Some(format!(
                    "Constant {:?} stays dense: sparse_value needs opset >= {SPARSE_CONSTANT_MIN_OPSET}",
                    e.value
                ));
            } else {
                o.sparse = true;
                o.bytes_saved = dense_len - sparse_len;
                moves.insert((e.graph, e.value.clone()), s);
            }
            out.outcomes.insert(e.id, o);
        }
        out.remap =
            ix.tensors.iter().filter(|e| !out.outcomes.get(&e.id).is_some_and(|o| o.sparse)).map(|e| e.id).collect();
    }
    if moves.is_empty() {
        return Ok(out);
    }
    apply_moves(proto, &mut moves);
    anyhow::ensure!(moves.is_empty(), "internal error: {} sparse tensors found no place", moves.len());
    proto.ir_version = proto.ir_version.max(SPARSE_MIN_IR);
    Ok(out)
}

/// Size of the dense tensor message once its payload is inline raw bytes.
fn dense_len(t: &TensorProto, payload: usize) -> usize {
    let mut shell = t.clone();
    crate::onnx::tensor::set_raw(&mut shell, Bytes::new());
    shell.encoded_len() + 1 + prost::encoding::encoded_len_varint(payload as u64) + payload
}

/// Moves each tensor in `moves` out of `graph.initializer` / its `Constant`'s `value`.
/// Graphs are numbered in preorder, as in [`Index::build`].
fn apply_moves(proto: &mut ModelProto, moves: &mut HashMap<(usize, String), SparseTensorProto>) {
    let mut gid = 0usize;
    visit_graphs_mut(proto, &mut |g| {
        let here = gid;
        gid += 1;
        let mut kept = Vec::with_capacity(g.initializer.len());
        for t in std::mem::take(&mut g.initializer) {
            match moves.remove(&(here, t.name.clone())) {
                Some(s) => g.sparse_initializer.push(s),
                None => kept.push(t),
            }
        }
        g.initializer = kept;
        for node in g.node.iter_mut() {
            if node.op_type != "Constant" || !is_default_domain(&node.domain) {
                continue;
            }
            let Some(out) = node.output.first() else { continue };
            let Some(s) = moves.remove(&(here, out.clone())) else { continue };
            if let Some(a) = node.attribute.iter_mut().find(|a| a.name == "value") {
                *a = AttributeProto {
                    name: "sparse_value".into(),
                    r#type: AttributeType::SparseTensor as i32,
                    sparse_tensor: Some(s),
                    ..Default::default()
                };
            }
        }
    });
}

/// The model's default-domain opset version (0 if none is declared).
fn default_opset(proto: &ModelProto) -> i64 {
    proto.opset_import.iter().filter(|o| is_default_domain(&o.domain)).map(|o| o.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::external::ExternalStore;
    use crate::onnx::proto::{GraphProto, NodeProto, OperatorSetIdProto};

    fn raw(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn csr_rows_are_output_units() {
        // MatMul B [in=2, out=3]: rows are columns of the stored matrix.
        let b = [1.0, 0.0, 2.0, 0.0, 3.0, -0.0];
        let m = csr(&[2, 3], &[1], &b);
        assert_eq!(m.shape(), (3, 2));
        assert_eq!(m.indptr().raw_storage(), &[0, 1, 2, 4]);
        assert_eq!(m.indices(), &[0, 1, 0, 1]);
        assert_eq!(m.data()[..3], [1.0, 3.0, 2.0]);
        assert!(m.data()[3].is_sign_negative(), "-0.0 is a stored value");
    }

    #[test]
    fn encoding_round_trips_bit_for_bit_and_uses_ascending_linear_indices() {
        let v = [0.0, 1.5, 0.0, -0.0, 7.0, 0.0];
        let s = encode("w", DataType::Float as i32, &[2, 3], &raw(&v), 4);
        assert_eq!(s.indices.as_ref().unwrap().int64_data, [1, 3, 4]);
        let d = crate::onnx::sparse::to_dense(&s, &ExternalStore::new(std::path::Path::new("."))).unwrap();
        assert_eq!(&d.raw_data[..], &raw(&v)[..]);
        assert_eq!(d.dims, [2, 3]);
    }

    #[test]
    fn large_indices_go_raw_when_that_is_smaller() {
        // indices ≥ 2^56 need 9+ varint bytes; a tensor cannot hold that many, so varint wins
        // for every real size: check the choice on a plausible one.
        let mut v = vec![0f32; 1 << 15];
        v[(1 << 15) - 1] = 1.0;
        let s = encode("w", DataType::Float as i32, &[1 << 15], &raw(&v), 4);
        assert_eq!(s.indices.unwrap().int64_data, [(1 << 15) - 1]);
    }

    fn model(opset: i64) -> ModelProto {
        let dense = |name: &str, v: &[f32]| TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: DataType::Float as i32,
            raw_data: raw(v).into(),
            ..Default::default()
        };
        let c = NodeProto {
            op_type: "Constant".into(),
            output: vec!["c".into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                r#type: AttributeType::Tensor as i32,
                t: Some(dense("c", &[0.0; 64])),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut sparse_w = vec![0f32; 64];
        sparse_w[3] = 1.0;
        let g = GraphProto {
            initializer: vec![dense("a", &[1.0; 4]), dense("w", &sparse_w), dense("z", &[2.0; 4])],
            node: vec![c],
            ..Default::default()
        };
        ModelProto {
            ir_version: 4,
            graph: Some(g),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            ..Default::default()
        }
    }

    fn run(m: &mut ModelProto) -> Converted {
        sparsify(m, &mut |id, t| Ok((id == 1 || id == 3).then(|| t.raw_data.clone()))).unwrap()
    }

    #[test]
    fn converts_initializers_and_constants_and_remaps_ids() {
        let mut m = model(17);
        let c = run(&mut m);
        assert!(c.outcomes[&1].sparse && c.outcomes[&3].sparse);
        assert_eq!(c.remap, [0, 2]);
        assert_eq!(m.ir_version, 6);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.initializer.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "z"]);
        assert_eq!(g.sparse_initializer[0].values.as_ref().unwrap().name, "w");
        assert_eq!(g.node[0].attribute[0].name, "sparse_value");
    }

    #[test]
    fn constants_stay_dense_below_opset_11() {
        let mut m = model(9);
        let c = run(&mut m);
        assert!(c.outcomes[&1].sparse && !c.outcomes[&3].sparse);
        assert!(c.outcomes[&3].note.as_ref().unwrap().contains("opset"));
        assert_eq!(c.remap, [0, 2, 3]);
    }
}
