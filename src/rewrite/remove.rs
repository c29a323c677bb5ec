//! Structured output: physically remove pruned structures. Every slice a removed structure
//! owns is cut out of its tensor (producer rows, biases, norm parameters, consumer columns),
//! attributes (`group`, `num_heads`) and Reshape shape constants are rewritten, value_info that
//! could now be wrong is dropped, declared initializer inputs are resized, and constants left
//! unused are cleaned up. Every tensor is checked before (its axis has the size the analysis
//! expects) and after (it shrank by exactly the removed entries).

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;

use crate::onnx::dtype::onnx_elem_size;
use crate::onnx::external::ExternalStore;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, ModelProto, TensorProto};
use crate::onnx::tensor;
use crate::structure::Analysis;

/// Structures kept per group (`None`: the group is left whole).
pub type Keeps = Vec<Option<Vec<usize>>>;

/// Entries removed from each (tensor, axis), with the axis size the analysis expects.
type Cuts = HashMap<String, HashMap<usize, BTreeSet<usize>>>;

/// Removes the structures not in `keeps` from the main graph of `proto`.
pub fn remove(proto: &mut ModelProto, store: &ExternalStore, a: &Analysis, keeps: &Keeps) -> Result<()> {
    let kept_of = kept_per_space(a, keeps)?;
    let cuts = collect_cuts(a, &kept_of);
    let graph = proto.graph.as_mut().context("model has no graph")?;
    for (name, axes) in &cuts {
        cut_tensor(graph, store, name, axes).with_context(|| format!("removing structures from {name:?}"))?;
    }
    rewrite_attrs(graph, a, &kept_of)?;
    rewrite_shapes(graph, store, a, &kept_of)?;
    if !cuts.is_empty() {
        graph.value_info.clear();
    }
    drop_dead_constants(graph);
    Ok(())
}

/// Kept structure indices of every space (all of them for untouched groups).
fn kept_per_space(a: &Analysis, keeps: &Keeps) -> Result<Vec<Vec<usize>>> {
    let mut out: Vec<Vec<usize>> = a.spaces.iter().map(|s| (0..s.n).collect()).collect();
    for (g, keep) in a.groups.iter().zip(keeps) {
        let Some(keep) = keep else { continue };
        ensure!(!keep.is_empty(), "internal error: every structure of a group would be removed");
        ensure!(g.blocked.is_none(), "internal error: a blocked group was selected for removal");
        for (&s, &o) in g.spaces.iter().zip(&g.offsets) {
            let n = a.spaces[s].n;
            out[s] = keep.iter().filter(|&&k| k >= o && k < o + n).map(|&k| k - o).collect();
            ensure!(!out[s].is_empty(), "internal error: {} would lose every structure", a.spaces[s].producer);
        }
    }
    Ok(out)
}

fn collect_cuts(a: &Analysis, kept_of: &[Vec<usize>]) -> Cuts {
    let mut cuts: Cuts = HashMap::new();
    for (space, kept) in a.spaces.iter().zip(kept_of) {
        if kept.len() == space.n {
            continue;
        }
        let keep: HashSet<usize> = kept.iter().copied().collect();
        for s in &space.slices {
            let removed = cuts.entry(s.tensor.clone()).or_default().entry(s.axis).or_default();
            for c in s.covers(space.n).filter(|c| !keep.contains(c)) {
                removed.extend(s.entries(c));
            }
        }
    }
    cuts
}

/// Cuts the removed entries out of one constant (initializer or Constant node value).
fn cut_tensor(
    g: &mut GraphProto,
    store: &ExternalStore,
    name: &str,
    axes: &HashMap<usize, BTreeSet<usize>>,
) -> Result<()> {
    let t = find_constant(g, name).with_context(|| format!("constant {name:?} not found in the main graph"))?;
    let mut dims = tensor::shape(t)?;
    let size = onnx_elem_size(t.data_type)?;
    let mut data = tensor::element_bytes(t, store)?.to_vec();
    let mut sorted: Vec<_> = axes.iter().collect();
    sorted.sort_by_key(|(a, _)| **a);
    for (&axis, removed) in sorted {
        ensure!(axis < dims.len(), "axis {axis} out of range for shape {dims:?}");
        let before = dims[axis];
        if let Some(&last) = removed.iter().next_back() {
            ensure!(last < before, "before-check: entry {last} beyond axis {axis} of size {before}");
        }
        data = gather(&data, &dims, axis, size, removed);
        dims[axis] = before - removed.len();
        ensure!(data.len() == dims.iter().product::<usize>() * size, "after-check: size mismatch");
        ensure!(dims[axis] > 0, "after-check: axis {axis} would become empty");
    }
    let t = find_constant(g, name).context("constant vanished")?;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    tensor::set_raw(t, Bytes::from(data));
    resize_declared_input(g, name, &dims);
    Ok(())
}

/// Keeps the entries of `axis` not in `removed` (row-major bytes, element size `size`).
fn gather(data: &[u8], dims: &[usize], axis: usize, size: usize, removed: &BTreeSet<usize>) -> Vec<u8> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product::<usize>() * size;
    let keep: Vec<usize> = (0..dims[axis]).filter(|i| !removed.contains(i)).collect();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        let base = o * dims[axis] * inner;
        for &k in &keep {
            out.extend_from_slice(&data[base + k * inner..base + (k + 1) * inner]);
        }
    }
    out
}

fn find_constant<'g>(g: &'g mut GraphProto, name: &str) -> Option<&'g mut TensorProto> {
    if let Some(i) = g.initializer.iter().position(|t| t.name == name) {
        return g.initializer.get_mut(i);
    }
    g.node
        .iter_mut()
        .filter(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))
        .find_map(|n| n.attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut()))
}

/// Old-IR models list initializers among graph inputs with a shape: keep it right.
fn resize_declared_input(g: &mut GraphProto, name: &str, dims: &[usize]) {
    use crate::onnx::proto::tensor_shape_proto::{dimension::Value, Dimension};
    use crate::onnx::proto::type_proto;
    for vi in g.input.iter_mut().filter(|v| v.name == name) {
        if let Some(type_proto::Value::TensorType(tt)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(shape) = tt.shape.as_mut() {
                shape.dim = dims
                    .iter()
                    .map(|&d| Dimension { value: Some(Value::DimValue(d as i64)), ..Default::default() })
                    .collect();
            }
        }
    }
}

/// Sums `kept × factor` over the spaces that edit the same (node, attribute).
fn rewrite_attrs(g: &mut GraphProto, a: &Analysis, kept_of: &[Vec<usize>]) -> Result<()> {
    let mut totals: HashMap<(usize, String), i64> = HashMap::new();
    for (space, kept) in a.spaces.iter().zip(kept_of) {
        for e in &space.attrs {
            let end = e.first.saturating_add(e.count);
            let in_range = kept.iter().filter(|&&k| k >= e.first && k < end).count() as i64;
            *totals.entry((e.node, e.name.clone())).or_default() += in_range * e.factor;
        }
    }
    for ((node, name), value) in totals {
        let n = g.node.get_mut(node).context("attribute edit on a missing node")?;
        let attr = n
            .attribute
            .iter_mut()
            .find(|x| x.name == name)
            .with_context(|| format!("node {:?} has no attribute {name}", n.name))?;
        attr.i = value;
    }
    Ok(())
}

/// Gives each edited integer constant (Reshape shape, Split sizes, Slice starts/ends) a fresh
/// initializer holding the new values — the old constant may be shared with other nodes.
fn rewrite_shapes(g: &mut GraphProto, store: &ExternalStore, a: &Analysis, kept_of: &[Vec<usize>]) -> Result<()> {
    let mut edits: HashMap<(usize, usize), Vec<(usize, i64)>> = HashMap::new();
    let mut values: HashMap<(usize, usize, usize), i64> = HashMap::new();
    for (space, kept) in a.spaces.iter().zip(kept_of) {
        for e in &space.shapes {
            let end = e.first.saturating_add(e.count);
            let in_range = kept.iter().filter(|&&k| k >= e.first && k < end).count() as i64;
            *values.entry((e.node, e.input, e.position)).or_default() += in_range * e.factor;
        }
    }
    for ((node, input, pos), v) in values {
        edits.entry((node, input)).or_default().push((pos, v));
    }
    let mut targets: Vec<_> = edits.into_iter().collect();
    targets.sort_by_key(|(k, _)| *k);
    for ((node, input), positions) in targets {
        let name = g.node.get(node).and_then(|n| n.input.get(input)).cloned().context("edited node lost its input")?;
        let old = find_constant(g, &name).with_context(|| format!("{name:?} is not a constant"))?;
        if old.data_type != DataType::Int64 as i32 {
            bail!("{name:?} is not int64");
        }
        let mut vals: Vec<i64> = tensor::element_bytes(old, store)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        for (pos, v) in positions {
            *vals.get_mut(pos).context("shape edit out of range")? = v;
        }
        let new_name = format!("{}.pruned_in{input}", g.node[node].output.first().cloned().unwrap_or_default());
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        g.initializer.push(TensorProto {
            name: new_name.clone(),
            dims: vec![vals.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: raw.into(),
            ..Default::default()
        });
        g.node[node].input[input] = new_name;
    }
    Ok(())
}

/// Removes initializers and Constant nodes nothing reads any more (graph inputs and outputs
/// are kept).
fn drop_dead_constants(g: &mut GraphProto) {
    loop {
        let mut used: HashSet<String> = g.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
        used.extend(g.output.iter().map(|o| o.name.clone()));
        used.extend(g.input.iter().map(|i| i.name.clone()));
        // Names read inside subgraphs count as used too.
        used.extend(subgraph_reads(g));
        let before = g.initializer.len() + g.node.len();
        g.initializer.retain(|t| used.contains(&t.name));
        g.node.retain(|n| n.op_type != "Constant" || n.output.iter().any(|o| used.contains(o)));
        if g.initializer.len() + g.node.len() == before {
            break;
        }
    }
}

fn subgraph_reads(g: &GraphProto) -> Vec<String> {
    fn walk(g: &GraphProto, out: &mut Vec<String>) {
        for n in &g.node {
            out.extend(n.input.iter().cloned());
            for a in &n.attribute {
                a.g.iter().chain(a.graphs.iter()).for_each(|sg| walk(sg, out));
            }
        }
        out.extend(g.output.iter().map(|o| o.name.clone()));
    }
    let mut out = vec![];
    for n in &g.node {
        for a in &n.attribute {
            a.g.iter().chain(a.graphs.iter()).for_each(|sg| walk(sg, &mut out));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_removes_entries_along_any_axis() {
        // 2x3 of u8: [[0,1,2],[3,4,5]]
        let d: Vec<u8> = (0..6).collect();
        let rm: BTreeSet<usize> = [1].into_iter().collect();
        assert_eq!(gather(&d, &[2, 3], 1, 1, &rm), vec![0, 2, 3, 5]);
        let rm0: BTreeSet<usize> = [0].into_iter().collect();
        assert_eq!(gather(&d, &[2, 3], 0, 1, &rm0), vec![3, 4, 5]);
    }
}
