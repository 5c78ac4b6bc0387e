//! Helpers for tests in this workspace: deterministic operations without a reactor.

use crate::clock::Hlc;
use crate::types::{
    Action, ActionId, ActionType, Branch, DocumentId, DocumentType, OpHash, OpId, Operation,
    Payload, ReactorId, Scope,
};

/// A sealed `set` operation on `document` whose id, time and value derive from `n`.
pub fn op_for(document: &str, n: u64) -> Operation {
    op_at(document, n, 1_700_000_000_000 + n, "a")
}

/// A sealed `set` operation with an explicit time (ms) and origin.
pub fn op_at(document: &str, n: u64, millis: u64, origin: &str) -> Operation {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&millis.to_be_bytes());
    Operation {
        id: OpId::from_random_bytes(id),
        document_id: DocumentId::new(document).expect("valid document id"),
        document_type: DocumentType::new("json").expect("valid type"),
        scope: Scope::new("global").expect("valid scope"),
        branch: Branch::new("main").expect("valid branch"),
        action: Action {
            id: ActionId::from_random_bytes(id),
            action_type: ActionType::new("set").expect("valid type"),
            input: Payload::from_value(&serde_json::json!({"path": "/n", "value": n})),
            timestamp: Hlc { millis, counter: 0 },
        },
        hash: OpHash([0; 32]),
        origin: ReactorId::new(origin).expect("valid reactor id"),
    }
    .seal()
}
