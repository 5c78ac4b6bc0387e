//! The connector machine stepped by hand.

use std::time::{Duration, Instant};

use super::*;
use crate::error::{Error, ErrorKind};
use crate::retry::RetryPolicy;
use crate::types::ReactorId;

const RECONNECT: RetryPolicy = RetryPolicy {
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
    multiplier: 2.0,
    max_attempts: None,
};

fn id(s: &str) -> ReactorId {
    ReactorId::new(s).unwrap()
}

fn machine(peer: Option<&str>) -> (Connector, Instant) {
    let names = ("b".to_string(), "mem://b".to_string());
    (
        Connector::new(RECONNECT, id("a"), names, peer.map(id)),
        Instant::now(),
    )
}

fn names(c: &mut Connector) -> Vec<&'static str> {
    std::iter::from_fn(|| c.poll_effect())
        .map(|e| e.name())
        .collect()
}

fn down() -> Error {
    Error::new(ErrorKind::Unavailable, "connection refused")
}

#[test]
fn a_new_peer_is_stored_before_the_session_is_published() {
    let (mut c, now) = machine(None);
    assert_eq!(names(&mut c), ["dial"]);
    c.dialed(now, Ok(id("b")), || unreachable!("no backoff"));
    assert_eq!(names(&mut c), ["save_peer"]);
    assert!(!c.is_connected());
    c.saved(now, Ok(()), || unreachable!("no backoff"));
    assert_eq!(names(&mut c), ["connected"]);
    assert_eq!(c.peer(), Some(&id("b")));
}

#[test]
fn a_known_peer_connects_at_once_and_another_is_refused() {
    let (mut c, now) = machine(Some("b"));
    names(&mut c);
    c.dialed(now, Ok(id("b")), || unreachable!());
    assert_eq!(names(&mut c), ["connected"]);
    c.closed(now, || 0.5);
    assert_eq!(names(&mut c), ["disconnected"]);
    c.handle_timeout(now + Duration::from_millis(50));
    assert_eq!(names(&mut c), ["dial"]);
    c.dialed(now, Ok(id("c")), || 1.0);
    let effects: Vec<_> = std::iter::from_fn(|| c.poll_effect()).collect();
    assert!(matches!(
        effects.as_slice(),
        [ConnectEffect::Close, ConnectEffect::Failed { error, attempt: 1, loud: true, .. }]
            if error.kind() == ErrorKind::InvalidInput && error.message().contains("used to be reactor b")
    ));
    assert_eq!(c.peer(), Some(&id("b")));
}

#[test]
fn this_reactor_itself_is_refused() {
    let (mut c, now) = machine(None);
    names(&mut c);
    c.dialed(now, Ok(id("a")), || 0.0);
    assert_eq!(names(&mut c), ["close", "failed"]);
    assert_eq!(c.peer(), None);
}

#[test]
fn failures_back_off_ever_longer_and_a_success_resets_them() {
    let (mut c, mut now) = machine(Some("b"));
    names(&mut c);
    let mut waits = Vec::new();
    let mut loud = Vec::new();
    for _ in 0..8 {
        c.dialed(now, Err(down()), || 1.0);
        let Some(ConnectEffect::Failed {
            attempt,
            retry_in,
            loud: l,
            ..
        }) = c.poll_effect()
        else {
            panic!("no failure")
        };
        waits.push(retry_in.as_millis());
        if l {
            loud.push(attempt);
        }
        assert!(c.poll_effect().is_none());
        now += retry_in - Duration::from_millis(1);
        c.handle_timeout(now);
        assert!(c.poll_effect().is_none(), "not before the wait is over");
        now += Duration::from_millis(1);
        c.handle_timeout(now);
        assert_eq!(names(&mut c), ["dial"]);
    }
    assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(loud, [1, 2, 4, 8]);
    c.dialed(now, Ok(id("b")), || unreachable!());
    names(&mut c);
    c.closed(now, || 1.0);
    names(&mut c);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(100)));
}

#[test]
fn a_failed_store_of_the_peer_is_a_failed_dial() {
    let (mut c, now) = machine(None);
    names(&mut c);
    c.dialed(now, Ok(id("b")), || unreachable!());
    names(&mut c);
    c.saved(
        now,
        Err(Error::new(ErrorKind::Storage, "disk full")),
        || 0.5,
    );
    assert_eq!(names(&mut c), ["close", "failed"]);
    assert_eq!(c.peer(), None);
}

#[test]
fn stopping_unpublishes_the_session() {
    let (mut c, now) = machine(Some("b"));
    names(&mut c);
    c.dialed(now, Ok(id("b")), || unreachable!());
    names(&mut c);
    c.stop();
    assert_eq!(names(&mut c), ["disconnected", "stopped"]);
    c.closed(now, || unreachable!("stopped"));
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(c.poll_effect().is_none());
}
