//! The QUIC transport's options, which are also its `[transports.quic]` section, and its
//! registration with a node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncline_core::limits::ConnectionLimits;
use syncline_core::{Error, Result, Transport};

use crate::QuicTransport;

/// Certificates, limits and timeouts. It is also the node's `[transports.quic]` section: the
/// fields a node sets itself (frame size, reset secret, connection caps) are not read from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicOptions {
    /// The listener's certificate chain (PEM); with `key`. Absent: self-signed.
    pub cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    pub key: Option<PathBuf>,
    /// Certificates clients trust (PEM).
    pub ca: Option<PathBuf>,
    /// Clients accept any certificate (local use only).
    pub insecure: bool,
    /// Where a listener that made a self-signed certificate writes it (PEM), so peers can
    /// trust it.
    pub write_self_signed: Option<PathBuf>,
    /// Largest frame (the node's `sync.max_frame_bytes`).
    #[serde(skip)]
    pub max_frame_bytes: usize,
    /// A connection silent this long is closed.
    #[serde(with = "syncline_core::retry::millis")]
    pub idle_timeout: Duration,
    /// Keepalive interval.
    #[serde(with = "syncline_core::retry::millis")]
    pub keep_alive: Duration,
    /// The secret from which stateless-reset tokens are derived. A listener that keeps the
    /// same secret across restarts answers packets of connections it forgot (it was killed)
    /// with a reset the dialler recognises, so the dialler reconnects at once instead of
    /// waiting for the idle timeout. `None` picks a random one (no reset survives a restart).
    /// A node keeps one in its store.
    #[serde(skip)]
    pub reset_key: Option<[u8; 32]>,
    /// Caps on the listener's open connections, in all and per IP address; a connection
    /// beyond them is refused during its handshake (the node's `listen.max_connections*`).
    #[serde(skip)]
    pub connections: ConnectionLimits,
    /// A handshake that has not completed in this time is abandoned (handshakes run side by
    /// side, so a slow one never holds up the others).
    #[serde(with = "syncline_core::retry::millis")]
    pub handshake_timeout: Duration,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            cert: None,
            key: None,
            ca: None,
            insecure: false,
            write_self_signed: None,
            max_frame_bytes: 32 << 20,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            reset_key: None,
            connections: ConnectionLimits::default(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The node's secret for stateless resets, made once and kept in its store, so that a restarted
/// listener can tell diallers at once that their old connection is gone.
async fn reset_key(store: &syncline_core::DynStore) -> Result<[u8; 32]> {
    use ring::rand::SecureRandom;
    use syncline_core::store::{MetaSpace, MetaWrite};
    const KEY: &str = "quic_reset_key";
    if let Some(v) = store.get_meta(MetaSpace::Node, KEY).await?
        && let Ok(k) = <[u8; 32]>::try_from(v.as_ref())
    {
        return Ok(k);
    }
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::internal("no randomness for the QUIC reset secret"))?;
    store
        .write_meta(vec![MetaWrite::put(MetaSpace::Node, KEY, key.to_vec())])
        .await?;
    Ok(key)
}

impl syncline_core::Settings for QuicOptions {}

/// Registers the QUIC transport, configured by `[transports.quic]` ([`QuicOptions`]); the
/// node supplies the frame size, the connection caps and a reset secret kept in its store.
pub fn register(backends: &mut syncline_core::Backends) {
    backends.register_transport(syncline_core::TransportKind::backend(
        "quic",
        &["quic"],
        |node, store, options: QuicOptions| async move {
            let options = QuicOptions {
                max_frame_bytes: node.max_frame_bytes,
                connections: node.connections,
                reset_key: Some(reset_key(&store).await?),
                ..options
            };
            Ok(Arc::new(QuicTransport::new(options)) as Arc<dyn Transport>)
        },
    ));
}
