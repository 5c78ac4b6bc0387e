//! Helpers for tests in this workspace: deterministic operations without a reactor.

pub use syncline_proto::testing::*;
