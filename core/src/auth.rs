//! Who may connect, and what each peer may see and change (seed 003's visibility and
//! mutability permissions), checked on every message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::filter::Filter;
use crate::types::{Operation, ReactorId};

/// Authentication and per-document permissions for peers.
pub trait Permissions: Send + Sync + fmt::Debug + 'static {
    /// Accepts or refuses a peer's `Hello`.
    fn authenticate(&self, peer: &ReactorId, credentials: Option<&str>) -> Result<()>;

    /// Whether `peer` may see the operation's strand (discovery and pull).
    fn can_read(&self, peer: &ReactorId, op: &Operation) -> bool;

    /// Whether `peer` may add operations to the strand (push).
    fn can_write(&self, peer: &ReactorId, op: &Operation) -> bool;

    /// Whether `peer` may see a strand described by its head (discovery).
    fn can_discover(&self, peer: &ReactorId, head: &crate::types::StrandHead) -> bool {
        let _ = (peer, head);
        true
    }
}

/// Every peer may connect, see and change everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Permissions for AllowAll {
    fn authenticate(&self, _: &ReactorId, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    fn can_read(&self, _: &ReactorId, _: &Operation) -> bool {
        true
    }
    fn can_write(&self, _: &ReactorId, _: &Operation) -> bool {
        true
    }
}

/// One access rule: which peers (by id, `*` for any) with which token may read and write what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRule {
    /// The peer's reactor id, or `*`.
    pub peer: String,
    /// The bearer token the peer must present, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// What it may see.
    #[serde(default)]
    pub read: Filter,
    /// What it may change.
    #[serde(default)]
    pub write: Filter,
}

/// Rules checked in order; the first rule whose peer matches applies. A peer no rule matches
/// is refused.
#[derive(Clone, Debug, Default)]
pub struct RulePermissions {
    rules: Vec<PeerRule>,
}

impl RulePermissions {
    /// Permissions from rules (validated).
    pub fn new(rules: Vec<PeerRule>) -> Result<Self> {
        for (i, r) in rules.iter().enumerate() {
            r.read
                .validate()
                .map_err(|e| Error::invalid(format!("permissions rule {i}: read: {e}")))?;
            r.write
                .validate()
                .map_err(|e| Error::invalid(format!("permissions rule {i}: write: {e}")))?;
        }
        Ok(RulePermissions { rules })
    }

    fn rule(&self, peer: &ReactorId) -> Option<&PeerRule> {
        self.rules
            .iter()
            .find(|r| r.peer == "*" || r.peer == peer.as_str())
    }
}

impl Permissions for RulePermissions {
    fn authenticate(&self, peer: &ReactorId, credentials: Option<&str>) -> Result<()> {
        let Some(rule) = self.rule(peer) else {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("reactor {peer} is not allowed to connect"),
            ));
        };
        match (&rule.token, credentials) {
            (None, _) => Ok(()),
            (Some(t), Some(c)) if constant_time_eq(t.as_bytes(), c.as_bytes()) => Ok(()),
            (Some(_), None) => Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("reactor {peer} must present a token"),
            )),
            (Some(_), Some(_)) => Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("reactor {peer} presented a wrong token"),
            )),
        }
    }

    fn can_read(&self, peer: &ReactorId, op: &Operation) -> bool {
        self.rule(peer).is_some_and(|r| r.read.matches(op))
    }

    fn can_write(&self, peer: &ReactorId, op: &Operation) -> bool {
        self.rule(peer).is_some_and(|r| r.write.matches(op))
    }

    fn can_discover(&self, peer: &ReactorId, head: &crate::types::StrandHead) -> bool {
        self.rule(peer).is_some_and(|r| r.read.matches_head(head))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
