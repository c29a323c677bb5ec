//! Graph rewrites that turn a plan into a model. Each rewrite checks its result: `zero`
//! verifies that kept entries are bit-identical and dropped ones are zero.

pub mod remove;
pub mod sparse;
pub mod zero;
