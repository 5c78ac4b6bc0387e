//! Filters: which strands a remote gets.

use std::sync::{Arc, OnceLock};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{Operation, ReactorId, StoredOp};

/// Which strands a remote gets: document ids (globs such as `drive/*`), document types, scopes
/// and branches. An empty list matches everything. The `local` scope never matches, whatever the
/// filter says (see [`ReadFilter`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Document id globs (`*` does not cross `/`, `**` does).
    #[serde(default)]
    pub document_ids: Vec<String>,
    /// Document types.
    #[serde(default)]
    pub document_types: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Branches.
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(skip)]
    compiled: OnceLock<Option<Arc<GlobSet>>>,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.document_ids == other.document_ids
            && self.document_types == other.document_types
            && self.scopes == other.scopes
            && self.branches == other.branches
    }
}

impl Eq for Filter {}

fn list_matches(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == "*" || v == value)
}

impl Filter {
    /// The filter that matches every strand.
    pub fn all() -> Self {
        Filter::default()
    }

    /// A filter on document id globs only.
    pub fn documents<I: IntoIterator<Item = S>, S: Into<String>>(globs: I) -> Self {
        Filter {
            document_ids: globs.into_iter().map(Into::into).collect(),
            ..Filter::default()
        }
    }

    /// Restricts the filter to scopes.
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self.compiled = OnceLock::new();
        self
    }

    /// Restricts the filter to branches.
    pub fn with_branches<I: IntoIterator<Item = S>, S: Into<String>>(mut self, b: I) -> Self {
        self.branches = b.into_iter().map(Into::into).collect();
        self.compiled = OnceLock::new();
        self
    }

    /// Restricts the filter to document types.
    pub fn with_document_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, t: I) -> Self {
        self.document_types = t.into_iter().map(Into::into).collect();
        self.compiled = OnceLock::new();
        self
    }

    /// Checks that every glob compiles; call on input from config or peers.
    pub fn validate(&self) -> Result<()> {
        for g in &self.document_ids {
            Glob::new(g).map_err(|e| {
                Error::invalid(format!(
                    "document id pattern {g:?} is not a valid glob: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Whether this filter matches everything.
    pub fn is_all(&self) -> bool {
        let any = |l: &[String]| l.is_empty() || l.iter().any(|v| v == "*");
        any(&self.document_ids)
            && any(&self.document_types)
            && any(&self.scopes)
            && any(&self.branches)
    }

    fn globs(&self) -> Option<&GlobSet> {
        self.compiled
            .get_or_init(|| {
                if self.document_ids.is_empty() || self.document_ids.iter().any(|g| g == "**") {
                    return None;
                }
                let mut b = GlobSetBuilder::new();
                for g in &self.document_ids {
                    // Invalid globs were refused by `validate`; one that slips through
                    // matches nothing rather than everything.
                    if let Ok(glob) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                        b.add(glob);
                    }
                }
                Some(Arc::new(b.build().unwrap_or_else(|_| GlobSet::empty())))
            })
            .as_deref()
    }

    /// Whether an operation's strand passes the filter.
    pub fn matches(&self, op: &Operation) -> bool {
        self.matches_strand(
            op.document_id.as_str(),
            op.document_type.as_str(),
            op.scope.as_str(),
            op.branch.as_str(),
        )
    }

    /// Whether a strand (by its parts) passes the filter.
    pub fn matches_strand(
        &self,
        document_id: &str,
        document_type: &str,
        scope: &str,
        branch: &str,
    ) -> bool {
        list_matches(&self.scopes, scope)
            && list_matches(&self.branches, branch)
            && list_matches(&self.document_types, document_type)
            && self.globs().is_none_or(|g| g.is_match(document_id))
    }

    /// Whether a strand head passes the filter.
    pub fn matches_head(&self, head: &crate::types::StrandHead) -> bool {
        self.matches_strand(
            head.strand.document_id.as_str(),
            head.document_type.as_str(),
            head.strand.scope.as_str(),
            head.strand.branch.as_str(),
        )
    }
}

/// What a store scan returns: a filter plus the sync rules that no filter can override.
#[derive(Clone, Debug, Default)]
pub struct ReadFilter {
    /// The remote's or listener's filter.
    pub filter: Filter,
    /// Skip operations received from this peer (no echo by knowledge: it sent them, so it
    /// holds them). The unauthenticated `origin` field decides nothing: a peer that forges
    /// another reactor's origin cannot keep that reactor from receiving the operation.
    pub exclude_peer: Option<ReactorId>,
    /// Scopes that never leave this reactor (`local` plus any configured as private).
    pub private_scopes: Arc<[String]>,
}

impl ReadFilter {
    /// A filter that returns every operation (used for local reads and checks).
    pub fn everything() -> Self {
        ReadFilter::default()
    }

    /// A filter for sending to `peer` under `filter`, never including private scopes.
    pub fn for_peer(filter: Filter, peer: Option<ReactorId>, private: Arc<[String]>) -> Self {
        ReadFilter {
            filter,
            exclude_peer: peer,
            private_scopes: private,
        }
    }

    /// Whether the stored operation is to be returned.
    pub fn matches(&self, stored: &StoredOp) -> bool {
        let op = &stored.op;
        if let Some(peer) = &self.exclude_peer
            && stored.source.as_ref() == Some(peer)
        {
            return false;
        }
        if !self.private_scopes.is_empty()
            && self.private_scopes.iter().any(|s| s == op.scope.as_str())
        {
            return false;
        }
        self.filter.matches(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    fn op(doc: &str, scope: &str, branch: &str) -> Operation {
        let mut o = crate::testing::op_for(doc, 1);
        o.scope = Scope::new(scope).unwrap();
        o.branch = Branch::new(branch).unwrap();
        o
    }

    #[test]
    fn globs_scopes_and_branches_route() {
        let f = Filter::documents(["drive/*"])
            .with_scopes(["global"])
            .with_branches(["main"]);
        f.validate().unwrap();
        assert!(f.matches(&op("drive/a", "global", "main")));
        assert!(!f.matches(&op("drive/a/b", "global", "main")));
        assert!(!f.matches(&op("other", "global", "main")));
        assert!(!f.matches(&op("drive/a", "public", "main")));
        assert!(!f.matches(&op("drive/a", "global", "dev")));
        assert!(Filter::documents(["drive/**"]).matches(&op("drive/a/b", "global", "main")));
        assert!(Filter::all().is_all());
        assert!(Filter::documents(["["]).validate().is_err());
    }

    #[test]
    fn private_scopes_and_echo_are_excluded_whatever_the_filter() {
        let local = StoredOp {
            ordinal: Ordinal(1),
            op: Arc::new(op("d", "local", "main")),
            source: None,
        };
        let private: Arc<[String]> = Arc::from(vec!["local".to_string()]);
        let rf = ReadFilter::for_peer(Filter::all(), None, private.clone());
        assert!(!rf.matches(&local));
        let peer = ReactorId::new("b").unwrap();
        let from_b = StoredOp {
            ordinal: Ordinal(2),
            op: Arc::new(op("d", "global", "main")),
            source: Some(peer.clone()),
        };
        let rf = ReadFilter::for_peer(Filter::all(), Some(peer), private);
        assert!(!rf.matches(&from_b));
        let rf_c = ReadFilter::for_peer(
            Filter::all(),
            Some(ReactorId::new("c").unwrap()),
            Arc::from(vec![]),
        );
        assert!(rf_c.matches(&from_b));
        // An operation claiming origin c that b sent us still goes to c: only what c itself
        // sent us is known to be there.
        let mut forged = op("d", "global", "main");
        forged.origin = ReactorId::new("c").unwrap();
        let forged = StoredOp {
            ordinal: Ordinal(3),
            op: Arc::new(forged),
            source: Some(ReactorId::new("b").unwrap()),
        };
        assert!(rf_c.matches(&forged));
    }
}
