//! The registry of prunable weight slots: for each op type, which inputs are weights and how
//! their axes split into *unit* axes (one index per output unit, i.e. per row) and
//! *reduction* axes (the entries that feed one output unit).
//!
//! The registry is explicit: an op that is not listed has no prunable slot, and a weight
//! consumed by an unlisted op is never pruned.

use crate::onnx::proto::NodeProto;
use crate::onnx::walk::is_default_domain;

/// How a weight slot is laid out, seen from the consuming op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotLayout {
    /// Axes (of the tensor as the op sees it) that index output units.
    pub unit_axes: Vec<usize>,
    /// The activation the weight's entries multiply, for activation-aware scores (`None` when
    /// it is not an ONNX value, e.g. a recurrent hidden state).
    pub feature: Option<Feature>,
}

/// Which node input carries the activation a weight multiplies, and how their axes match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// The node input holding the activation.
    pub input: usize,
    /// The activation's input-feature axis (negative: counted from the end).
    pub act_axis: isize,
    /// The weight axis (as the op sees it) indexing the same features.
    pub weight_axis: usize,
    /// Conv `group`: the weight's feature axis holds C/group channels of its output's group.
    pub groups: usize,
}

fn feat(input: usize, act_axis: isize, weight_axis: usize) -> Option<Feature> {
    Some(Feature { input, act_axis, weight_axis, groups: 1 })
}

/// Describes the layout of input `slot` of `node` for a weight of rank `rank`, or `None` when
/// that input is not a prunable weight.
type Describe = fn(node: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout>;

/// One registry entry.
pub struct SlotRule {
    pub op: &'static str,
    pub describe: Describe,
}

/// Every op with prunable weight slots. `--ops` chooses which of them are active.
pub const REGISTRY: &[SlotRule] = &[
    SlotRule { op: "Conv", describe: conv },
    SlotRule { op: "ConvTranspose", describe: conv_transpose },
    SlotRule { op: "Gemm", describe: gemm },
    SlotRule { op: "MatMul", describe: matmul },
    SlotRule { op: "LSTM", describe: recurrent },
    SlotRule { op: "GRU", describe: recurrent },
    SlotRule { op: "RNN", describe: recurrent },
];

/// The ops whose weights are pruned when `--ops` is not given (the paper's setting).
pub const DEFAULT_OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Looks up the layout of `node`'s input `slot` among the `active` ops.
pub fn describe(node: &NodeProto, slot: usize, rank: usize, active: &[String]) -> Option<SlotLayout> {
    if !is_default_domain(&node.domain) || !active.iter().any(|o| o == &node.op_type) {
        return None;
    }
    REGISTRY.iter().find(|r| r.op == node.op_type).and_then(|r| (r.describe)(node, slot, rank))
}

fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn units(axes: &[usize], feature: Option<Feature>) -> Option<SlotLayout> {
    Some(SlotLayout { unit_axes: axes.to_vec(), feature })
}

/// Conv W `[M, C/g, k…]`: one row per output channel; X `[N, C, …]` feeds axis 1.
fn conv(node: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout> {
    (slot == 1 && rank >= 3).then_some(())?;
    let groups = usize::try_from(int_attr(node, "group").unwrap_or(1)).ok().filter(|&g| g >= 1)?;
    units(&[0], Some(Feature { input: 0, act_axis: 1, weight_axis: 1, groups }))
}

/// ConvTranspose W `[C, M/g, k…]`: rows along axis 1 (with groups, one row spans the same
/// position in every group).
/// X `[N, C, …]` feeds axis 0.
fn conv_transpose(_: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout> {
    (slot == 1 && rank >= 3).then_some(())?;
    units(&[1], feat(0, 1, 0))
}

/// Gemm `Y = A'·B'`: B is `[K, N]` (`[N, K]` with transB); a constant A is `[M, K]`
/// (`[K, M]` with transA).
fn gemm(node: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout> {
    (rank == 2).then_some(())?;
    let trans_a = int_attr(node, "transA").unwrap_or(0) != 0;
    let trans_b = int_attr(node, "transB").unwrap_or(0) != 0;
    let (k_a, k_b) = (if trans_a { 0 } else { 1 }, if trans_b { 1 } else { 0 });
    match slot {
        0 => units(&[1 - k_a], feat(1, k_b as isize, k_a)),
        1 => units(&[1 - k_b], feat(0, k_a as isize, k_b)),
        _ => None,
    }
}

/// MatMul with a constant operand of rank ≥ 2: B `[…, K, N]` has a row per (batch…, n);
/// A `[…, M, K]` a row per (batch…, m).
fn matmul(_: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout> {
    (rank >= 2).then_some(())?;
    let batch: Vec<usize> = (0..rank - 2).collect();
    let (unit, feature) = match slot {
        0 => (rank - 2, feat(1, -2, rank - 1)),
        1 => (rank - 1, feat(0, -1, rank - 2)),
        _ => return None,
    };
    units(&[batch, vec![unit]].concat(), feature)
}

/// LSTM/GRU/RNN W and R `[dirs, gates·hidden, in]`: a row per (direction, gate unit). W
/// multiplies X (features last); R multiplies the hidden state, which is no ONNX value.
fn recurrent(_: &NodeProto, slot: usize, rank: usize) -> Option<SlotLayout> {
    (matches!(slot, 1 | 2) && rank == 3).then_some(())?;
    units(&[0, 1], if slot == 1 { feat(0, -1, 2) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::AttributeProto;

    fn node(op: &str, attrs: &[(&str, i64)]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            attribute: attrs
                .iter()
                .map(|(n, i)| AttributeProto { name: n.to_string(), i: *i, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn all() -> Vec<String> {
        REGISTRY.iter().map(|r| r.op.to_string()).collect()
    }

    #[test]
    fn layouts_follow_each_ops_weight_convention() {
        let a = all();
        assert_eq!(describe(&node("Conv", &[]), 1, 4, &a).unwrap().unit_axes, [0]);
        assert_eq!(describe(&node("Conv", &[]), 2, 1, &a), None, "bias is not a weight");
        assert_eq!(describe(&node("Gemm", &[("transB", 1)]), 1, 2, &a).unwrap().unit_axes, [0]);
        assert_eq!(describe(&node("Gemm", &[]), 1, 2, &a).unwrap().unit_axes, [1]);
        assert_eq!(describe(&node("Gemm", &[("transA", 1)]), 0, 2, &a).unwrap().unit_axes, [1]);
        assert_eq!(describe(&node("MatMul", &[]), 1, 2, &a).unwrap().unit_axes, [1]);
        assert_eq!(describe(&node("MatMul", &[]), 1, 3, &a).unwrap().unit_axes, [0, 2]);
        assert_eq!(describe(&node("MatMul", &[]), 1, 1, &a), None, "vectors are not weights");
        assert_eq!(describe(&node("Relu", &[]), 0, 2, &a), None);
    }

    #[test]
    fn activation_features_match_the_weight_axes() {
        let a = all();
        let f = |n: NodeProto, slot, rank| describe(&n, slot, rank, &a).unwrap().feature.unwrap();
        assert_eq!(
            f(node("Gemm", &[("transB", 1)]), 1, 2),
            Feature { input: 0, act_axis: 1, weight_axis: 1, groups: 1 }
        );
        assert_eq!(
            f(node("Gemm", &[("transA", 1)]), 1, 2),
            Feature { input: 0, act_axis: 0, weight_axis: 0, groups: 1 }
        );
        assert_eq!(f(node("MatMul", &[]), 1, 3), Feature { input: 0, act_axis: -1, weight_axis: 1, groups: 1 });
        assert_eq!(f(node("MatMul", &[]), 0, 2), Feature { input: 1, act_axis: -2, weight_axis: 1, groups: 1 });
        assert_eq!(
            f(node("Conv", &[("group", 4)]), 1, 4),
            Feature { input: 0, act_axis: 1, weight_axis: 1, groups: 4 }
        );
        assert_eq!(describe(&node("LSTM", &[]), 2, 3, &a).unwrap().feature, None);
    }

    #[test]
    fn inactive_ops_are_not_prunable() {
        let only_conv = vec!["Conv".to_string()];
        assert_eq!(describe(&node("Gemm", &[]), 1, 2, &only_conv), None);
    }
}
