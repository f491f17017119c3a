//! Asynchronous QMP events and the stream that delivers them.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{QmpError, Result};

/// One asynchronous event, e.g. `STOP`, `RESUME`, `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name as QEMU spells it (upper case).
    pub event: String,
    /// Event payload; `Value::Null` when QEMU sent none.
    pub data: Value,
    /// Host time QEMU stamped on the event: (seconds, microseconds).
    pub timestamp: (i64, i64),
}

/// Events in the order QEMU sent them.
///
/// The stream ends (yields `None`) once the connection is closed and every
/// queued event has been read, or once the last [`crate::Qmp`] handle is dropped.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Event>) -> Self {
        Self { rx }
    }

    /// Waits for the next event; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Returns an already queued event without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next event named `name`, discarding any others before it.
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        let wait = async {
            while let Some(event) = self.rx.recv().await {
                if event.event == name {
                    return Ok(event);
                }
                tracing::debug!(event = %event.event, wanted = name, "skipping QMP event");
            }
            Err(QmpError::disconnected(format!(
                "event stream ended before {name}"
            )))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| QmpError::Timeout {
                op: format!("wait for event {name}"),
                after: timeout,
            })?
    }
}
