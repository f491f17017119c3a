//! The [`Qmp`] handle: connect, handshake, and command execution.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::error::{QmpError, Result};
use crate::events::EventStream;
use crate::transport::{self, Line, Shared};
use crate::wire::{self, Greeting, QemuVersion};

/// How long a command waits for its reply unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected QMP monitor. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    lines: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    greeting: Greeting,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer stops by itself once `lines` is gone; the reader may be
        // parked on a silent socket, so stop it explicitly.
        self.reader.abort();
    }
}

/// Removes the pending entry if the caller stops waiting (timeout or drop).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path` and completes the handshake.
    ///
    /// `timeout` bounds connecting, the greeting and capabilities negotiation.
    /// Commands then use [`DEFAULT_COMMAND_TIMEOUT`]; see [`Qmp::with_timeout`].
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<(Qmp, EventStream)> {
        let path = path.as_ref();
        let span = tracing::debug_span!("qmp_connect", path = %path.display());
        tokio::time::timeout(timeout, Self::handshake(path, timeout).instrument(span))
            .await
            .map_err(|_| QmpError::Timeout {
                op: format!("QMP handshake on {}", path.display()),
                after: timeout,
            })?
    }

    async fn handshake(path: &Path, timeout: Duration) -> Result<(Qmp, EventStream)> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut buf = Vec::new();
        let greeting = match transport::next_line(&mut read, &mut buf).await {
            Ok(Line::Data) => wire::parse_greeting(&buf).map_err(QmpError::Handshake)?,
            Ok(Line::TooLong) => return Err(QmpError::Handshake("over-long greeting".into())),
            Ok(Line::Eof) => return Err(QmpError::disconnected("peer hung up before greeting")),
            Err(e) => return Err(QmpError::disconnected(format!("read failed: {e}"))),
        };
        tracing::debug!(version = %greeting.version, "QMP greeting");

        let shared = Arc::new(Shared::default());
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(transport::read_loop(read, shared.clone(), event_tx));
        tokio::spawn(transport::write_loop(write, line_rx, shared.clone()));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                shared,
                lines: line_tx,
                next_id: AtomicU64::new(0),
                greeting,
                reader: reader.abort_handle(),
            }),
            timeout,
        };
        qmp.execute("qmp_capabilities", None).await?;
        let qmp = qmp.with_timeout(DEFAULT_COMMAND_TIMEOUT);
        Ok((qmp, EventStream::new(event_rx)))
    }

    /// A handle on the same connection whose commands time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// The per-command timeout of this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The greeting QEMU sent on connect.
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// The QEMU version announced in the greeting.
    pub fn version(&self) -> &QemuVersion {
        &self.inner.greeting.version
    }

    /// Runs `command` with optional `arguments` (a JSON object) and returns
    /// the `return` value. QMP error replies become [`QmpError::Command`].
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("qmp_command", command, id);
        self.run(command, arguments, id).instrument(span).await
    }

    /// Like [`Qmp::execute`], deserializing the `return` value into `T`.
    pub async fn execute_as<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T> {
        let value = self.execute(command, arguments).await?;
        serde_json::from_value(value).map_err(|source| QmpError::Decode {
            command: command.to_owned(),
            source,
        })
    }

    async fn run(&self, command: &str, arguments: Option<Value>, id: u64) -> Result<Value> {
        let line = wire::encode_request(command, arguments.as_ref(), id).map_err(|source| {
            QmpError::Encode {
                command: command.to_owned(),
                source,
            }
        })?;
        let shared = &self.inner.shared;
        let reply = shared.register(id)?;
        let _guard = PendingGuard { shared, id };
        if self.inner.lines.send(line).is_err() {
            return Err(QmpError::disconnected("writer stopped"));
        }
        let result = match tokio::time::timeout(self.timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(QmpError::disconnected("reply channel dropped")),
            Err(_) => Err(QmpError::Timeout {
                op: command.to_owned(),
                after: self.timeout,
            }),
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "QMP command failed");
        }
        result
    }
}
