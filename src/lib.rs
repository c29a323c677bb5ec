//! emprune: Effective Model Pruning for ONNX models.
//!
//! The pipeline in one paragraph: [`onnx`] memory-maps and decodes the model (weights stay
//! zero-copy slices of the file) and indexes every tensor and its consumers; [`weights`]
//! picks the prunable weights through an explicit op registry; [`score`] gives every entry an
//! importance; [`prune`] groups scores by scope (global, tensor, row) and applies the
//! [`emp`] rule — keep the `⌊β·N_eff⌋` largest — to each group; [`rewrite`] zeroes the dropped
//! entries and checks the result; [`onnx::save`] writes the model atomically, never over its
//! input; [`validate`] runs original and pruned with tract on the same inputs; [`report`]
//! renders what happened as text or JSON. [`diff`] compares any two models (`emprune diff`).

pub mod cli;
pub mod diff;
pub mod emp;
pub mod guard;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod report;
pub mod rewrite;
pub mod rng;
pub mod score;
pub mod simd;
pub mod structure;
pub mod validate;
pub mod weights;

pub use emp::{Cut, Decision, Mass};
pub use onnx::Model;
pub use pipeline::{inspect, prune_file, prune_file_with, validate_files, Outcome, Output};
