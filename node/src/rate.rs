//! Rate limits on the node's HTTP routes: per client address (before anything else is read)
//! and per API caller (its token's name), each a token bucket (`governor`). A request over a
//! limit is answered `429` with `Retry-After` and the JSON error; the others go on.
//!
//! The buckets of addresses and callers not seen for a while are dropped (`retain_recent`,
//! at most every [`SWEEP_EVERY`] checks), so a flood of addresses cannot grow the tables
//! without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use syncline_core::{ConfigError, Error, ErrorKind};

use crate::api::ApiError;

/// A token bucket: `per_second` requests on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, on average.
    pub per_second: u32,
    /// Requests at once (the bucket's size; at least 1).
    pub burst: u32,
}

impl Rate {
    /// Checks the numbers; `key` names the setting.
    pub fn check(&self, key: &str) -> Result<(), ConfigError> {
        if self.per_second == 0 || self.burst == 0 {
            return Err(ConfigError::new(
                key,
                "per_second and burst must be at least 1 (leave the setting out for no limit)",
            ));
        }
        Ok(())
    }

    fn quota(self) -> Quota {
        let one = NonZeroU32::MIN;
        Quota::per_second(NonZeroU32::new(self.per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(self.burst).unwrap_or(one))
    }
}

/// Checks between two sweeps of idle buckets.
pub const SWEEP_EVERY: u64 = 4096;

/// One limit, by key.
pub struct Limiter<K: std::hash::Hash + Eq + Clone> {
    what: &'static str,
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> std::fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limiter({})", self.what)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    /// A limit of `rate` per key; `what` names it in refusals (`listen.sync_rate`, say).
    pub fn new(what: &'static str, rate: Rate) -> Self {
        Limiter {
            what,
            limiter: governor::RateLimiter::keyed(rate.quota()),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request of `key` from its bucket, or says how long until it may come.
    pub fn check(&self, key: &K) -> Result<(), Refused> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(Refused {
                    what: self.what,
                    wait,
                })
            }
        }
    }

    /// Buckets kept.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// A request over a limit: answered `429` with `Retry-After` (whole seconds, at least 1) and the
/// JSON error.
#[derive(Debug)]
pub struct Refused {
    what: &'static str,
    wait: std::time::Duration,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        too_many(self.what, self.wait)
    }
}

fn too_many(what: &str, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = ApiError(Error::new(
        ErrorKind::Backpressure,
        format!("too many requests ({what}); try again in {secs} s"),
    ))
    .into_response();
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The bucket of an address: the address itself for IPv4, its /64 for IPv6 (one client
/// commonly holds a whole /64 and could otherwise take a bucket per address).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The per-address layer: the client's IP address, before anything else of the request.
pub async fn per_address(
    State(limiter): State<Arc<Limiter<IpAddr>>>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match limiter.check(&client_key(addr.ip())) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_its_burst_waits_and_others_do_not() {
        let l = Limiter::new(
            "test",
            Rate {
                per_second: 1,
                burst: 3,
            },
        );
        for _ in 0..3 {
            assert!(l.check(&"a").is_ok());
        }
        let r = l.check(&"a").unwrap_err().into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(l.check(&"b").is_ok(), "another key has its own bucket");
        assert!(
            Rate {
                per_second: 0,
                burst: 1
            }
            .check("api.rate")
            .is_err()
        );
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b), "one /64, one bucket");
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }
}
