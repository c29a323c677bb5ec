//! Loading a model: memory-map the file, decode it with prost (weights stay slices of the map),
//! and check that it is an ONNX model this schema fully understands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;

use super::external::{map_file, ExternalStore};
use super::proto::{ModelProto, MAX_IR_VERSION};

/// A decoded model together with where it came from, for resolving external data.
pub struct Model {
    pub proto: ModelProto,
    /// The path it was loaded from.
    pub path: PathBuf,
    /// Size of the model file in bytes (external data not included).
    pub file_size: u64,
    pub external: ExternalStore,
}

impl Model {
    /// Loads `path`. Errors are one line and name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = map_file(path)?;
        let file_size = bytes.len() as u64;
        let mut proto = decode(bytes).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let external = ExternalStore::new(dir);
        // Sparse initializers / sparse Constant values become dense in memory (one mechanism
        // for every reader: pruning, inspection, tract validation).
        super::sparse::densify_model(&mut proto, &external).with_context(|| format!("{}", path.display()))?;
        Ok(Self { proto, path: path.to_path_buf(), file_size, external })
    }

    /// Wraps an in-memory model whose external data (if any) is relative to `dir`.
    pub fn from_proto(proto: ModelProto, dir: &Path) -> Self {
        Self { proto, path: dir.join("<memory>"), file_size: 0, external: ExternalStore::new(dir) }
    }

    pub fn graph(&self) -> &super::proto::GraphProto {
        // `decode` guarantees the graph is present; an in-memory model may lack one.
        static EMPTY: std::sync::OnceLock<super::proto::GraphProto> = std::sync::OnceLock::new();
        self.proto.graph.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }
}

/// Decodes and sanity-checks a serialized ModelProto.
pub fn decode(bytes: bytes::Bytes) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("not an ONNX model: the file is empty");
    }
    let proto = ModelProto::decode(bytes).map_err(|e| anyhow::anyhow!("not an ONNX model (or truncated): {e}"))?;
    if proto.ir_version <= 0 || proto.graph.is_none() {
        bail!("not an ONNX model: no ir_version or no graph");
    }
    if proto.ir_version > MAX_IR_VERSION {
        bail!(
            "IR version {} is newer than the vendored ONNX schema (IR {MAX_IR_VERSION}); fields it adds could be lost, refusing",
            proto.ir_version
        );
    }
    Ok(proto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::GraphProto;

    fn encoded(ir: i64) -> bytes::Bytes {
        let m = ModelProto { ir_version: ir, graph: Some(GraphProto::default()), ..Default::default() };
        m.encode_to_vec().into()
    }

    #[test]
    fn refuses_newer_ir_and_garbage() {
        assert!(decode(encoded(8)).is_ok());
        let e = decode(encoded(MAX_IR_VERSION + 1)).unwrap_err().to_string();
        assert!(e.contains("newer than the vendored"), "{e}");
        assert!(decode(bytes::Bytes::from_static(b"hello, I am not a model")).is_err());
        assert!(decode(bytes::Bytes::new()).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn truncation_is_detected() {
        let m = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto { name: "g".repeat(100), ..Default::default() }),
            ..Default::default()
        };
        let full = m.encode_to_vec();
        let cut = bytes::Bytes::copy_from_slice(&full[..full.len() / 2]);
        assert!(decode(cut).is_err());
    }
}
