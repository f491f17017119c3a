//! The socket side: pending-request table, reader task, writer task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::error::{QmpError, Result};
use crate::events::Event;
use crate::wire::{self, Incoming};

/// Longest line accepted from the peer; longer ones are skipped.
pub(crate) const MAX_LINE: usize = 16 << 20;

type Reply = Result<Value>;

/// Requests waiting for a reply, and whether the connection is still up.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    closed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `id` as waiting; fails if the connection is already closed.
    pub(crate) fn register(&self, id: u64) -> Result<oneshot::Receiver<Reply>> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(QmpError::disconnected(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id, tx);
        Ok(rx)
    }

    /// Drops the waiter for `id`, if still there (timeout or cancellation).
    pub(crate) fn forget(&self, id: u64) {
        self.lock().pending.remove(&id);
    }

    fn complete(&self, id: u64, reply: Reply) {
        let waiter = self.lock().pending.remove(&id);
        match waiter {
            // The caller may have given up in the meantime; that is fine.
            Some(tx) => drop(tx.send(reply)),
            None => tracing::debug!(id, "QMP reply for a request nobody waits for"),
        }
    }

    /// Marks the connection closed and fails every pending request.
    pub(crate) fn close(&self, reason: String) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.pending)
        };
        tracing::debug!(%reason, pending = pending.len(), "QMP connection closed");
        for tx in pending.into_values() {
            drop(tx.send(Err(QmpError::disconnected(reason.clone()))));
        }
    }
}

/// Outcome of reading one line.
pub(crate) enum Line {
    /// A complete line is in the buffer (without the newline).
    Data,
    /// The line exceeded [`MAX_LINE`] and was discarded.
    TooLong,
    /// The peer closed the connection (a trailing partial line is dropped).
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, never holding more than `MAX_LINE`.
pub(crate) async fn next_line<R>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(avail.len());
        if too_long || buf.len() + take > MAX_LINE {
            too_long = true;
            buf.clear();
        } else {
            buf.extend_from_slice(&avail[..take]);
        }
        r.consume(newline.map_or(take, |n| n + 1));
        if newline.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Data });
        }
    }
}

/// Routes every incoming line until the peer hangs up, then fails what is pending.
pub(crate) async fn read_loop<R>(
    mut r: R,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
) where
    R: AsyncBufRead + Unpin,
{
    let mut buf = Vec::new();
    let reason = loop {
        match next_line(&mut r, &mut buf).await {
            Ok(Line::Data) => dispatch(&buf, &shared, &events),
            Ok(Line::TooLong) => tracing::warn!(max = MAX_LINE, "skipping over-long QMP line"),
            Ok(Line::Eof) => break "peer hung up".to_string(),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    shared.close(reason);
}

fn dispatch(line: &[u8], shared: &Shared, events: &mpsc::UnboundedSender<Event>) {
    if line.trim_ascii().is_empty() {
        return;
    }
    let (id, reply) = match wire::parse_incoming(line) {
        Ok(Incoming::Event(event)) => {
            tracing::debug!(event = %event.event, "QMP event");
            // Queued before any later reply is routed: this keeps the order.
            drop(events.send(event));
            return;
        }
        Ok(Incoming::Return { id, value }) => (id, Ok(value)),
        Ok(Incoming::Error { id, class, desc }) => (id, Err(QmpError::Command { class, desc })),
        Err(why) => {
            tracing::warn!(line = %wire::preview(line), "skipping malformed QMP line: {why}");
            return;
        }
    };
    match id.as_ref().and_then(Value::as_u64) {
        Some(id) => shared.complete(id, reply),
        None => tracing::warn!(line = %wire::preview(line), "skipping QMP reply without our id"),
    }
}

/// Writes whole request lines; a request is either sent entirely or not at all.
pub(crate) async fn write_loop(
    mut w: OwnedWriteHalf,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(line) = lines.recv().await {
        if let Err(e) = w.write_all(&line).await {
            shared.close(format!("write failed: {e}"));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut r = input;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match next_line(&mut r, &mut buf).await.expect("read") {
                Line::Data => out.push(Ok(buf.clone())),
                Line::TooLong => out.push(Err("too long")),
                Line::Eof => return out,
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_caps_length() {
        let mut input = b"a\r\n\nb\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        input.extend_from_slice(b"\nc\npartial");
        let got = lines(&input).await;
        let want: Vec<Result<Vec<u8>, &str>> = vec![
            Ok(b"a\r".to_vec()),
            Ok(vec![]),
            Ok(b"b".to_vec()),
            Err("too long"),
            Ok(b"c".to_vec()),
        ];
        assert_eq!(got, want);
    }
}
