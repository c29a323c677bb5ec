//! The ONNX protobuf types, generated at build time from `proto/onnx.proto3` by prost.
//! Every `bytes` field is a `bytes::Bytes`, so tensors decoded from a memory map borrow it.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));

/// The newest IR version the vendored schema knows (`Version::IrVersion`). Models declaring a
/// newer one may carry fields prost would silently drop, so the loader refuses them.
pub const MAX_IR_VERSION: i64 = version::IR_VERSION as i64;

mod version {
    pub const IR_VERSION: i32 = super::Version::IrVersion as i32;
}
