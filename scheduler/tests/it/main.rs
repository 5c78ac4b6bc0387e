//! Scenario tests of the adaptive scheduler: data-driven steps against the pure controller,
//! and the driver inside a reactor under paused time.

#![allow(clippy::unwrap_used)]

mod driver;
mod scenarios;
