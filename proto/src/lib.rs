//! syncline's sans-IO layer: everything about the sync protocol that does no I/O.
//!
//! The operations and their identifiers, the wire protocol (messages, both encodings, frame
//! heads), filters, the error type, retry policies, and the state machines that decide what a
//! remote does next. Nothing here owns a socket, a task, a clock or a random generator: time
//! and randomness come in as arguments, and what to do comes out as values. `syncline-core`
//! drives it over real transports and stores (the quinn-proto / quinn split).
//!
//! This crate must not depend on an async runtime; CI checks that `cargo tree -e normal -p
//! syncline-proto` shows no tokio.

pub mod clock;
pub mod error;
pub mod filter;
pub mod job;
pub mod protocol;
pub mod retry;
pub mod sync;
#[doc(hidden)]
pub mod testing;
pub mod types;

pub use clock::Hlc;
pub use error::{Error, ErrorKind, Result, WireError};
pub use filter::{Filter, ReadFilter};
pub use job::JobStatus;
pub use retry::RetryPolicy;
pub use types::{
    Action, ActionId, ActionType, Branch, DocumentId, DocumentType, JobId, OpHash, OpId, Operation,
    Ordinal, Payload, ReactorId, RemoteName, Scope, SortKey, StoredOp, StrandHead, StrandId,
};
