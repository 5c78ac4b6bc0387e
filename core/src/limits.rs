//! Caps on open connections, in all and per IP address, shared by the listeners that accept
//! connections themselves (the node's HTTP server, QUIC).
//!
//! A listener asks [`ConnectionCounter::admit`] for each new connection and keeps the returned
//! [`Admission`] for as long as the connection lives; dropping it gives the place back. The
//! counts are exported as `syncline_connections{listener}` and refusals as
//! `syncline_connections_refused_total{listener, reason}`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use metrics::{counter, gauge};
use parking_lot::Mutex;

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one IP address.
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 8192,
            max_connections_per_address: 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Open connections of one listener.
#[derive(Clone)]
pub struct ConnectionCounter {
    listener: &'static str,
    limits: ConnectionLimits,
    counts: Arc<Mutex<Counts>>,
}

impl fmt::Debug for ConnectionCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.counts.lock();
        f.debug_struct("ConnectionCounter")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .field("open", &c.total)
            .finish()
    }
}

/// Why a connection was refused: which cap (`total`, `per_address`) and a message naming the
/// configuration key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// `total` or `per_address`.
    pub reason: &'static str,
    /// For the client and the log.
    pub message: String,
}

/// A connection's place under the caps; dropping it gives the place back.
#[derive(Debug)]
pub struct Admission {
    counter: ConnectionCounter,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut c = self.counter.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_address.remove(&self.ip);
            }
        }
        gauge!("syncline_connections", "listener" => self.counter.listener).set(c.total as f64);
    }
}

impl ConnectionCounter {
    /// A counter for `listener` (`http`, `quic`), its series registered at zero.
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Self {
        gauge!("syncline_connections", "listener" => listener).set(0.0);
        for reason in ["total", "per_address"] {
            counter!("syncline_connections_refused_total", "listener" => listener, "reason" => reason)
                .increment(0);
        }
        ConnectionCounter {
            listener,
            limits,
            counts: Arc::default(),
        }
    }

    /// The caps.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    /// Admits a connection from `ip`, or says which cap it is over.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refused> {
        let mut c = self.counts.lock();
        let from_ip = c.by_address.get(&ip).copied().unwrap_or(0);
        let refused = if from_ip >= self.limits.max_connections_per_address {
            Some(Refused {
                reason: "per_address",
                message: format!(
                    "{ip} already holds {from_ip} connections, the limit per address \
                     (listen.max_connections_per_address)"
                ),
            })
        } else if c.total >= self.limits.max_connections {
            Some(Refused {
                reason: "total",
                message: format!(
                    "the node holds its limit of {} connections (listen.max_connections)",
                    self.limits.max_connections
                ),
            })
        } else {
            None
        };
        if let Some(r) = refused {
            counter!(
                "syncline_connections_refused_total",
                "listener" => self.listener,
                "reason" => r.reason
            )
            .increment(1);
            return Err(r);
        }
        c.total += 1;
        *c.by_address.entry(ip).or_default() += 1;
        gauge!("syncline_connections", "listener" => self.listener).set(c.total as f64);
        Ok(Admission {
            counter: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_all_and_places_come_back() {
        let c = ConnectionCounter::new(
            "test",
            ConnectionLimits {
                max_connections: 3,
                max_connections_per_address: 2,
            },
        );
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).unwrap_err().reason, "per_address");
        let _b1 = c.admit(b).unwrap();
        let e = c.admit(b).unwrap_err();
        assert_eq!(e.reason, "total");
        assert!(
            e.message.contains("listen.max_connections"),
            "{}",
            e.message
        );
        drop(a1);
        assert_eq!(c.open(), 2);
        let _b2 = c.admit(b).unwrap();
        assert_eq!(c.open(), 3);
    }
}
