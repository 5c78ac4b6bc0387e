//! syncline: the facade over the core, the transports, the stores and the node, and the
//! `syncline` command.
//!
//! Cargo features pick what is compiled in: `transport-memory`, `transport-http`,
//! `transport-websocket`, `transport-quic`, `transport-redis`, `store-redb`, `store-redis`, and
//! `tools` (the `bench` and `demo` commands, from `syncline-tools`); all on by default. The
//! configuration picks what is used; asking for something not compiled in fails at start with
//! a message naming the feature.

pub use syncline_node::{
    api, auth, backends, client, config, install_crypto, node, plugins, serve,
};

pub use syncline_core as core;
pub use syncline_scheduler as scheduler;
#[cfg(feature = "store-redb")]
pub use syncline_store_redb as store_redb;
#[cfg(feature = "store-redis")]
pub use syncline_store_redis as store_redis;
#[cfg(feature = "tools")]
pub use syncline_tools::{bench, demo};
#[cfg(feature = "transport-http")]
pub use syncline_transport_http as transport_http;
#[cfg(feature = "transport-quic")]
pub use syncline_transport_quic as transport_quic;
#[cfg(feature = "transport-redis")]
pub use syncline_transport_redis as transport_redis;
#[cfg(feature = "transport-websocket")]
pub use syncline_transport_websocket as transport_websocket;
