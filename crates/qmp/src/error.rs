//! Error type shared by the whole crate.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = QmpError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a QMP monitor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The unix socket could not be connected.
    #[error("connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The peer did not speak the QMP handshake we expect.
    #[error("QMP handshake: {0}")]
    Handshake(String),

    /// QEMU answered the command with an error reply.
    #[error("{class}: {desc}")]
    Command { class: String, desc: String },

    /// No answer arrived in time.
    #[error("{op}: no answer within {after:?}")]
    Timeout { op: String, after: Duration },

    /// The connection is gone; `reason` says how it ended.
    #[error("QMP connection closed: {reason}")]
    Disconnected { reason: String },

    /// A request could not be encoded (for example non-string map keys).
    #[error("encode {command} request")]
    Encode {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// A reply did not have the shape the caller asked for.
    #[error("decode reply to {command}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// An argument cannot be expressed in QMP (e.g. a non-UTF-8 path).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl QmpError {
    pub(crate) fn disconnected(reason: impl Into<String>) -> Self {
        Self::Disconnected {
            reason: reason.into(),
        }
    }

    /// True if the error means the connection is gone for good.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected { .. })
    }

    /// The QMP error class (e.g. `GenericError`), if QEMU rejected the command.
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}
