//! Reading sparse tensors: `graph.sparse_initializer` entries and `Constant` nodes holding a
//! `sparse_value` are turned into ordinary dense tensors in memory (at load), so everything
//! downstream — scoring, pruning again, tract validation — sees one kind of tensor.
//!
//! Both index layouts of `SparseTensorProto` are accepted: `[NNZ]` linearized (row-major) and
//! `[NNZ, rank]` coordinates, in any integer type. Densified initializers are appended after
//! the dense ones of their graph, so the ids of tensors that were already dense keep their order.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;

use super::dtype::{onnx_elem_size, onnx_type_name};
use super::external::ExternalStore;
use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto};
use super::tensor;
use super::walk::{is_default_domain, visit_graphs_mut};

/// Replaces every sparse initializer and sparse `Constant` value of the model (subgraphs
/// included) by its dense equivalent. Returns how many tensors were densified.
pub fn densify_model(proto: &mut ModelProto, store: &ExternalStore) -> Result<usize> {
    let mut count = 0usize;
    let mut failure = None;
    visit_graphs_mut(proto, &mut |g| {
        if failure.is_none() {
            match densify_graph(g, store) {
                Ok(n) => count += n,
                Err(e) => failure = Some(e),
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

/// Densifies one graph's own sparse tensors (not its subgraphs').
fn densify_graph(g: &mut GraphProto, store: &ExternalStore) -> Result<usize> {
    let mut n = 0;
    for s in std::mem::take(&mut g.sparse_initializer) {
        g.initializer.push(to_dense(&s, store).context("sparse initializer")?);
        n += 1;
    }
    for node in g.node.iter_mut() {
        n += densify_constant(node, store)? as usize;
    }
    Ok(n)
}

/// Turns a `Constant` node's `sparse_value` attribute into a dense `value` attribute.
fn densify_constant(node: &mut NodeProto, store: &ExternalStore) -> Result<bool> {
    if node.op_type != "Constant" || !is_default_domain(&node.domain) {
        return Ok(false);
    }
    let Some(a) = node.attribute.iter_mut().find(|a| a.name == "sparse_value") else { return Ok(false) };
    let s = a.sparse_tensor.as_ref().ok_or_else(|| anyhow!("Constant {:?}: sparse_value is empty", node.name))?;
    let mut dense = to_dense(s, store).with_context(|| format!("Constant node {:?}", node.name))?;
    if dense.name.is_empty() {
        dense.name = node.output.first().cloned().unwrap_or_default();
    }
    *a = AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(dense),
        ..Default::default()
    };
    Ok(true)
}

/// The dense tensor a `SparseTensorProto` stands for (unlisted entries are 0).
pub fn to_dense(s: &SparseTensorProto, store: &ExternalStore) -> Result<TensorProto> {
    let values = s.values.as_ref().ok_or_else(|| anyhow!("sparse tensor without values"))?;
    let name = values.name.clone();
    let ctx = || format!("sparse tensor {name:?}");
    let shape: Vec<usize> = s
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("negative dimension {d}")))
        .collect::<Result<_>>()
        .with_context(ctx)?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| anyhow!("too many elements"))?;
    let size = onnx_elem_size(values.data_type).with_context(ctx)?;
    let vals = tensor::element_bytes(values, store).with_context(ctx)?;
    let nnz = vals.len() / size;
    let linear = match &s.indices {
        Some(ix) => linear_indices(ix, &shape, nnz, store).with_context(ctx)?,
        None if nnz == 0 => vec![],
        None => bail!("{}: {nnz} values but no indices", ctx()),
    };
    let mut out = vec![0u8; numel.checked_mul(size).ok_or_else(|| anyhow!("too many bytes"))?];
    for (k, &i) in linear.iter().enumerate() {
        ensure!(i < numel, "{}: index {i} is outside the dense shape {:?}", ctx(), shape);
        out[i * size..(i + 1) * size].copy_from_slice(&vals[k * size..(k + 1) * size]);
    }
    let mut t = TensorProto {
        name,
        dims: s.dims.clone(),
        data_type: values.data_type,
        doc_string: values.doc_string.clone(),
        ..Default::default()
    };
    tensor::set_raw(&mut t, Bytes::from(out));
    Ok(t)
}

/// The linearized (row-major) index of every value, from either index layout.
fn linear_indices(ix: &TensorProto, shape: &[usize], nnz: usize, store: &ExternalStore) -> Result<Vec<usize>> {
    let raw = int_values(ix, store)?;
    let dims = tensor::shape(ix)?;
    let rank = shape.len();
    match dims.as_slice() {
        [n] if *n == nnz => raw.iter().map(|&v| to_index(v)).collect(),
        [n, r] if *n == nnz && *r == rank => {
            let mut out = Vec::with_capacity(nnz);
            for coords in raw.chunks(rank.max(1)) {
                let mut lin = 0usize;
                for (a, &c) in coords.iter().enumerate() {
                    let c = to_index(c)?;
                    ensure!(c < shape[a], "coordinate {c} on axis {a} is outside the dense shape {shape:?}");
                    lin = lin * shape[a] + c;
                }
                out.push(lin);
            }
            Ok(out)
        }
        _ => bail!("indices of shape {dims:?} fit neither [NNZ={nnz}] nor [NNZ, rank={rank}]"),
    }
}

fn to_index(v: i128) -> Result<usize> {
    usize::try_from(v).map_err(|_| anyhow!("negative or oversized index {v}"))
}

/// Decodes an integer tensor of any integer type.
fn int_values(t: &TensorProto, store: &ExternalStore) -> Result<Vec<i128>> {
    use DataType as D;
    let b = tensor::element_bytes(t, store)?;
    let dt = D::try_from(t.data_type).map_err(|_| anyhow!("unknown index type {}", t.data_type))?;
    let take = |n: usize| b.chunks_exact(n);
    Ok(match dt {
        D::Int64 => take(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as i128).collect(),
        D::Uint64 => take(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as i128).collect(),
        D::Int32 => take(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i128).collect(),
        D::Uint32 => take(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()) as i128).collect(),
        D::Int16 => take(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i128).collect(),
        D::Uint16 => take(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i128).collect(),
        D::Int8 => b.iter().map(|&v| v as i8 as i128).collect(),
        D::Uint8 => b.iter().map(|&v| v as i128).collect(),
        _ => bail!("indices must be integers, got {}", onnx_type_name(t.data_type)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ExternalStore {
        ExternalStore::new(std::path::Path::new("."))
    }

    fn values(v: &[f32]) -> TensorProto {
        TensorProto {
            name: "w".into(),
            dims: vec![v.len() as i64],
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn dense_f32(t: &TensorProto) -> Vec<f32> {
        tensor::read_floats(t, &store()).unwrap().1
    }

    #[test]
    fn both_index_layouts_and_any_int_type() {
        let lin = TensorProto {
            dims: vec![2],
            data_type: DataType::Int32 as i32,
            int32_data: vec![1, 5],
            ..Default::default()
        };
        let s = SparseTensorProto { values: Some(values(&[2.0, -3.0])), indices: Some(lin), dims: vec![2, 3] };
        assert_eq!(dense_f32(&to_dense(&s, &store()).unwrap()), [0.0, 2.0, 0.0, 0.0, 0.0, -3.0]);
        let coo = TensorProto {
            dims: vec![2, 2],
            data_type: DataType::Int64 as i32,
            int64_data: vec![0, 1, 1, 2],
            ..Default::default()
        };
        let s = SparseTensorProto { values: Some(values(&[2.0, -3.0])), indices: Some(coo), dims: vec![2, 3] };
        assert_eq!(dense_f32(&to_dense(&s, &store()).unwrap()), [0.0, 2.0, 0.0, 0.0, 0.0, -3.0]);
    }

    #[test]
    fn out_of_range_indices_are_errors_naming_the_tensor() {
        let lin =
            TensorProto { dims: vec![1], data_type: DataType::Int64 as i32, int64_data: vec![6], ..Default::default() };
        let s = SparseTensorProto { values: Some(values(&[1.0])), indices: Some(lin), dims: vec![2, 3] };
        let e = format!("{:#}", to_dense(&s, &store()).unwrap_err());
        assert!(e.contains("\"w\"") && e.contains("outside"), "{e}");
    }

    #[test]
    fn graph_sparse_initializers_and_constants_become_dense() {
        let lin =
            TensorProto { dims: vec![1], data_type: DataType::Int64 as i32, int64_data: vec![0], ..Default::default() };
        let s = SparseTensorProto { values: Some(values(&[4.0])), indices: Some(lin), dims: vec![2] };
        let c = NodeProto {
            op_type: "Constant".into(),
            output: vec!["c".into()],
            attribute: vec![AttributeProto {
                name: "sparse_value".into(),
                r#type: AttributeType::SparseTensor as i32,
                sparse_tensor: Some(s.clone()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let g = GraphProto { sparse_initializer: vec![s], node: vec![c], ..Default::default() };
        let mut m = ModelProto { ir_version: 8, graph: Some(g), ..Default::default() };
        assert_eq!(densify_model(&mut m, &store()).unwrap(), 2);
        let g = m.graph.unwrap();
        assert!(g.sparse_initializer.is_empty());
        assert_eq!(dense_f32(&g.initializer[0]), [4.0, 0.0]);
        assert_eq!(g.node[0].attribute[0].name, "value");
        assert_eq!(dense_f32(g.node[0].attribute[0].t.as_ref().unwrap()), [4.0, 0.0]);
    }
}
