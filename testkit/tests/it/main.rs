//! syncline's behaviour tests: the seeds' sync semantics and the deterministic simulation.

#![allow(clippy::unwrap_used)]

mod edges;
mod limits;
mod plugins;
mod reactor;
mod scheduling;
mod sim;
mod stores;
mod sync;
mod transports;
