//! The allocator's errors. The gRPC layer maps each kind to one status code.

/// An error the allocator reports to its caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field of the request is malformed or not allowed.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// No address is free where the request may draw from.
    #[error("{0}")]
    Exhausted(String),
    /// The request conflicts with what others hold (sharing rules, ports).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A watch asked for history that is no longer kept.
    #[error("{0}")]
    OutOfRange(String),
    /// A newer call took over (a node's newer announcer stream).
    #[error("{0}")]
    Aborted(String),
    /// The caller did not do its part in time (a stream without its hello).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The database cannot be reached; the call may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The gRPC code name, used as a metric label.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::Exhausted(_) => "RESOURCE_EXHAUSTED",
            Error::Conflict(_) => "FAILED_PRECONDITION",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::OutOfRange(_) => "OUT_OF_RANGE",
            Error::Aborted(_) => "ABORTED",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
