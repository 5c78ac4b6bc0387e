//! The syncline node: a reactor assembled from a configuration and the registered backends,
//! with its application API, metrics, HTTP server and the operator's client.
//!
//! Cargo features pick which backends register themselves: `transport-memory`,
//! `transport-http`, `transport-websocket`, `transport-quic`, `transport-redis`, `store-redb`,
//! `store-redis` (all on by default). The configuration picks what is used; asking for
//! something not compiled in fails at start with a message naming the feature.

pub mod api;
pub mod auth;
pub mod backends;
pub mod client;
pub mod config;
pub mod node;
pub mod plugins;
pub mod rate;
pub mod serve;

/// Installs the process-wide TLS crypto provider (ring) once; every HTTP client and QUIC
/// endpoint needs it.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
