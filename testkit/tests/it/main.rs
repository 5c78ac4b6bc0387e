//! syncline's behaviour tests: the seeds' sync semantics and the deterministic simulation.

mod sim;
mod sync;
