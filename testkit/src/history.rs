//! The history checker: what was acknowledged to writers, against what every reactor holds.
//!
//! After a run has healed and settled, every acknowledged operation must be on every reactor
//! (or, for the `local` scope, on its own reactor only), exactly once, under gap-free ordinals,
//! and every reactor must compute the same canonical order and the same document state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use parking_lot::Mutex;
use syncline_core::{OpId, Reactor, Result, StrandId, Written};

use crate::read_all;

/// One acknowledged operation.
#[derive(Clone, Debug)]
struct Acked {
    reactor: String,
    local: bool,
}

/// What writers were told was committed.
#[derive(Debug, Default)]
pub struct History {
    acked: Mutex<BTreeMap<OpId, Acked>>,
    /// Operations every peer refuses: like `local` ones, they stay on their writer.
    confined: Mutex<BTreeSet<OpId>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// Records a submission's operations as acknowledged by `reactor`.
    pub fn record(&self, reactor: &str, written: &[Written], local: bool) {
        let mut acked = self.acked.lock();
        for w in written {
            acked.insert(
                w.id,
                Acked {
                    reactor: reactor.to_owned(),
                    local,
                },
            );
        }
    }

    /// Records a submission's operations as acknowledged by `reactor` and refused by every
    /// peer: they must stay on `reactor`, like `local` ones.
    pub fn record_confined(&self, reactor: &str, written: &[Written]) {
        self.record(reactor, written, true);
        self.confined.lock().extend(written.iter().map(|w| w.id));
    }

    /// Records operations `reactor` stored by other means than a submission (a peer forging
    /// origins injects them as received).
    pub fn record_ids(&self, reactor: &str, ids: &[OpId]) {
        let mut acked = self.acked.lock();
        for id in ids {
            acked.insert(
                *id,
                Acked {
                    reactor: reactor.to_owned(),
                    local: false,
                },
            );
        }
    }

    /// Operations acknowledged so far.
    pub fn len(&self) -> usize {
        self.acked.lock().len()
    }

    /// Whether nothing was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the checker found; a clean run has every list empty.
#[derive(Debug, Default)]
pub struct Report {
    /// Acknowledged operations missing from a reactor that must hold them.
    pub lost: Vec<String>,
    /// Operations stored more than once on a reactor.
    pub duplicated: Vec<String>,
    /// Reactors disagreeing on the set of operations, their order, or document state.
    pub diverged: Vec<String>,
    /// `local`-scope operations found away from their reactor.
    pub leaked: Vec<String>,
    /// Ordinal sequences with gaps or repeats.
    pub gaps: Vec<String>,
    /// Clocks that went back: a reactor stamping an operation before one it already stored.
    pub clocks: Vec<String>,
    /// Operations checked (all reactors).
    pub checked: usize,
}

impl Report {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.diverged.is_empty()
            && self.leaked.is_empty()
            && self.gaps.is_empty()
            && self.clocks.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} lost, {} duplicated, {} diverged, {} leaked, {} ordinal problems, {} clocks back ({} operations checked)",
            self.lost.len(),
            self.duplicated.len(),
            self.diverged.len(),
            self.leaked.len(),
            self.gaps.len(),
            self.clocks.len(),
            self.checked
        )?;
        for (what, list) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("diverged", &self.diverged),
            ("leaked", &self.leaked),
            ("ordinals", &self.gaps),
            ("clock", &self.clocks),
        ] {
            for line in list.iter().take(10) {
                writeln!(f, "  {what}: {line}")?;
            }
            if list.len() > 10 {
                writeln!(f, "  {what}: ... and {} more", list.len() - 10)?;
            }
        }
        Ok(())
    }
}

/// Checks every reactor against the history and against each other.
pub async fn check(history: &History, nodes: &[(String, Reactor)]) -> Result<Report> {
    let mut report = Report::default();
    let mut holdings: Vec<BTreeSet<OpId>> = Vec::new();
    let mut strands: BTreeSet<StrandId> = BTreeSet::new();
    let confined = history.confined.lock().clone();
    let acked_by: BTreeMap<OpId, String> = history
        .acked
        .lock()
        .iter()
        .map(|(id, a)| (*id, a.reactor.clone()))
        .collect();
    for (name, reactor) in nodes {
        let all = read_all(reactor.store()).await?;
        report.checked += all.len();
        let mut seen: HashMap<OpId, u32> = HashMap::with_capacity(all.len());
        let mut shared = BTreeSet::new();
        for (i, stored) in all.iter().enumerate() {
            if stored.ordinal.0 != i as u64 + 1 {
                report.gaps.push(format!(
                    "{name}: position {} holds ordinal {}",
                    i + 1,
                    stored.ordinal
                ));
            }
            *seen.entry(stored.op.id).or_default() += 1;
            if confined.contains(&stored.op.id) {
                if acked_by.get(&stored.op.id).is_some_and(|w| w != name) {
                    report.leaked.push(format!(
                        "{name} holds operation {}, which every peer refuses",
                        stored.op.id
                    ));
                }
            } else if stored.op.scope.is_local() {
                if stored.op.origin.as_str() != name {
                    report.leaked.push(format!(
                        "{name} holds local operation {} of {}",
                        stored.op.id, stored.op.origin
                    ));
                }
            } else {
                shared.insert(stored.op.id);
                strands.insert(stored.op.strand());
            }
        }
        for (id, n) in seen {
            if n > 1 {
                report
                    .duplicated
                    .push(format!("{name} stores {id} {n} times"));
            }
        }
        holdings.push(shared);
    }
    let acked = history.acked.lock().clone();
    for (id, a) in &acked {
        for ((name, reactor), held) in nodes.iter().zip(&holdings) {
            let must_hold = !a.local || *name == a.reactor;
            if !must_hold {
                continue;
            }
            let present = if a.local {
                reactor.store().get(id).await?.is_some()
            } else {
                held.contains(id)
            };
            if !present {
                report.lost.push(format!(
                    "{name} lacks {id}, acknowledged by {}{}",
                    a.reactor,
                    if a.local { " (local scope)" } else { "" }
                ));
            }
        }
    }
    if let Some((first, rest)) = holdings.split_first() {
        for (i, held) in rest.iter().enumerate() {
            if held != first {
                let missing = first.difference(held).count();
                let extra = held.difference(first).count();
                report.diverged.push(format!(
                    "{} lacks {missing} and has {extra} extra operations compared with {}",
                    nodes[i + 1].0,
                    nodes[0].0
                ));
            }
        }
    }
    if report.diverged.is_empty() {
        for strand in &strands {
            let (first_name, first) = &nodes[0];
            let want_state = first.document(strand).await?;
            let want_ops: Vec<_> = first
                .operations(strand)
                .await?
                .into_iter()
                .map(|o| (o.id, o.error))
                .collect();
            for (name, reactor) in &nodes[1..] {
                let state = reactor.document(strand).await?;
                if state.state != want_state.state || state.revision != want_state.revision {
                    report.diverged.push(format!(
                        "{strand}: {name} computes revision {} {} but {first_name} computes \
                         revision {} {}",
                        state.revision, state.state, want_state.revision, want_state.state
                    ));
                    continue;
                }
                let ops: Vec<_> = reactor
                    .operations(strand)
                    .await?
                    .into_iter()
                    .map(|o| (o.id, o.error))
                    .collect();
                if ops != want_ops {
                    report.diverged.push(format!(
                        "{strand}: {name} and {first_name} order or error the operations differently"
                    ));
                }
            }
        }
    }
    Ok(report)
}
