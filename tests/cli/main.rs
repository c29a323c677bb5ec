//! The one integration-test binary: drives the real `emprune` binary. One module per area.

mod core;
mod scale_diff;
mod sparse_wanda_guard;
mod structure;
mod structure_wanda_guard;
mod support;
