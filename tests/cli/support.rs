//! Shared helpers of the integration tests: run the real binary, parse its JSON, count
//! non-zeros in written files independently of emprune's own counting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use emprune::onnx::proto::tensor_proto::DataType;
use emprune::onnx::proto::ModelProto;
use prost::Message;
use serde_json::Value;

pub const SCOPES: [&str; 3] = ["global", "tensor", "row"];

pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn model(name: &str) -> PathBuf {
    models().join(name)
}

pub fn emprune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emprune")).args(args).output().expect("failed to start emprune")
}

/// Runs emprune, asserts success and parses stdout as JSON.
pub fn ok_json(args: &[&str]) -> Value {
    let out = emprune(args);
    assert!(out.status.success(), "emprune {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is not JSON")
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Counts non-zero entries of every float initializer/Constant in a model file, by name —
/// independently of emprune's own counting (raw little-endian decoding here).
pub fn nonzeros(path: &Path) -> HashMap<String, usize> {
    let m = emprune::onnx::Model::load(path).unwrap();
    let ix = emprune::onnx::walk::Index::build(&m.proto);
    let mut out = HashMap::new();
    for e in &ix.tensors {
        let Ok(bytes) = emprune::onnx::tensor::element_bytes(e.tensor, &m.external) else { continue };
        let nz = match DataType::try_from(e.tensor.data_type).unwrap() {
            DataType::Float => bytes.chunks(4).filter(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) != 0.0).count(),
            DataType::Double => bytes.chunks(8).filter(|c| f64::from_le_bytes((*c).try_into().unwrap()) != 0.0).count(),
            DataType::Float16 | DataType::Bfloat16 => {
                bytes.chunks(2).filter(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7fff) != 0).count()
            }
            _ => continue,
        };
        out.insert(e.value.clone(), nz);
    }
    out
}

/// Asserts that each reported `kept` equals the non-zeros of that tensor in the written file.
pub fn check_counts(report: &Value, written: &Path) {
    let nz = nonzeros(written);
    let mut total = 0;
    for t in report["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let kept = t["kept"].as_u64().unwrap() as usize;
        assert_eq!(nz[name], kept, "kept count of {name} disagrees with the written file");
        total += kept;
    }
    assert_eq!(report["totals"]["kept"].as_u64().unwrap() as usize, total);
}

pub fn write_model(path: &Path, m: &ModelProto) {
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

pub fn load_proto(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}
