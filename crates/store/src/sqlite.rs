//! The SQLite backend: one table, row id = revision, a single writer with group commit.
//!
//! 1. `log(rev INTEGER PRIMARY KEY AUTOINCREMENT, key, create_rev, prev_rev, deleted,
//!    value)`: AUTOINCREMENT so a revision is never handed out twice, even after
//!    compaction or a crash.
//! 2. One writer thread takes every queued write, applies them in one transaction
//!    (`BEGIN IMMEDIATE` ... `COMMIT`, WAL with `synchronous=FULL`: durable on return),
//!    then publishes the events in revision order and answers the callers.
//! 3. Readers use their own connections and read at the last committed revision, so a
//!    list never sees half a batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, warn};

use crate::{
    Event, History, KeyValue, ListPage, ListRequest, Rev, Store, StoreError, Watch, WriteFuture,
    prefix_end,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log(key, rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Writes queued for the writer thread, at most this many per transaction.
const MAX_BATCH: usize = 512;

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Rev>,
    },
    Delete {
        key: String,
        expected: Option<Rev>,
    },
    Compact {
        rev: Rev,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct Request {
    op: Op,
    reply: Option<oneshot::Sender<Result<KeyValue, StoreError>>>,
}

/// State shared by the store handle, its readers and the writer.
struct Shared {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    committed: AtomicU64,
    compacted: AtomicU64,
}

/// A [`Store`] in a SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Request>,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let max_rev: Rev = conn
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| get_rev(r, 0),
            )
            .map_err(backend)?;
        let compacted: Rev = conn
            .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                get_rev(r, 0)
            })
            .optional()
            .map_err(backend)?
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            committed: AtomicU64::new(max_rev),
            compacted: AtomicU64::new(compacted),
        });
        let (writes, rx) = mpsc::channel();
        let (events, _) = broadcast::channel(4096);
        let writer = Writer {
            conn,
            rev: max_rev,
            shared: shared.clone(),
            events: events.clone(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        Ok(Self {
            shared,
            writes,
            events,
        })
    }

    fn submit(&self, op: Op) -> WriteFuture {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.send(Request {
            op,
            reply: Some(tx),
        });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl Shared {
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = match self.readers.lock().map_err(backend)?.pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(backend)?;
                c.execute_batch("PRAGMA busy_timeout=5000;")
                    .map_err(backend)?;
                c
            }
        };
        let result = f(&conn).map_err(backend);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 8
        {
            pool.push(conn);
        }
        result
    }
}

/// Revisions are stored as SQLite's signed 64-bit integers.
fn get_rev(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Rev> {
    row.get::<_, i64>(i).map(|v| v.max(0) as Rev)
}

fn kv(key: String, rev: Rev, create_rev: Rev, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key,
        value: value.into(),
        mod_rev: rev,
        create_rev,
    }
}

impl Store for SqliteStore {
    fn create(&self, key: &str, value: Vec<u8>) -> WriteFuture {
        self.submit(Op::Create {
            key: key.to_owned(),
            value,
        })
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: Option<Rev>) -> WriteFuture {
        self.submit(Op::Update {
            key: key.to_owned(),
            value,
            expected,
        })
    }

    fn delete(&self, key: &str, expected: Option<Rev>) -> WriteFuture {
        self.submit(Op::Delete {
            key: key.to_owned(),
            expected,
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let at = self.shared.committed.load(Ordering::Acquire);
        self.shared.with_reader(|c| {
            c.query_row(
                "SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 AND rev <= ?2 ORDER BY rev DESC LIMIT 1",
                params![key, at as i64],
                |r| Ok((get_rev(r, 0)?, get_rev(r, 1)?, r.get::<_, bool>(2)?, r.get::<_, Vec<u8>>(3)?)),
            )
            .optional()
        })
        .map(|row| row.filter(|r| !r.2).map(|(rev, create, _, value)| kv(key.to_owned(), rev, create, value)))
    }

    fn list(&self, req: &ListRequest) -> Result<ListPage, StoreError> {
        let at = req
            .at
            .unwrap_or_else(|| self.shared.committed.load(Ordering::Acquire));
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted,
            });
        }
        let start = match &req.after {
            Some(a) if *a >= req.prefix => format!("{a}\u{0}"),
            _ => req.prefix.clone(),
        };
        let end = prefix_end(&req.prefix);
        let limit = if req.limit == 0 {
            i64::MAX
        } else {
            req.limit as i64 + 1
        };
        let mut items = self.shared.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.key, l.rev, l.create_rev, l.value FROM log l
                 JOIN (SELECT key, MAX(rev) AS rev FROM log
                       WHERE key >= ?1 AND key < ?2 AND rev <= ?3 GROUP BY key) m ON l.rev = m.rev
                 WHERE l.deleted = 0 ORDER BY l.key LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![start, end, at as i64, limit], |r| {
                Ok(kv(r.get(0)?, get_rev(r, 1)?, get_rev(r, 2)?, r.get(3)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let more = req.limit != 0 && items.len() > req.limit;
        items.truncate(if req.limit == 0 {
            items.len()
        } else {
            req.limit
        });
        Ok(ListPage {
            items,
            rev: at,
            more,
        })
    }

    fn watch(&self, prefix: &str, after: Rev) -> Result<Watch, StoreError> {
        let live = self.events.subscribe();
        Watch::start(prefix, after, live, self.shared.clone())
    }

    fn revision(&self) -> Rev {
        self.shared.committed.load(Ordering::Acquire)
    }

    fn compacted(&self) -> Rev {
        self.shared.compacted.load(Ordering::Acquire)
    }

    fn compact(
        &self,
        rev: Rev,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>> {
        let (done, rx) = oneshot::channel();
        let sent = self.writes.send(Request {
            op: Op::Compact { rev, done },
            reply: None,
        });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl History for Shared {
    fn events_after(&self, prefix: &str, after: Rev, upto: Rev) -> Result<Vec<Event>, StoreError> {
        let compacted = self.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let end = prefix_end(prefix);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT l.key, l.rev, l.create_rev, l.deleted, l.value, p.rev, p.create_rev, p.deleted, p.value
                 FROM log l LEFT JOIN log p ON p.rev = l.prev_rev
                 WHERE l.rev > ?1 AND l.rev <= ?2 AND l.key >= ?3 AND l.key < ?4 ORDER BY l.rev",
            )?;
            let rows = stmt.query_map(params![after as i64, upto as i64, prefix, end], |r| {
                let key: String = r.get(0)?;
                let deleted: bool = r.get(3)?;
                let current = kv(key.clone(), get_rev(r, 1)?, get_rev(r, 2)?, r.get(4)?);
                let prev = match (r.get::<_, Option<i64>>(5)?, r.get::<_, Option<bool>>(7)?) {
                    (Some(prev_rev), Some(false)) => Some(kv(key, prev_rev as Rev, get_rev(r, 6)?, r.get(8)?)),
                    _ => None,
                };
                Ok(Event::from_row(current, deleted, prev))
            })?;
            rows.collect()
        })
    }

    fn latest_rev(&self) -> Rev {
        self.committed.load(Ordering::Acquire)
    }
}

/// The single writer.
struct Writer {
    conn: Connection,
    rev: Rev,
    shared: Arc<Shared>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
        debug!("store writer stopped");
    }

    fn apply(&mut self, batch: Vec<Request>) {
        let start_rev = self.rev;
        let mut results = Vec::with_capacity(batch.len());
        let outcome = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for req in &batch {
                results.push(self.one(&req.op)?);
            }
            self.conn.execute_batch("COMMIT")
        })();
        if let Err(e) = outcome {
            warn!(error = %e, "store batch failed; rolled back");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.rev = start_rev;
            for req in batch {
                if let Some(reply) = req.reply {
                    let _ = reply.send(Err(backend(&e)));
                }
                if let Op::Compact { done, .. } = req.op {
                    let _ = done.send(Err(backend(&e)));
                }
            }
            return;
        }
        self.shared.committed.store(self.rev, Ordering::Release);
        for (req, result) in batch.into_iter().zip(results) {
            match (req.op, result) {
                (Op::Compact { done, rev }, _) => {
                    self.shared
                        .compacted
                        .fetch_max(rev.min(self.rev), Ordering::AcqRel);
                    let _ = done.send(Ok(()));
                }
                (_, Ok(event)) => {
                    let kv = event.kv.clone();
                    let _ = self.events.send(Arc::new(event));
                    if let Some(reply) = req.reply {
                        let _ = reply.send(Ok(kv));
                    }
                }
                (_, Err(e)) => {
                    if let Some(reply) = req.reply {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Applies one write inside the open transaction. The outer error aborts the batch;
    /// the inner one is this write's own refusal.
    fn one(&mut self, op: &Op) -> rusqlite::Result<Result<Event, StoreError>> {
        let (key, value, expected, delete, create) = match op {
            Op::Create { key, value } => (key, Some(value), None, false, true),
            Op::Update {
                key,
                value,
                expected,
            } => (key, Some(value), *expected, false, false),
            Op::Delete { key, expected } => (key, None, *expected, true, false),
            Op::Compact { rev, .. } => {
                let rev = (*rev).min(self.rev);
                self.conn.execute(
                    "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR rev < (SELECT MAX(n.rev) FROM log n WHERE n.key = log.key))",
                    params![rev as i64],
                )?;
                self.conn.execute(
                    "INSERT INTO meta(name, value) VALUES ('compacted', ?1)
                     ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                    params![rev as i64],
                )?;
                return Ok(Err(StoreError::Closed)); // not an event; handled by the caller
            }
        };
        let newest = self
            .conn
            .prepare_cached("SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 ORDER BY rev DESC LIMIT 1")?
            .query_row(params![key], |r| {
                Ok((get_rev(r, 0)?, get_rev(r, 1)?, r.get::<_, bool>(2)?, r.get::<_, Vec<u8>>(3)?))
            })
            .optional()?;
        let live = newest.as_ref().filter(|n| !n.2);
        match (create, live) {
            (true, Some(_)) => return Ok(Err(StoreError::AlreadyExists { key: key.clone() })),
            (false, None) => return Ok(Err(StoreError::NotFound { key: key.clone() })),
            (false, Some(n)) if expected.is_some_and(|e| e != n.0) => {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: expected.unwrap_or(0),
                    current: n.0,
                }));
            }
            _ => {}
        }
        let rev = self.rev + 1;
        let create_rev = live.map_or(rev, |n| n.1);
        let prev_rev = newest.as_ref().map_or(0, |n| n.0);
        let stored: Vec<u8> = match (value, live) {
            (Some(v), _) => v.clone(),
            (None, Some(n)) => n.3.clone(),
            (None, None) => Vec::new(),
        };
        self.conn
            .prepare_cached("INSERT INTO log(rev, key, create_rev, prev_rev, deleted, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![rev as i64, key, create_rev as i64, prev_rev as i64, delete, stored])?;
        self.rev = rev;
        let prev = live.map(|n| kv(key.clone(), n.0, n.1, n.3.clone()));
        Ok(Ok(Event::from_row(
            kv(key.clone(), rev, create_rev, stored),
            delete,
            prev,
        )))
    }
}
