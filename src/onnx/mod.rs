//! ONNX model IO: the generated protobuf types, loading (mmap, zero-copy), tensor payload
//! access, external data, the graph index, and saving (laid out first, then written in
//! parallel at known offsets).

pub mod dtype;
pub mod external;
pub mod layout;
pub mod load;
pub mod output;
pub mod proto;
pub mod save;
pub mod sparse;
pub mod tensor;
pub mod walk;

pub use load::Model;
