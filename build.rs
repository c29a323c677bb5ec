//! Compiles the vendored ONNX schema (`proto/onnx.proto3`) into Rust types with prost.
//! protox parses the schema in pure Rust, so no `protoc` binary is needed; every `bytes`
//! field becomes `bytes::Bytes`, so decoding from a memory-mapped file slices it instead of
//! copying weights.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto3");
    let descriptors = protox::compile(["proto/onnx.proto3"], ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}
