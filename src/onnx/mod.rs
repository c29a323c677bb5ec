//! ONNX model IO: the generated protobuf types, loading (mmap, zero-copy), tensor payload
//! access, external data, the graph index, and saving.

pub mod dtype;
pub mod external;
pub mod load;
pub mod proto;
pub mod save;
pub mod sparse;
pub mod tensor;
pub mod walk;
pub mod writeback;

pub use load::Model;
