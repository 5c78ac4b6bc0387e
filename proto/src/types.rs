//! The data model: reactors, actions, operations, strands, ordinals and the canonical order.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;
use uuid::Uuid;

use crate::clock::Hlc;
use crate::error::{Error, Result};

/// Longest accepted identifier (reactor id, document id, scope, branch, type), in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The scope that never leaves the reactor it was written on.
pub const LOCAL_SCOPE: &str = "local";
/// The scope used when a submission names none.
pub const DEFAULT_SCOPE: &str = "global";
/// The branch used when a submission names none.
pub const DEFAULT_BRANCH: &str = "main";
/// The document type used when a submission names none.
pub const DEFAULT_DOCUMENT_TYPE: &str = "json";

fn check_name(what: &str, value: &str, allow_slash: bool) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{what} {:?}... is {} bytes long; the limit is {MAX_NAME_LEN}",
            &value[..value.floor_char_boundary(32)],
            value.len()
        )));
    }
    let bad = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(c, '-' | '_' | '.' | ':' | '@')
            || (allow_slash && *c == '/'))
    });
    if let Some(c) = bad {
        return Err(Error::invalid(format!(
            "{what} {value:?} contains {c:?}; allowed are ASCII letters, digits and - _ . : @{}",
            if allow_slash { " /" } else { "" }
        )));
    }
    // Ids end up in paths (URLs, files, keys): no empty, `.` or `..` segment.
    if let Some(seg) = value
        .split('/')
        .find(|seg| seg.is_empty() || *seg == "." || *seg == "..")
    {
        let why = if seg.is_empty() {
            "an empty segment (a leading, trailing or doubled /)".to_owned()
        } else {
            format!("a {seg:?} segment")
        };
        return Err(Error::invalid(format!("{what} {value:?} has {why}")));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $slash:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(SmolStr);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(value: impl AsRef<str>) -> Result<Self> {
                let value = value.as_ref();
                check_name($what, value, $slash)?;
                Ok($name(SmolStr::new(value)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = SmolStr::deserialize(d)?;
                check_name($what, &s, $slash).map_err(de::Error::custom)?;
                Ok($name(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $name::new(s)
            }
        }
    };
}

name_type!(
    /// The stable identity of a reactor (node). Used for the no-echo rule and in HLC ties.
    ReactorId,
    "reactor id",
    false
);
name_type!(
    /// The local name of a configured remote.
    RemoteName,
    "remote name",
    false
);
name_type!(
    /// The id of a document; may contain `/` to form paths such as `drive/folder/doc`.
    DocumentId,
    "document id",
    true
);
name_type!(
    /// A scope inside a document (`global`, `local`, ...). `local` is never synced.
    Scope,
    "scope",
    false
);
name_type!(
    /// A branch of a document (`main` by default).
    Branch,
    "branch",
    false
);
name_type!(
    /// The document type, which picks the document model (reducer).
    DocumentType,
    "document type",
    false
);
name_type!(
    /// The type of an action inside its document model (`set`, `remove`, ...).
    ActionType,
    "action type",
    false
);

impl Scope {
    /// Whether this is the built-in `local` scope.
    pub fn is_local(&self) -> bool {
        self.as_str() == LOCAL_SCOPE
    }
}

macro_rules! uuid_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Builds an id from 16 random bytes (a version 4 UUID).
            pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
                $name(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }

            /// The id with exactly these 16 bytes (as stored or sent).
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(Uuid::from_bytes(bytes))
            }

            /// The raw 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|e| Error::invalid(format!("{s:?} is not a valid id: {e}")))
            }
        }
    };
}

uuid_type!(
    /// The globally unique id of an operation: the same on every reactor, the dedupe key.
    OpId
);
uuid_type!(
    /// The id of an action as the user submitted it.
    ActionId
);
uuid_type!(
    /// The id of one batch in flight (a job handle).
    JobId
);

/// A reactor's local, gap-free sequence number for every operation it stored (its changes feed).
///
/// Ordinal 0 means "before the first operation"; the first stored operation gets ordinal 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Ordinal(pub u64);

impl Ordinal {
    /// The position before any operation.
    pub const ZERO: Ordinal = Ordinal(0);

    /// The next ordinal.
    pub fn next(self) -> Ordinal {
        Ordinal(self.0 + 1)
    }
}

impl fmt::Display for Ordinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One append-only log: a document's scope on a branch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StrandId {
    /// The document.
    pub document_id: DocumentId,
    /// The scope.
    pub scope: Scope,
    /// The branch.
    pub branch: Branch,
}

impl StrandId {
    /// A strand from its three parts.
    pub fn new(document_id: DocumentId, scope: Scope, branch: Branch) -> Self {
        StrandId {
            document_id,
            scope,
            branch,
        }
    }

    /// Parses the three parts, with the defaults for missing scope and branch.
    pub fn parse(document_id: &str, scope: Option<&str>, branch: Option<&str>) -> Result<Self> {
        Ok(StrandId {
            document_id: DocumentId::new(document_id)?,
            scope: Scope::new(scope.unwrap_or(DEFAULT_SCOPE))?,
            branch: Branch::new(branch.unwrap_or(DEFAULT_BRANCH))?,
        })
    }
}

impl fmt::Display for StrandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.document_id, self.scope, self.branch)
    }
}

/// A JSON value kept as its compact text: cheap to clone, hashed byte for byte, and encoded as
/// raw JSON in JSON frames and as bytes in binary frames.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Bytes);

impl Payload {
    /// Canonicalises a JSON value (sorted object keys, no whitespace) into a payload.
    pub fn from_value(value: &serde_json::Value) -> Self {
        // serde_json's map is ordered by key unless `preserve_order` is on, which syncline
        // never enables, so this output is canonical.
        let text = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Payload(Bytes::from(text))
    }

    /// Wraps JSON text that was already canonical (read from a store or a frame).
    pub fn from_json_bytes(bytes: Bytes) -> Self {
        Payload(bytes)
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text as shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Parses the payload into a JSON value.
    pub fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.0)
            .map_err(|e| Error::malformed(format!("action input is not valid JSON: {e}")))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
            let raw: &serde_json::value::RawValue =
                serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
            raw.serialize(s)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
            Ok(Payload(Bytes::copy_from_slice(raw.get().as_bytes())))
        } else {
            struct BytesVisitor;
            impl<'de> Visitor<'de> for BytesVisitor {
                type Value = Payload;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("JSON text as bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                    Ok(Payload(Bytes::copy_from_slice(v)))
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                    Ok(Payload(Bytes::from(v)))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Payload(Bytes::from(out)))
                }
            }
            d.deserialize_bytes(BytesVisitor)
        }
    }
}

/// A BLAKE3 hash over an operation's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpHash(pub [u8; 32]);

impl fmt::Debug for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for OpHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for OpHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl<'de> Visitor<'de> for HashVisitor {
            type Value = OpHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte BLAKE3 hash (64 hex digits or 32 bytes)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OpHash, E> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(v, &mut out).map_err(E::custom)?;
                Ok(OpHash(out))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<OpHash, E> {
                let arr: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(OpHash(arr))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OpHash, A::Error> {
                let mut out = [0u8; 32];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(OpHash(out))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(HashVisitor)
        } else {
            d.deserialize_bytes(HashVisitor)
        }
    }
}

/// What a user asked for: an action of a type with a JSON input, stamped with an HLC time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The action's id.
    pub id: ActionId,
    /// The action type, interpreted by the document model.
    #[serde(rename = "type")]
    pub action_type: ActionType,
    /// The input, as canonical JSON text.
    pub input: Payload,
    /// The hybrid logical clock time at which the action was placed.
    pub timestamp: Hlc,
}

/// An action placed in a strand with a content hash: the replicated unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The globally unique id (dedupe key).
    pub id: OpId,
    /// The document.
    pub document_id: DocumentId,
    /// The document type (picks the model).
    pub document_type: DocumentType,
    /// The scope.
    pub scope: Scope,
    /// The branch.
    pub branch: Branch,
    /// The action.
    pub action: Action,
    /// BLAKE3 over the canonical encoding of everything above and `origin`.
    pub hash: OpHash,
    /// The reactor that created the operation.
    pub origin: ReactorId,
}

/// The position of an operation in its strand's canonical order: `(timestamp, op id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SortKey {
    /// The HLC time of the action.
    pub timestamp: Hlc,
    /// The op id, which breaks ties between reactors.
    pub id: OpId,
}

impl Operation {
    /// The strand this operation belongs to.
    pub fn strand(&self) -> StrandId {
        StrandId {
            document_id: self.document_id.clone(),
            scope: self.scope.clone(),
            branch: self.branch.clone(),
        }
    }

    /// Whether the operation belongs to `strand`, without building a [`StrandId`].
    pub fn is_in(&self, strand: &StrandId) -> bool {
        self.document_id == strand.document_id
            && self.scope == strand.scope
            && self.branch == strand.branch
    }

    /// The canonical-order key.
    pub fn sort_key(&self) -> SortKey {
        SortKey {
            timestamp: self.action.timestamp,
            id: self.id,
        }
    }

    /// Computes the content hash from the other fields.
    pub fn compute_hash(&self) -> OpHash {
        let mut h = blake3::Hasher::new();
        h.update(b"syncline/op/v1");
        fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
            h.update(&(bytes.len() as u32).to_le_bytes());
            h.update(bytes);
        }
        h.update(self.id.as_bytes());
        field(&mut h, self.document_id.as_str().as_bytes());
        field(&mut h, self.document_type.as_str().as_bytes());
        field(&mut h, self.scope.as_str().as_bytes());
        field(&mut h, self.branch.as_str().as_bytes());
        h.update(self.action.id.as_bytes());
        field(&mut h, self.action.action_type.as_str().as_bytes());
        field(&mut h, self.action.input.as_bytes());
        h.update(&self.action.timestamp.millis.to_le_bytes());
        h.update(&self.action.timestamp.counter.to_le_bytes());
        field(&mut h, self.origin.as_str().as_bytes());
        OpHash(*h.finalize().as_bytes())
    }

    /// Sets `hash` from the content.
    pub fn seal(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }

    /// Checks that `hash` matches the content.
    pub fn verify(&self) -> Result<()> {
        if self.compute_hash() == self.hash {
            Ok(())
        } else {
            Err(Error::new(
                crate::error::ErrorKind::HashMismatch,
                format!(
                    "operation {} in {}/{} has hash {} but its content hashes to {}",
                    self.id,
                    self.document_id,
                    self.scope,
                    self.hash,
                    self.compute_hash()
                ),
            ))
        }
    }
}

/// Bytes an operation takes in a frame besides its names and input, with room to spare in
/// either codec (ids, hash, timestamp, field names and lengths).
pub const OPERATION_WIRE_OVERHEAD: usize = 512;

impl Operation {
    /// An upper bound of the bytes this operation takes in a binary or JSON frame (the input is
    /// JSON text carried as is in both), used to cut batches to fit the frame limit.
    pub fn wire_size(&self) -> usize {
        OPERATION_WIRE_OVERHEAD
            + self.action.input.as_bytes().len()
            + self.document_id.as_str().len()
            + self.document_type.as_str().len()
            + self.scope.as_str().len()
            + self.branch.as_str().len()
            + self.action.action_type.as_str().len()
            + self.origin.as_str().len()
    }
}

/// Orders two operations canonically.
pub fn canonical_cmp(a: &Operation, b: &Operation) -> Ordering {
    a.sort_key().cmp(&b.sort_key())
}

/// An operation as a store holds it: with its local ordinal and the peer it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOp {
    /// The local, gap-free sequence number.
    pub ordinal: Ordinal,
    /// The operation.
    pub op: Arc<Operation>,
    /// The reactor this operation was received from; `None` when submitted here.
    pub source: Option<ReactorId>,
}

/// A summary of one strand: how many operations it has and where it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrandHead {
    /// The strand.
    pub strand: StrandId,
    /// Its document type.
    pub document_type: DocumentType,
    /// Number of operations in the strand.
    pub revision: u64,
    /// The canonical-order key of its last operation.
    pub last: SortKey,
    /// The highest local ordinal of any of its operations.
    pub last_ordinal: Ordinal,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_op() -> Operation {
        Operation {
            id: OpId::from_random_bytes([7; 16]),
            document_id: DocumentId::new("docs/one").unwrap(),
            document_type: DocumentType::new("json").unwrap(),
            scope: Scope::new("global").unwrap(),
            branch: Branch::new("main").unwrap(),
            action: Action {
                id: ActionId::from_random_bytes([9; 16]),
                action_type: ActionType::new("set").unwrap(),
                input: Payload::from_value(&serde_json::json!({"path": "/a", "value": 1})),
                timestamp: Hlc {
                    millis: 1_700_000_000_000,
                    counter: 3,
                },
            },
            hash: OpHash([0; 32]),
            origin: ReactorId::new("a").unwrap(),
        }
        .seal()
    }

    #[test]
    fn hash_verifies_and_detects_tampering() {
        let op = sample_op();
        op.verify().unwrap();
        let mut bad = op.clone();
        bad.action.input = Payload::from_value(&serde_json::json!({"path": "/a", "value": 2}));
        let err = bad.verify().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::HashMismatch);
        let mut moved = op.clone();
        moved.scope = Scope::new("other").unwrap();
        assert!(moved.verify().is_err());
    }

    #[test]
    fn json_and_binary_round_trips_keep_the_hash() {
        let op = sample_op();
        let json = serde_json::to_string(&op).unwrap();
        assert!(
            json.contains(r#""input":{"path":"/a","value":1}"#),
            "{json}"
        );
        let back: Operation = serde_json::from_str(&json).unwrap();
        back.verify().unwrap();
        assert_eq!(back, op);
        let bin = postcard::to_stdvec(&op).unwrap();
        let back: Operation = postcard::from_bytes(&bin).unwrap();
        back.verify().unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn names_are_validated() {
        assert!(ReactorId::new("node-1.eu").is_ok());
        assert!(ReactorId::new("").is_err());
        assert!(ReactorId::new("a/b").is_err());
        assert!(DocumentId::new("a/b").is_ok());
        let err = Scope::new("with space").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(DocumentId::new("x".repeat(300)).is_err());
        for bad in [
            ".",
            "..",
            "/",
            "a/",
            "/a",
            "a//b",
            "/../../etc/passwd",
            "a/./b",
            "a/../b",
        ] {
            let e = DocumentId::new(bad).unwrap_err();
            assert!(e.to_string().contains("segment"), "{bad}: {e}");
        }
        assert!(DocumentId::new("a.b/.c/d..").is_ok());
        assert!(ReactorId::new("..").is_err());
        let bad: Result<ReactorId, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }

    #[test]
    fn canonical_order_is_timestamp_then_id() {
        let a = sample_op();
        let mut b = sample_op();
        b.id = OpId::from_random_bytes([8; 16]);
        assert_eq!(canonical_cmp(&a, &b), Ordering::Less);
        b.action.timestamp.counter = 2;
        assert_eq!(canonical_cmp(&a, &b), Ordering::Greater);
    }
}
