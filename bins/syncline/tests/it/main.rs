//! Tests of the `syncline` node, its configuration, API, commands and processes.

#![allow(clippy::unwrap_used)]

mod api;
mod auth;
mod bench;
mod config;
mod demo;
mod plugins;
mod procs;
mod restarts;
mod soak;
mod support;
