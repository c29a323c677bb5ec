//! Makes a model tract can run, in memory: external data inlined, bf16 (which tract lacks)
//! widened to f32 everywhere (tensors, Cast targets, declared types), and f16/f64 too when
//! asked (the fallback for graphs tract cannot run in those precisions). The files are untouched.

use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;

use crate::onnx::dtype::FloatType;
use crate::onnx::load::Model;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, ModelProto, TypeProto, ValueInfoProto};
use crate::onnx::tensor;
use crate::onnx::walk::{visit_graphs_mut, visit_tensors_mut};

const BF16: i32 = DataType::Bfloat16 as i32;
const F16: i32 = DataType::Float16 as i32;
const F32: i32 = DataType::Float as i32;
const F64: i32 = DataType::Double as i32;

/// Which element types are widened to f32 before tract sees the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Widen {
    /// bf16 only (tract has no bf16).
    Bf16,
    /// Every float type: the fallback when tract cannot run an f16 or f64 graph natively
    /// (its Gemm expansion, for one, assumes f32 in 0.23).
    AllFloats,
}

impl Widen {
    fn applies(self, ty: i32) -> bool {
        ty == BF16 || (self == Widen::AllFloats && (ty == F16 || ty == F64))
    }
}

/// The serialized, self-contained model tract will load.
pub fn for_tract(model: &Model, widen: Widen) -> Result<Vec<u8>> {
    let mut proto: ModelProto = model.proto.clone();
    visit_tensors_mut(&mut proto, &mut |_, t| {
        let wide = widen.applies(t.data_type);
        if tensor::storage(t) == tensor::Storage::External || wide {
            let bytes = tensor::element_bytes(t, &model.external).with_context(|| format!("tensor {:?}", t.name))?;
            let bytes = if wide { to_f32(t.data_type, &bytes)? } else { bytes };
            tensor::set_raw(t, bytes);
            if wide {
                t.data_type = F32;
            }
        }
        Ok(())
    })?;
    visit_graphs_mut(&mut proto, &mut |g| widen_graph_types(g, widen));
    Ok(proto.encode_to_vec())
}

/// Whether the model holds any f16/f64 tensor or declares any f16/f64 value.
pub fn uses_narrow_or_wide_floats(model: &Model) -> bool {
    let odd = |t: i32| t == F16 || t == F64;
    let ix = crate::onnx::walk::Index::build(&model.proto);
    ix.tensors.iter().any(|t| odd(t.tensor.data_type))
        || ix.graphs.iter().any(|g| {
            g.graph
                .input
                .iter()
                .chain(&g.graph.output)
                .chain(&g.graph.value_info)
                .any(|v| elem_type(v).is_some_and(odd))
        })
}

fn elem_type(vi: &ValueInfoProto) -> Option<i32> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        crate::onnx::proto::type_proto::Value::TensorType(tt) => Some(tt.elem_type),
        _ => None,
    }
}

fn to_f32(ty: i32, bytes: &[u8]) -> Result<Bytes> {
    let ft = FloatType::from_onnx(ty).context("not a float type")?;
    let n = bytes.len() / ft.size();
    let mut out = Vec::with_capacity(n * 4);
    for i in 0..n {
        out.extend_from_slice(&(ft.read_f64(bytes, i) as f32).to_le_bytes());
    }
    Ok(Bytes::from(out))
}

/// Widened types → f32 in Cast-like targets and every declared value type of one graph.
fn widen_graph_types(g: &mut GraphProto, widen: Widen) {
    for node in g.node.iter_mut() {
        if matches!(node.op_type.as_str(), "Cast" | "CastLike" | "RandomNormal" | "RandomUniform" | "EyeLike") {
            for a in node.attribute.iter_mut().filter(|a| a.name == "to" || a.name == "dtype") {
                if widen.applies(a.i as i32) {
                    a.i = F32 as i64;
                }
            }
        }
    }
    for vi in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        widen_value(vi, widen);
    }
}

fn widen_value(vi: &mut ValueInfoProto, widen: Widen) {
    fn go(t: &mut TypeProto, widen: Widen) {
        use crate::onnx::proto::type_proto::Value;
        match t.value.as_mut() {
            Some(Value::TensorType(tt)) if widen.applies(tt.elem_type) => tt.elem_type = F32,
            Some(Value::SequenceType(s)) => s.elem_type.as_deref_mut().into_iter().for_each(|t| go(t, widen)),
            Some(Value::OptionalType(o)) => o.elem_type.as_deref_mut().into_iter().for_each(|t| go(t, widen)),
            _ => {}
        }
    }
    if let Some(t) = vi.r#type.as_mut() {
        go(t, widen);
    }
}
