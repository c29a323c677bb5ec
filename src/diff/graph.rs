//! Node and graph-interface comparison. Nodes are paired by graph path and name (unnamed
//! nodes by op type and first output); a pair differs when its op, domain, inputs, outputs
//! or attributes differ. Tensor-valued attributes of `Constant` nodes are compared as tensors
//! (in the tensor table), subgraph attributes through their own nodes.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::Change;
use crate::onnx::dtype::onnx_type_name;
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use crate::onnx::proto::type_proto::Value as Ty;
use crate::onnx::proto::{AttributeProto, NodeProto, ValueInfoProto};
use crate::onnx::walk::Index;

/// A node present in only one model, or different in the two.
#[derive(Clone, Debug, Serialize)]
pub struct NodeChange {
    pub graph: String,
    pub node: String,
    pub change: Change,
    pub op_a: Option<String>,
    pub op_b: Option<String>,
    /// What differs, one line each (`attribute group: 1 -> 2`, `inputs [..] -> [..]`).
    pub details: Vec<String>,
}

/// A graph input or output that was added, removed, or whose type/shape changed.
#[derive(Clone, Debug, Serialize)]
pub struct IoChange {
    pub graph: String,
    /// `input` or `output`.
    pub kind: String,
    pub name: String,
    pub change: Change,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// The pairing key of a node and a label for display.
fn key(n: &NodeProto, i: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        format!("{}->{}", n.op_type, n.output.first().map(String::as_str).unwrap_or(&i.to_string()))
    }
}

fn nodes_by_key<'a>(ix: &'a Index) -> Vec<(String, String, &'a NodeProto)> {
    let mut out = vec![];
    for g in &ix.graphs {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, n) in g.graph.node.iter().enumerate() {
            let mut k = key(n, i);
            let c = seen.entry(k.clone()).or_default();
            *c += 1;
            if *c > 1 {
                k = format!("{k}#{c}");
            }
            out.push((g.path.clone(), k, n));
        }
    }
    out
}

pub fn compare_nodes(a: &Index, b: &Index) -> Vec<NodeChange> {
    let na = nodes_by_key(a);
    let nb = nodes_by_key(b);
    let bmap: HashMap<(&str, &str), &NodeProto> = nb.iter().map(|(g, k, n)| ((g.as_str(), k.as_str()), *n)).collect();
    let amap: HashSet<(&str, &str)> = na.iter().map(|(g, k, _)| (g.as_str(), k.as_str())).collect();
    let mut out = vec![];
    for (g, k, x) in &na {
        match bmap.get(&(g.as_str(), k.as_str())) {
            None => out.push(one_sided(g, k, x, Change::Removed)),
            Some(y) => {
                let details = node_details(x, y);
                if !details.is_empty() {
                    out.push(NodeChange {
                        graph: g.clone(),
                        node: k.clone(),
                        change: Change::Changed,
                        op_a: Some(x.op_type.clone()),
                        op_b: Some(y.op_type.clone()),
                        details,
                    });
                }
            }
        }
    }
    for (g, k, y) in &nb {
        if !amap.contains(&(g.as_str(), k.as_str())) {
            out.push(one_sided(g, k, y, Change::Added));
        }
    }
    out
}

fn one_sided(g: &str, k: &str, n: &NodeProto, change: Change) -> NodeChange {
    let op = Some(n.op_type.clone());
    let (op_a, op_b) = if change == Change::Added { (None, op) } else { (op, None) };
    NodeChange { graph: g.into(), node: k.into(), change, op_a, op_b, details: vec![] }
}

fn node_details(x: &NodeProto, y: &NodeProto) -> Vec<String> {
    let mut d = vec![];
    if x.op_type != y.op_type || x.domain != y.domain {
        d.push(format!("op {}{} -> {}{}", dom(&x.domain), x.op_type, dom(&y.domain), y.op_type));
    }
    if x.input != y.input {
        d.push(format!("inputs {:?} -> {:?}", x.input, y.input));
    }
    if x.output != y.output {
        d.push(format!("outputs {:?} -> {:?}", x.output, y.output));
    }
    let constant = x.op_type == "Constant" && y.op_type == "Constant";
    let ya: HashMap<&str, &AttributeProto> = y.attribute.iter().map(|a| (a.name.as_str(), a)).collect();
    let xa: HashSet<&str> = x.attribute.iter().map(|a| a.name.as_str()).collect();
    for a in &x.attribute {
        match ya.get(a.name.as_str()) {
            None => d.push(format!("attribute {} removed (was {})", a.name, show_attr(a))),
            Some(b) if comparable(a, constant) != comparable(b, constant) => {
                d.push(format!("attribute {}: {} -> {}", a.name, show_attr(a), show_attr(b)))
            }
            Some(_) => {}
        }
    }
    for b in y.attribute.iter().filter(|b| !xa.contains(b.name.as_str())) {
        d.push(format!("attribute {} added ({})", b.name, show_attr(b)));
    }
    d
}

fn dom(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!("{d}::")
    }
}

/// The attribute without what is compared elsewhere: subgraphs always, and the tensor of a
/// `Constant` node (it is a row of the tensor table).
fn comparable(a: &AttributeProto, constant: bool) -> AttributeProto {
    let mut c = a.clone();
    c.g = None;
    c.graphs.clear();
    c.doc_string.clear();
    if constant {
        c.t = None;
        c.sparse_tensor = None;
    }
    c
}

/// A short rendering of an attribute's value.
pub fn show_attr(a: &AttributeProto) -> String {
    let list = |v: Vec<String>| format!("[{}]", v.join(","));
    match AttributeType::try_from(a.r#type).unwrap_or(AttributeType::Undefined) {
        AttributeType::Float => a.f.to_string(),
        AttributeType::Int => a.i.to_string(),
        AttributeType::String => format!("{:?}", String::from_utf8_lossy(&a.s)),
        AttributeType::Floats => list(a.floats.iter().map(|v| v.to_string()).collect()),
        AttributeType::Ints => list(a.ints.iter().map(|v| v.to_string()).collect()),
        AttributeType::Strings => list(a.strings.iter().map(|s| format!("{:?}", String::from_utf8_lossy(s))).collect()),
        AttributeType::Tensor => {
            a.t.as_ref()
                .map(|t| format!("tensor {}{:?}", onnx_type_name(t.data_type), t.dims))
                .unwrap_or_else(|| "tensor".into())
        }
        AttributeType::Graph => "graph".into(),
        AttributeType::Graphs => format!("{} graphs", a.graphs.len()),
        other => other.as_str_name().to_ascii_lowercase(),
    }
}

/// Inputs and outputs of every graph present in both models (added/removed graphs show up as
/// added/removed nodes).
pub fn compare_io(a: &Index, b: &Index) -> Vec<IoChange> {
    let mut out = vec![];
    for ga in &a.graphs {
        let Some(gb) = b.graphs.iter().find(|g| g.path == ga.path) else { continue };
        for (kind, xa, xb) in
            [("input", &ga.graph.input, &gb.graph.input), ("output", &ga.graph.output, &gb.graph.output)]
        {
            side_io(&ga.path, kind, xa, xb, &mut out);
        }
    }
    out
}

fn side_io(graph: &str, kind: &str, xa: &[ValueInfoProto], xb: &[ValueInfoProto], out: &mut Vec<IoChange>) {
    let row = |name: &str, change, a: Option<&ValueInfoProto>, b: Option<&ValueInfoProto>| IoChange {
        graph: graph.into(),
        kind: kind.into(),
        name: name.into(),
        change,
        a: a.map(show_type),
        b: b.map(show_type),
    };
    for v in xa {
        match xb.iter().find(|w| w.name == v.name) {
            None => out.push(row(&v.name, Change::Removed, Some(v), None)),
            Some(w) if w.r#type != v.r#type => out.push(row(&v.name, Change::Changed, Some(v), Some(w))),
            Some(_) => {}
        }
    }
    for w in xb.iter().filter(|w| !xa.iter().any(|v| v.name == w.name)) {
        out.push(row(&w.name, Change::Added, None, Some(w)));
    }
}

/// `f32[1,3,224,224]`, with symbolic dims by name and unknown ones as `?`.
pub fn show_type(v: &ValueInfoProto) -> String {
    let Some(Ty::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return "non-tensor".into();
    };
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(Dim::DimValue(v)) => v.to_string(),
                Some(Dim::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    format!("{}[{}]", onnx_type_name(t.elem_type), dims.unwrap_or_else(|| "…".into()))
}
