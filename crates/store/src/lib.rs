//! The revision log behind the embedded API server.
//!
//! Owns: storing objects as opaque bytes under string keys, one global revision counter
//! (the Kubernetes `resourceVersion`), compare-and-swap writes, consistent listing at a
//! revision, watching from any retained revision, and compaction. Two backends share one
//! contract: [`SqliteStore`] (durable, one table like kine's) and [`MemStore`] (tests).
//!
//! Does not own: what the bytes mean, keys' layout, selectors or HTTP.
//!
//! The log, step by step:
//! 1. Every write appends a row; its row id is the new revision. A key's current value is
//!    its newest row, unless that row is a deletion tombstone.
//! 2. Writes carry an expectation (absent, or a revision) checked against the key's newest
//!    row by the single writer, so concurrent writers cannot both win.
//! 3. After a write commits, its event goes to an in-process broadcast; watchers read older
//!    events from the log itself, so a watch resumes from any revision not yet compacted.
//! 4. Compaction drops superseded rows and tombstones up to a revision; asking for anything
//!    older is [`StoreError::Compacted`] (HTTP 410).

mod mem;
mod sqlite;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use mem::MemStore;
pub use sqlite::SqliteStore;
pub use watch::Watch;

/// A revision: a position in the log, the Kubernetes `resourceVersion`.
pub type Rev = u64;

/// A key's value at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    /// The revision that wrote this value.
    pub mod_rev: Rev,
    /// The revision that created the key (its first write since it last did not exist).
    pub create_rev: Rev,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Modified,
    /// `kv` holds the last value, with `mod_rev` the deletion's revision.
    Deleted,
}

/// One change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change, when the log still has it.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The event a log row stands for: a tombstone is a deletion; a row that starts its
    /// key's life is a creation; anything else a modification.
    pub(crate) fn from_row(kv: KeyValue, deleted: bool, prev: Option<KeyValue>) -> Self {
        let kind = if deleted {
            EventKind::Deleted
        } else if kv.create_rev == kv.mod_rev {
            EventKind::Created
        } else {
            EventKind::Modified
        };
        Self { kind, kv, prev }
    }

    pub fn rev(&self) -> Rev {
        self.kv.mod_rev
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key} was modified: expected revision {expected}, found {current}")]
    Conflict {
        key: String,
        expected: Rev,
        current: Rev,
    },
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: Rev, compacted: Rev },
    #[error("store closed")]
    Closed,
    #[error("storage: {0}")]
    Backend(String),
}

/// A page of a listing, taken at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The revision the page was read at; later pages should ask for the same.
    pub rev: Rev,
    /// Whether keys remain after the last item.
    pub more: bool,
}

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    pub prefix: String,
    /// Start after this key (pagination).
    pub after: Option<String>,
    /// At most this many items; 0 means all.
    pub limit: usize,
    /// Read at this revision instead of the latest.
    pub at: Option<Rev>,
}

/// A write's result future.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<KeyValue, StoreError>> + Send>>;

/// The contract both backends keep.
pub trait Store: Send + Sync + 'static {
    /// Creates `key`; fails if it exists.
    fn create(&self, key: &str, value: Vec<u8>) -> WriteFuture;
    /// Replaces `key`'s value; with `expected`, only if its revision still is that.
    fn update(&self, key: &str, value: Vec<u8>, expected: Option<Rev>) -> WriteFuture;
    /// Deletes `key`; with `expected`, only if its revision still is that. Returns the
    /// deleted value with the deletion's revision.
    fn delete(&self, key: &str, expected: Option<Rev>) -> WriteFuture;
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    fn list(&self, request: &ListRequest) -> Result<ListPage, StoreError>;
    /// Events for keys under `prefix` with revisions after `after`, then live ones.
    fn watch(&self, prefix: &str, after: Rev) -> Result<Watch, StoreError>;
    /// The newest revision.
    fn revision(&self) -> Rev;
    /// The oldest revision a watch or list may still ask for.
    fn compacted(&self) -> Rev;
    /// Drops history up to `rev` (never the current values).
    fn compact(&self, rev: Rev) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;
}

/// Reads old events for watch resumption; both backends implement it.
pub(crate) trait History: Send + Sync + 'static {
    fn events_after(&self, prefix: &str, after: Rev, upto: Rev) -> Result<Vec<Event>, StoreError>;
    fn latest_rev(&self) -> Rev;
}

/// The exclusive upper bound of keys starting with `prefix` (keys are ASCII).
pub(crate) fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{7f}")
}

/// Compacts `store` every `every`, keeping the last `window` revisions of history (kine
/// keeps 1000): watches and lists older than that get [`StoreError::Compacted`].
pub async fn run_compactor(store: Arc<dyn Store>, window: Rev, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let target = store.revision().saturating_sub(window);
        if target > store.compacted()
            && let Err(e) = store.compact(target).await
        {
            tracing::warn!(error = %e, "compaction failed");
        }
    }
}
