//! The one error type of syncline.
//!
//! Every failure carries a semantic [`ErrorKind`] that decides whether the operation may be
//! retried. Backends keep their own private error types and map them into this one, naming the
//! input and the reason in the message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed or violates a rule (bad path, unknown action type, bad config).
    InvalidInput,
    /// The named thing does not exist (document, remote, listener, dead letter).
    NotFound,
    /// The thing already exists (a remote with that name).
    AlreadyExists,
    /// The peer did not present acceptable credentials.
    Unauthenticated,
    /// The peer may not see or change the document.
    PermissionDenied,
    /// A peer speaks a protocol version this node does not.
    ProtocolVersion,
    /// A frame or message could not be decoded.
    Malformed,
    /// A frame, batch or request exceeds a configured limit.
    TooLarge,
    /// An operation's content hash does not match its content.
    HashMismatch,
    /// A timestamp is further ahead of the receiver's clock than its drift limit allows.
    ClockDrift,
    /// The peer or service cannot be reached right now.
    Unavailable,
    /// The request got no answer in time; its outcome is unknown.
    Timeout,
    /// The connection or component was closed.
    Closed,
    /// A bounded queue is full.
    Backpressure,
    /// The storage backend failed.
    Storage,
    /// Stored data is corrupt or was written by something else.
    Corrupt,
    /// A stored format version this build cannot read.
    FormatVersion,
    /// A feature needed by the configuration is not compiled in.
    Unsupported,
    /// A bug or an invariant violation inside syncline.
    Internal,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed when tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Closed
                | ErrorKind::Backpressure
                | ErrorKind::Storage
        )
    }

    /// The HTTP status for this kind, the one table the application API and the HTTP sync
    /// routes share.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::Malformed | ErrorKind::ProtocolVersion => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::HashMismatch | ErrorKind::ClockDrift => 422,
            ErrorKind::Unsupported => 501,
            ErrorKind::Unavailable | ErrorKind::Closed | ErrorKind::Backpressure => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::Storage
            | ErrorKind::Corrupt
            | ErrorKind::FormatVersion
            | ErrorKind::Internal => 500,
        }
    }

    /// The kind named `name` (as [`ErrorKind::as_str`] writes it), if there is one.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// The stable snake_case name used on the wire and in JSON errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ProtocolVersion => "protocol_version",
            ErrorKind::Malformed => "malformed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::HashMismatch => "hash_mismatch",
            ErrorKind::ClockDrift => "clock_drift",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Backpressure => "backpressure",
            ErrorKind::Storage => "storage",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::FormatVersion => "format_version",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A syncline error: a kind, a message naming the input and the reason, and an optional cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The result type used throughout syncline.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Creates an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The semantic kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Storage`].
    pub fn storage(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Storage, message)
    }

    /// Shorthand for [`ErrorKind::Malformed`].
    pub fn malformed(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Malformed, message)
    }

    /// Shorthand for [`ErrorKind::Closed`].
    pub fn closed(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Closed, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// A copy of this error without its source chain (errors are shared between job handles).
    pub fn to_shared(&self) -> Error {
        let mut message = self.message.clone();
        if let Some(source) = &self.source {
            message = format!("{message}: {source}");
        }
        Error::new(self.kind, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl Clone for Error {
    fn clone(&self) -> Self {
        self.to_shared()
    }
}

/// The form of an error that crosses the wire and the HTTP API: `{kind, message}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// The kind's stable name; unknown names from newer peers map to `internal`.
    pub kind: String,
    /// The human-readable message.
    pub message: String,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        let mut message = e.message.clone();
        if let Some(source) = &e.source {
            message = format!("{message}: {source}");
        }
        WireError {
            kind: e.kind.as_str().to_owned(),
            message,
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        let kind = ErrorKind::parse(&w.kind).unwrap_or(ErrorKind::Internal);
        Error::new(kind, w.message)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_kind_has_one_name_and_one_status() {
        use ErrorKind::*;
        for kind in [
            InvalidInput,
            NotFound,
            AlreadyExists,
            Unauthenticated,
            PermissionDenied,
            ProtocolVersion,
            Malformed,
            TooLarge,
            HashMismatch,
            ClockDrift,
            Unavailable,
            Timeout,
            Closed,
            Backpressure,
            Storage,
            Corrupt,
            FormatVersion,
            Unsupported,
            Internal,
        ] {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            assert!((400..600).contains(&kind.http_status()), "{kind}");
        }
        assert_eq!(ErrorKind::parse("nonsense"), None);
        assert_eq!(HashMismatch.http_status(), 422);
        assert_eq!(Unsupported.http_status(), 501);
    }

    use super::*;

    #[test]
    fn wire_round_trip_keeps_kind_and_retryability() {
        let e = Error::new(ErrorKind::Timeout, "pull from b timed out after 5s");
        let back: Error = WireError::from(&e).into();
        assert_eq!(back.kind(), ErrorKind::Timeout);
        assert!(back.is_retryable());
        let denied: Error = WireError {
            kind: "permission_denied".into(),
            message: "no".into(),
        }
        .into();
        assert!(!denied.is_retryable());
        let unknown: Error = WireError {
            kind: "from_the_future".into(),
            message: "x".into(),
        }
        .into();
        assert_eq!(unknown.kind(), ErrorKind::Internal);
    }
}
