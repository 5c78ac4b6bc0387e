//! Tests of the `syncline` binary, run as a real process.

#![allow(clippy::unwrap_used)]

mod demo;
