//! Watches: the log's history after a revision, then live events, without gaps or repeats.
//!
//! 1. Subscribe to the live broadcast first.
//! 2. Read the history after the requested revision up to the newest one; queue it.
//! 3. Hand out the queue, then live events newer than the last revision handed out. An
//!    event already read from history is skipped by its revision.
//! 4. A watcher that falls behind the broadcast re-reads the missed span from the log.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{Event, History, Rev, StoreError};

/// A stream of events for keys under a prefix.
pub struct Watch {
    prefix: String,
    last: Rev,
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Arc<Event>>,
    history: Arc<dyn History>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.prefix)
            .field("last", &self.last)
            .finish()
    }
}

impl Watch {
    pub(crate) fn start(
        prefix: &str,
        after: Rev,
        live: broadcast::Receiver<Arc<Event>>,
        history: Arc<dyn History>,
    ) -> Result<Self, StoreError> {
        let upto = history.latest_rev();
        let backlog = history.events_after(prefix, after, upto)?.into();
        Ok(Self {
            prefix: prefix.to_owned(),
            last: upto.max(after),
            backlog,
            live,
            history,
        })
    }

    /// The next event, `None` when the store closed, or an error when the watcher fell
    /// behind past compaction.
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Some(Ok(e));
            }
            match self.live.recv().await {
                Ok(ev) => {
                    if ev.rev() <= self.last {
                        continue;
                    }
                    self.last = ev.rev();
                    if ev.kv.key.starts_with(&self.prefix) {
                        return Some(Ok((*ev).clone()));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let upto = self.history.latest_rev();
                    match self.history.events_after(&self.prefix, self.last, upto) {
                        Ok(events) => {
                            self.backlog = events.into();
                            self.last = upto;
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The newest revision this watch has seen, matching or not: a bookmark.
    pub fn progress(&self) -> Rev {
        self.last
    }
}
