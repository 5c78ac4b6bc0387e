//! syncline core: the data model, the store and transport traits, the sync manager, and the
//! in-memory store.
//!
//! A [`Reactor`] holds one operations store, a queue and job executor that write to it with
//! group commit, an event bus, a document view, and a [`SyncManager`] that keeps remotes in
//! sync by push, pull, or both. See `ARCHITECTURE.md` for the map from the seed design's
//! interfaces to these types.

pub use syncline_proto::{error, filter, protocol, retry, types};

pub mod auth;
pub mod backend;
pub mod channel;
pub mod clock;
pub mod engine;
pub mod entropy;
pub mod events;
pub mod exclusions;
pub mod executor;
pub mod limits;
pub mod memory_store;
pub mod model;
pub mod queue;
pub mod reactor;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod testing;
pub mod transport;
pub mod view;

pub use async_trait::async_trait;

pub use auth::{AllowAll, PeerRule, Permissions, RulePermissions};
pub use backend::{
    Backends, ConfigError, NodeContext, Section, Settings, StoreBackend, StoreKind,
    TransportBackend, TransportKind,
};
pub use channel::{Channel, JobHandle, JobStatus, Mailbox, PullJobHandle};
pub use clock::{Clock, Hlc, HlcClock, ManualClock, SystemClock, TokioClock};
pub use entropy::Entropy;
pub use error::{Error, ErrorKind, Result, WireError};
pub use events::{Event, EventBus, OperationsWritten};
pub use exclusions::Exclusions;
pub use filter::{Filter, ReadFilter};
pub use memory_store::MemoryStore;
pub use model::{DocumentModel, JsonModel, ModelRegistry};
pub use queue::{NewAction, Submission, Written};
pub use reactor::{Reactor, ReactorBuilder, ReactorConfig};
pub use retry::RetryPolicy;
pub use scheduler::{FixedInterval, PullReport, Scheduler, Signal};
pub use store::{DynStore, OperationStore, Store, SyncStorage};
pub use sync::{
    ConnectionState, DeadLetter, RemoteConfig, RemoteStatus, SyncConfig, SyncManager, SyncMode,
    SyncStatus,
};
pub use transport::{
    AcceptFn, Acceptor, ChannelAcceptor, ChannelReceiver, FrameReceiver, FrameSender, Link,
    LinkInfo, Transport, TransportRegistry,
};
pub use types::{
    Action, ActionId, ActionType, Branch, DocumentId, DocumentType, JobId, OpHash, OpId, Operation,
    Ordinal, Payload, ReactorId, RemoteName, Scope, SortKey, StoredOp, StrandHead, StrandId,
};
pub use view::{DocumentState, DocumentView, ViewOp};
