//! The one integration-test binary: drives the real `emprune` binary. One module per area.

mod core;
mod support;
