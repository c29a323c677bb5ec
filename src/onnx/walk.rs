//! The graph index: every tensor of the model (initializers and `Constant` values, in the main
//! graph and in If/Loop/Scan subgraphs) with a stable id, and who consumes each value,
//! including uses from inside subgraphs that capture an outer name.
//!
//! Ids are positions in one fixed traversal order, shared by [`Index::build`] and
//! [`visit_tensors_mut`], so a plan made on the read-only index can be applied later.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// Where a tensor is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    Initializer,
    /// The `value` attribute of a `Constant` node (named).
    Constant {
        node: String,
    },
}

/// One tensor of the model.
pub struct TensorEntry<'a> {
    pub id: usize,
    /// Index into [`Index::graphs`].
    pub graph: usize,
    pub site: Site,
    /// The value name consumers refer to (initializer name, or the Constant's output).
    pub value: String,
    pub tensor: &'a TensorProto,
}

/// A graph and where it sits.
pub struct GraphRef<'a> {
    /// `main`, or e.g. `main/if_node.then_branch` for a subgraph.
    pub path: String,
    pub graph: &'a GraphProto,
}

/// A consumer of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Input `slot` of node `node` of graph `graph`.
    Node { graph: usize, node: usize, slot: usize },
    /// The value is an output of graph `graph`.
    GraphOutput { graph: usize },
}

pub struct Index<'a> {
    pub graphs: Vec<GraphRef<'a>>,
    pub tensors: Vec<TensorEntry<'a>>,
    uses: HashMap<(usize, String), Vec<Use>>,
    /// For each graph, the graph it is nested in.
    parents: Vec<Option<usize>>,
}

impl<'a> Index<'a> {
    pub fn build(model: &'a ModelProto) -> Self {
        let mut ix = Index { graphs: vec![], tensors: vec![], uses: HashMap::new(), parents: vec![] };
        if let Some(g) = &model.graph {
            ix.index_graph(g, "main".into(), None);
        }
        ix
    }

    /// Consumers of `value` as defined in graph `graph` (captures by subgraphs included).
    pub fn uses(&self, graph: usize, value: &str) -> &[Use] {
        self.uses.get(&(graph, value.to_string())).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn node(&self, graph: usize, node: usize) -> &'a NodeProto {
        &self.graphs[graph].graph.node[node]
    }

    /// The graph a subgraph is nested in (`None` for the main graph).
    pub fn parent(&self, graph: usize) -> Option<usize> {
        self.parents[graph]
    }

    /// Indexes graph `g`; returns the uses of names `g` refers to but does not define.
    fn index_graph(&mut self, g: &'a GraphProto, path: String, parent: Option<usize>) -> HashMap<String, Vec<Use>> {
        let gid = self.graphs.len();
        self.graphs.push(GraphRef { path: path.clone(), graph: g });
        self.parents.push(parent);
        for t in &g.initializer {
            self.push_tensor(gid, Site::Initializer, t.name.clone(), t);
        }
        let mut local: HashMap<String, Vec<Use>> = HashMap::new();
        for (ni, node) in g.node.iter().enumerate() {
            if let Some(t) = constant_value(node) {
                let out = node.output.first().cloned().unwrap_or_default();
                self.push_tensor(gid, Site::Constant { node: node.name.clone() }, out, t);
            }
            for (slot, name) in node.input.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
                local.entry(name.clone()).or_default().push(Use::Node { graph: gid, node: ni, slot });
            }
            for (attr, sub) in subgraphs(node) {
                let sub_path = format!("{path}/{}.{attr}", node_label(node, ni));
                for (name, uses) in self.index_graph(sub, sub_path, Some(gid)) {
                    local.entry(name).or_default().extend(uses);
                }
            }
        }
        for o in &g.output {
            local.entry(o.name.clone()).or_default().push(Use::GraphOutput { graph: gid });
        }
        let defined = defined_names(g);
        let mut free = HashMap::new();
        for (name, uses) in local {
            if defined.contains(name.as_str()) {
                self.uses.insert((gid, name), uses);
            } else {
                free.insert(name, uses);
            }
        }
        free
    }

    fn push_tensor(&mut self, graph: usize, site: Site, value: String, tensor: &'a TensorProto) {
        let id = self.tensors.len();
        self.tensors.push(TensorEntry { id, graph, site, value, tensor });
    }
}

/// A readable label for a node: its name, or `op_type#index` when unnamed.
pub fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("{}#{index}", node.op_type)
    } else {
        node.name.clone()
    }
}

/// Names a graph defines: inputs, initializers and node outputs.
fn defined_names(g: &GraphProto) -> HashSet<&str> {
    let mut s: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    s.extend(g.initializer.iter().map(|t| t.name.as_str()));
    s.extend(g.sparse_initializer.iter().filter_map(|t| t.values.as_ref()).map(|t| t.name.as_str()));
    s.extend(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    s
}

/// The dense tensor held by a `Constant` node's `value` attribute, if any.
pub fn constant_value(node: &NodeProto) -> Option<&TensorProto> {
    if node.op_type != "Constant" || !is_default_domain(&node.domain) {
        return None;
    }
    node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref())
}

fn constant_value_mut(node: &mut NodeProto) -> Option<&mut TensorProto> {
    if node.op_type != "Constant" || !is_default_domain(&node.domain) {
        return None;
    }
    node.attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut())
}

pub fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// Graph-valued attributes of a node (If branches, Loop/Scan bodies), in attribute order.
fn subgraphs(node: &NodeProto) -> Vec<(String, &GraphProto)> {
    let mut out = vec![];
    for a in &node.attribute {
        if let Some(g) = &a.g {
            out.push((a.name.clone(), g));
        }
        for (i, g) in a.graphs.iter().enumerate() {
            out.push((format!("{}[{i}]", a.name), g));
        }
    }
    out
}

fn subgraphs_mut(attrs: &mut [AttributeProto]) -> Vec<&mut GraphProto> {
    let mut out = vec![];
    for a in attrs.iter_mut() {
        if let Some(g) = a.g.as_mut() {
            out.push(g);
        }
        out.extend(a.graphs.iter_mut());
    }
    out
}

/// Calls `f(id, tensor)` on every tensor, in the same order and with the same ids as
/// [`Index::build`].
pub fn visit_tensors_mut(
    model: &mut ModelProto,
    f: &mut dyn FnMut(usize, &mut TensorProto) -> Result<()>,
) -> Result<()> {
    let mut next = 0usize;
    if let Some(g) = model.graph.as_mut() {
        visit_graph_mut(g, &mut next, f)?;
    }
    Ok(())
}

fn visit_graph_mut(
    g: &mut GraphProto,
    next: &mut usize,
    f: &mut dyn FnMut(usize, &mut TensorProto) -> Result<()>,
) -> Result<()> {
    for t in g.initializer.iter_mut() {
        f(*next, t)?;
        *next += 1;
    }
    for node in g.node.iter_mut() {
        if let Some(t) = constant_value_mut(node) {
            f(*next, t)?;
            *next += 1;
        }
        for sub in subgraphs_mut(&mut node.attribute) {
            visit_graph_mut(sub, next, f)?;
        }
    }
    Ok(())
}

/// Calls `f` on every graph of the model (main graph first, then subgraphs depth-first).
pub fn visit_graphs_mut(model: &mut ModelProto, f: &mut dyn FnMut(&mut GraphProto)) {
    fn go(g: &mut GraphProto, f: &mut dyn FnMut(&mut GraphProto)) {
        f(g);
        for node in g.node.iter_mut() {
            for sub in subgraphs_mut(&mut node.attribute) {
                go(sub, f);
            }
        }
    }
    if let Some(g) = model.graph.as_mut() {
        go(g, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{AttributeProto, ValueInfoProto};

    fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn tensor(name: &str) -> TensorProto {
        TensorProto { name: name.into(), dims: vec![1], data_type: 1, float_data: vec![1.0], ..Default::default() }
    }

    #[test]
    fn finds_constants_subgraphs_and_captured_uses() {
        let mut c = node("Constant", "c", &[], &["cw"]);
        c.attribute.push(AttributeProto { name: "value".into(), t: Some(tensor("cw")), ..Default::default() });
        let then_g = GraphProto {
            initializer: vec![tensor("inner")],
            node: vec![node("MatMul", "mm_then", &["x", "w"], &["y"])],
            output: vec![ValueInfoProto { name: "y".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut iff = node("If", "if", &["cond"], &["z"]);
        iff.attribute.push(AttributeProto { name: "then_branch".into(), g: Some(then_g), ..Default::default() });
        let main = GraphProto {
            initializer: vec![tensor("w"), tensor("cond")],
            node: vec![c, iff],
            input: vec![ValueInfoProto { name: "x".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut model = ModelProto { ir_version: 8, graph: Some(main), ..Default::default() };
        let ix = Index::build(&model);
        let names: Vec<_> = ix.tensors.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(names, ["w", "cond", "cw", "inner"]);
        assert_eq!(ix.graphs[1].path, "main/if.then_branch");
        // `w` is used by the MatMul inside the If branch (graph 1), captured from main.
        assert_eq!(ix.uses(0, "w"), &[Use::Node { graph: 1, node: 0, slot: 1 }]);
        let mut seen = vec![];
        visit_tensors_mut(&mut model, &mut |id, t| {
            seen.push((id, t.name.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, "w".into()), (1, "cond".into()), (2, "cw".into()), (3, "inner".into())]);
    }
}
