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

    /// Whether an accepted hello as `peer` proves it is that reactor: its credential belongs to
    /// that id alone. Only then may the session take the `peer://<id>` slot of a remote.
    fn proves(&self, peer: &ReactorId) -> bool {
        let _ = peer;
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

/// One access rule: which peers (by id, a pattern such as `field-*`, or `*` for any) with which
/// token may read and write what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRule {
    /// The peer's reactor id, a glob of ids (`field-*`), or `*`.
    pub peer: String,
    /// The bearer token the peer must present, if any, in plain text (prefer `token_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The token as `sha256:<64 hex digits>` (`syncline token new` prints one): the
    /// configuration then holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// What it may see.
    #[serde(default)]
    pub read: Filter,
    /// What it may change.
    #[serde(default)]
    pub write: Filter,
}

/// Rules checked in order; the first rule whose peer matches applies. A peer no rule matches
/// is refused. A token therefore authenticates only the ids its rule covers: a hello claiming
/// an id that an earlier rule governs needs that rule's token.
#[derive(Clone, Debug, Default)]
pub struct RulePermissions {
    rules: Vec<PeerRule>,
    /// Per rule: its id pattern (none for an exact id or `*`) and its token's SHA-256.
    compiled: Vec<(Option<globset::GlobMatcher>, Option<[u8; 32]>)>,
}

/// SHA-256 of a token, as `token_hash` holds it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl RulePermissions {
    /// Permissions from rules (validated).
    pub fn new(rules: Vec<PeerRule>) -> Result<Self> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let bad = |what: &str, e: &dyn fmt::Display| {
                Error::invalid(format!(
                    "permissions rule {i} (peer {}): {what}: {e}",
                    r.peer
                ))
            };
            r.read.validate().map_err(|e| bad("read", &e))?;
            r.write.validate().map_err(|e| bad("write", &e))?;
            let pattern = if r.peer != "*" && r.peer.contains(['*', '?', '[', '{']) {
                let glob = globset::Glob::new(&r.peer).map_err(|e| bad("peer", &e))?;
                Some(glob.compile_matcher())
            } else {
                if r.peer != "*" {
                    ReactorId::new(&r.peer).map_err(|e| bad("peer", &e.message().to_owned()))?;
                }
                None
            };
            let hash = match (&r.token, &r.token_hash) {
                (Some(_), Some(_)) => {
                    return Err(bad("token", &"give token or token_hash, not both"));
                }
                (Some(t), None) => Some(token_sha256(t)),
                (None, Some(h)) => Some(
                    h.strip_prefix("sha256:")
                        .and_then(|hex| hex::decode(hex).ok())
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| bad("token_hash", &"expected sha256: and 64 hex digits"))?,
                ),
                (None, None) => None,
            };
            compiled.push((pattern, hash));
        }
        Ok(RulePermissions { rules, compiled })
    }

    fn index(&self, peer: &ReactorId) -> Option<usize> {
        self.rules
            .iter()
            .zip(&self.compiled)
            .position(|(r, (pattern, _))| match pattern {
                Some(p) => p.is_match(peer.as_str()),
                None => r.peer == "*" || r.peer == peer.as_str(),
            })
    }

    fn rule(&self, peer: &ReactorId) -> Option<&PeerRule> {
        self.index(peer).map(|i| &self.rules[i])
    }
}

impl Permissions for RulePermissions {
    fn authenticate(&self, peer: &ReactorId, credentials: Option<&str>) -> Result<()> {
        let Some(i) = self.index(peer) else {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("reactor {peer} is not allowed to connect"),
            ));
        };
        match (&self.compiled[i].1, credentials) {
            (None, _) => Ok(()),
            (Some(h), Some(c)) if constant_time_eq(h, &token_sha256(c)) => Ok(()),
            (Some(_), None) => Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("reactor {peer} must present a token"),
            )),
            (Some(_), Some(_)) => Err(Error::new(
                ErrorKind::Unauthenticated,
                format!(
                    "reactor {peer} presented a wrong token (a token is valid only for the \
                     reactor ids of its rule)"
                ),
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

    fn proves(&self, peer: &ReactorId) -> bool {
        // Only a rule for this one id, with a token, ties a credential to it.
        self.index(peer).is_some_and(|i| {
            self.rules[i].peer == peer.as_str()
                && self.compiled[i].0.is_none()
                && self.compiled[i].1.is_some()
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(peer: &str, token: Option<&str>) -> PeerRule {
        PeerRule {
            peer: peer.into(),
            token: None,
            token_hash: token.map(|t| format!("sha256:{}", hex::encode(token_sha256(t)))),
            read: Filter::all(),
            write: Filter::all(),
        }
    }

    fn id(s: &str) -> ReactorId {
        ReactorId::new(s).unwrap()
    }

    #[test]
    fn a_token_authenticates_only_the_ids_of_its_rule() {
        let p = RulePermissions::new(vec![
            rule("hub", Some("hub-token")),
            rule("field-*", Some("field-token")),
            rule("*", Some("public-token")),
        ])
        .unwrap();
        assert!(p.authenticate(&id("hub"), Some("hub-token")).is_ok());
        assert!(p.authenticate(&id("field-7"), Some("field-token")).is_ok());
        // Another rule's token claims nothing: not the hub's id, not a field id.
        for (who, token) in [
            ("hub", "field-token"),
            ("hub", "public-token"),
            ("field-7", "public-token"),
        ] {
            let e = p.authenticate(&id(who), Some(token)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{who} with {token}");
        }
        assert!(p.authenticate(&id("anyone"), Some("public-token")).is_ok());
        // Only a rule of one id with a token proves that id (for its peer:// slot).
        assert!(p.proves(&id("hub")));
        assert!(!p.proves(&id("field-7")));
        assert!(!p.proves(&id("anyone")));
        assert!(AllowAll.proves(&id("anyone")));
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut both = rule("a", Some("t"));
        both.token = Some("t".into());
        assert!(RulePermissions::new(vec![both]).is_err());
        let mut short = rule("a", None);
        short.token_hash = Some("sha256:abcd".into());
        assert!(RulePermissions::new(vec![short]).is_err());
        assert!(RulePermissions::new(vec![rule("field-[", None)]).is_err());
    }
}
