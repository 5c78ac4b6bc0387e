//! The checks every received operation passes (pushes and pulled pages alike), decided
//! without I/O.
//!
//! An operation that fails is refused alone, with its reason; the others are accepted.
//! Operations in private scopes are dropped: they are never synced, whichever side is
//! misconfigured. A batch over the operation count limit is refused whole (the sender broke
//! the protocol). The checks that need the receiver's state (its clock, its permissions) come
//! in as a closure; the newest *accepted* timestamp comes out, for the receiver to fold into
//! its clock, so a refused operation never moves it.

use std::sync::Arc;

use crate::clock::Hlc;
use crate::error::{Error, ErrorKind, Result};
use crate::types::Operation;

/// The limits on what is received.
#[derive(Clone, Copy, Debug)]
pub struct IncomingLimits<'a> {
    /// Operations in one batch (`sync.max_batch_ops`).
    pub max_batch_ops: usize,
    /// Bytes of one operation's input (`sync.max_action_bytes`).
    pub max_action_bytes: usize,
    /// Scopes that never leave or enter this reactor (`local`, `sync.private_scopes`).
    pub private_scopes: &'a [String],
}

/// What was decided about a received batch.
#[derive(Debug, Default)]
pub struct Sorted {
    /// Operations to apply.
    pub accepted: Vec<Arc<Operation>>,
    /// Operations refused, each with its reason.
    pub refused: Vec<(Operation, Error)>,
    /// Operations dropped because their scope is private.
    pub dropped: Vec<Operation>,
    /// The newest timestamp among the accepted.
    pub newest: Option<Hlc>,
}

/// Sorts `ops` into accepted, refused and dropped: each operation's hash and size are checked
/// here, then `check` (the receiver's clock and permissions).
pub fn sort(
    ops: Vec<Operation>,
    limits: &IncomingLimits<'_>,
    mut check: impl FnMut(&Operation) -> Result<()>,
) -> Result<Sorted> {
    if ops.len() > limits.max_batch_ops {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "a batch of {} operations exceeds the limit of {}",
                ops.len(),
                limits.max_batch_ops
            ),
        ));
    }
    let mut sorted = Sorted {
        accepted: Vec::with_capacity(ops.len()),
        ..Sorted::default()
    };
    for op in ops {
        if limits.private_scopes.iter().any(|s| s == op.scope.as_str()) {
            sorted.dropped.push(op);
            continue;
        }
        let verdict = op
            .verify()
            .and_then(|()| size(&op, limits.max_action_bytes))
            .and_then(|()| check(&op));
        match verdict {
            Err(e) => sorted.refused.push((op, e)),
            Ok(()) => {
                if sorted.newest.is_none_or(|t| op.action.timestamp > t) {
                    sorted.newest = Some(op.action.timestamp);
                }
                sorted.accepted.push(Arc::new(op));
            }
        }
    }
    Ok(sorted)
}

fn size(op: &Operation, max: usize) -> Result<()> {
    let size = op.action.input.as_bytes().len();
    if size > max {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "operation {} has an input of {size} bytes; the limit (sync.max_action_bytes) is \
                 {max}",
                op.id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::{op_at, op_for};
    use crate::types::Scope;

    fn limits(private: &[String]) -> IncomingLimits<'_> {
        IncomingLimits {
            max_batch_ops: 4,
            max_action_bytes: 64,
            private_scopes: private,
        }
    }

    #[test]
    fn each_operation_is_judged_alone_and_only_the_accepted_move_the_clock() {
        let private = vec!["local".to_owned()];
        let mut tampered = op_for("d", 2);
        tampered.origin = crate::types::ReactorId::new("forger").unwrap();
        let mut local = op_for("d", 3);
        local.scope = Scope::new("local").unwrap();
        let late = op_at("d", 4, 9_999_999_999_999, "a");
        let sorted = sort(
            vec![op_for("d", 1), tampered, local, late],
            &limits(&private),
            // The receiver's clock refuses the far-future one.
            |op| {
                if op.action.timestamp.millis > 2_000_000_000_000 {
                    Err(Error::new(ErrorKind::ClockDrift, "ahead"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap();
        assert_eq!(sorted.accepted.len(), 1);
        assert_eq!(*sorted.accepted[0], op_for("d", 1));
        let kinds: Vec<ErrorKind> = sorted.refused.iter().map(|(_, e)| e.kind()).collect();
        assert_eq!(kinds, [ErrorKind::HashMismatch, ErrorKind::ClockDrift]);
        assert_eq!(
            sorted.dropped.len(),
            1,
            "the private scope is dropped, not refused"
        );
        assert_eq!(sorted.newest, Some(op_for("d", 1).action.timestamp));
    }

    #[test]
    fn oversized_inputs_are_refused_and_oversized_batches_whole() {
        let mut big = op_for("d", 1);
        big.action.input =
            crate::types::Payload::from_value(&serde_json::json!({ "v": "x".repeat(100) }));
        let big = big.seal();
        let sorted = sort(vec![big, op_for("d", 2)], &limits(&[]), |_| Ok(())).unwrap();
        assert_eq!(sorted.refused.len(), 1);
        assert_eq!(sorted.refused[0].1.kind(), ErrorKind::TooLarge);
        assert_eq!(sorted.accepted.len(), 1);
        let five = (1..=5).map(|n| op_for("d", n)).collect();
        let e = sort(five, &limits(&[]), |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(
            sort(Vec::new(), &limits(&[]), |_| Ok(()))
                .unwrap()
                .newest
                .is_none()
        );
    }
}
