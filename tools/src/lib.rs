//! The `syncline bench` and `syncline demo` tools, out of the facade: they run real nodes
//! (`syncline-node`) and bring their own charting, histograms and progress bars.

pub mod bench;
pub mod demo;
