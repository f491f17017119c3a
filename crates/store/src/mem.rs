//! The in-memory backend, for tests: the same log semantics without a disk.

use std::collections::BTreeMap;
use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::{
    Event, History, KeyValue, ListPage, ListRequest, Rev, Store, StoreError, Watch, WriteFuture,
    prefix_end,
};

#[derive(Debug, Clone)]
struct Row {
    kv: KeyValue,
    prev_rev: Rev,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every retained row, by revision.
    rows: BTreeMap<Rev, Row>,
    /// Each key's retained revisions, oldest first.
    keys: BTreeMap<String, Vec<Rev>>,
    rev: Rev,
    compacted: Rev,
}

impl Inner {
    fn newest(&self, key: &str) -> Option<&Row> {
        self.keys
            .get(key)
            .and_then(|revs| revs.last())
            .and_then(|r| self.rows.get(r))
    }

    fn live(&self, key: &str) -> Option<&Row> {
        self.newest(key).filter(|r| !r.deleted)
    }

    fn at(&self, key: &str, at: Rev) -> Option<&Row> {
        let revs = self.keys.get(key)?;
        let i = revs.partition_point(|r| *r <= at);
        let row = self.rows.get(revs.get(i.checked_sub(1)?)?)?;
        (!row.deleted).then_some(row)
    }

    fn append(&mut self, key: &str, value: Arc<[u8]>, deleted: bool) -> Event {
        let prev = self.newest(key).cloned();
        self.rev += 1;
        let rev = self.rev;
        let create_rev = match &prev {
            Some(p) if !p.deleted => p.kv.create_rev,
            _ => rev,
        };
        let row = Row {
            kv: KeyValue {
                key: key.to_owned(),
                value,
                mod_rev: rev,
                create_rev,
            },
            prev_rev: prev.as_ref().map_or(0, |p| p.kv.mod_rev),
            deleted,
        };
        self.rows.insert(rev, row.clone());
        self.keys.entry(key.to_owned()).or_default().push(rev);
        event(&row, prev.filter(|p| !p.deleted).map(|p| p.kv))
    }
}

fn event(row: &Row, prev: Option<KeyValue>) -> Event {
    Event::from_row(row.kv.clone(), row.deleted, prev)
}

/// A [`Store`] in memory.
#[derive(Debug, Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, f: impl FnOnce(&mut Inner) -> Result<Event, StoreError>) -> WriteFuture {
        // Sent under the lock: two writers must broadcast in revision order, or a watcher
        // that saw the later event first would skip the earlier one for good.
        let mut inner = self.lock();
        let result = f(&mut inner).map(|ev| {
            let kv = ev.kv.clone();
            let _ = self.events.send(Arc::new(ev));
            kv
        });
        drop(inner);
        Box::pin(ready(result))
    }
}

fn check(key: &str, current: Option<&Row>, expected: Option<Rev>) -> Result<(), StoreError> {
    match (current, expected) {
        (None, _) => Err(StoreError::NotFound {
            key: key.to_owned(),
        }),
        (Some(row), Some(exp)) if row.kv.mod_rev != exp => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: exp,
            current: row.kv.mod_rev,
        }),
        _ => Ok(()),
    }
}

impl Store for MemStore {
    fn create(&self, key: &str, value: Vec<u8>) -> WriteFuture {
        let key = key.to_owned();
        self.write(move |inner| {
            if inner.live(&key).is_some() {
                return Err(StoreError::AlreadyExists { key });
            }
            Ok(inner.append(&key, value.into(), false))
        })
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: Option<Rev>) -> WriteFuture {
        let key = key.to_owned();
        self.write(move |inner| {
            check(&key, inner.live(&key), expected)?;
            Ok(inner.append(&key, value.into(), false))
        })
    }

    fn delete(&self, key: &str, expected: Option<Rev>) -> WriteFuture {
        let key = key.to_owned();
        self.write(move |inner| {
            let current = inner.live(&key).cloned();
            check(&key, current.as_ref(), expected)?;
            let value = current
                .map(|c| c.kv.value)
                .unwrap_or_else(|| Arc::from(Vec::new()));
            Ok(inner.append(&key, value, true))
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().live(key).map(|r| r.kv.clone()))
    }

    fn list(&self, req: &ListRequest) -> Result<ListPage, StoreError> {
        let inner = self.lock();
        let at = req.at.unwrap_or(inner.rev);
        if at < inner.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: inner.compacted,
            });
        }
        let end = prefix_end(&req.prefix);
        let mut items = Vec::new();
        let mut more = false;
        for key in inner.keys.range(req.prefix.clone()..end).map(|(k, _)| k) {
            if req.after.as_ref().is_some_and(|a| key <= a) {
                continue;
            }
            if let Some(row) = inner.at(key, at) {
                if req.limit != 0 && items.len() == req.limit {
                    more = true;
                    break;
                }
                items.push(row.kv.clone());
            }
        }
        Ok(ListPage {
            items,
            rev: at,
            more,
        })
    }

    fn watch(&self, prefix: &str, after: Rev) -> Result<Watch, StoreError> {
        let live = self.events.subscribe();
        Watch::start(prefix, after, live, Arc::new(self.clone()))
    }

    fn revision(&self) -> Rev {
        self.lock().rev
    }

    fn compacted(&self) -> Rev {
        self.lock().compacted
    }

    fn compact(
        &self,
        rev: Rev,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>> {
        let mut inner = self.lock();
        let rev = rev.min(inner.rev);
        if rev > inner.compacted {
            let Inner { rows, keys, .. } = &mut *inner;
            keys.retain(|_, revs| {
                let newest = revs.last().copied();
                revs.retain(|r| {
                    let keep = *r > rev
                        || (Some(*r) == newest && rows.get(r).is_some_and(|row| !row.deleted));
                    if !keep {
                        rows.remove(r);
                    }
                    keep
                });
                !revs.is_empty()
            });
            inner.compacted = rev;
        }
        Box::pin(ready(Ok(())))
    }
}

impl History for MemStore {
    fn events_after(&self, prefix: &str, after: Rev, upto: Rev) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        if after < inner.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: inner.compacted,
            });
        }
        if after >= upto {
            return Ok(Vec::new());
        }
        let events = inner
            .rows
            .range(after + 1..=upto)
            .map(|(_, row)| row)
            .filter(|row| row.kv.key.starts_with(prefix))
            .map(|row| {
                let prev = inner
                    .rows
                    .get(&row.prev_rev)
                    .filter(|p| !p.deleted)
                    .map(|p| p.kv.clone());
                event(row, prev)
            })
            .collect();
        Ok(events)
    }

    fn latest_rev(&self) -> Rev {
        self.lock().rev
    }
}
