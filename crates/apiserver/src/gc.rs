//! The server's own controller: the ownerReference garbage collector and namespace
//! cleanup, one level-triggered sweep over the store.
//!
//! A sweep runs at start and after any deletion or new `deletionTimestamp` (a burst is
//! coalesced into one sweep). It:
//! - deletes objects all of whose owners are gone (background propagation);
//! - for an owner deleted with `Foreground`, deletes its dependents and drops the
//!   `foregroundDeletion` finalizer once none is left;
//! - for `Orphan`, strips the owner from its dependents' ownerReferences, then drops the
//!   `orphan` finalizer;
//! - empties a terminating namespace, then deletes it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use store::{EventKind, ListRequest};

use crate::objects::Part;
use crate::ops::{self, DeleteOptions, FOREGROUND, ORPHAN};
use crate::{ApiError, AppState};

/// How long a burst of changes may go on before the sweep runs anyway.
const COALESCE: Duration = Duration::from_millis(200);
/// Quiet time that ends a burst.
const QUIET: Duration = Duration::from_millis(20);

/// Runs until the store closes.
pub async fn run(state: AppState) {
    let mut from = state.store.revision();
    sweep_logged(&state).await;
    loop {
        let mut watch = match state.store.watch("/", from) {
            Ok(w) => w,
            Err(_) => {
                from = state.store.revision();
                sweep_logged(&state).await;
                continue;
            }
        };
        // After falling behind (or out of the loop), start over from now with a sweep.
        loop {
            let Some(next) = watch.next().await else {
                return;
            };
            let Ok(ev) = next else {
                break;
            };
            if !relevant(&ev) {
                continue;
            }
            let end = tokio::time::Instant::now() + COALESCE;
            while tokio::time::Instant::now() < end {
                match tokio::time::timeout(QUIET, watch.next()).await {
                    Ok(Some(Ok(_))) => {}
                    Ok(None) => return,
                    Ok(Some(Err(_))) | Err(_) => break,
                }
            }
            sweep_logged(&state).await;
        }
        from = state.store.revision();
        sweep_logged(&state).await;
    }
}

fn relevant(ev: &store::Event) -> bool {
    ev.kind == EventKind::Deleted
        || ev
            .kv
            .value
            .windows(b"deletionTimestamp".len())
            .any(|w| w == b"deletionTimestamp")
}

async fn sweep_logged(state: &AppState) {
    if let Err(e) = sweep(state).await {
        tracing::warn!(error = %e, "garbage collection sweep failed; retrying on the next change");
    }
}

struct Entry {
    key: String,
    obj: Value,
}

impl Entry {
    fn meta(&self, field: &str) -> &Value {
        &self.obj["metadata"][field]
    }
    fn uid(&self) -> &str {
        self.meta("uid").as_str().unwrap_or_default()
    }
    fn deleting(&self) -> bool {
        self.meta("deletionTimestamp").is_string()
    }
    fn has_finalizer(&self, f: &str) -> bool {
        self.meta("finalizers")
            .as_array()
            .is_some_and(|fs| fs.iter().any(|x| x == f))
    }
    fn owners(&self) -> Vec<&str> {
        self.meta("ownerReferences")
            .as_array()
            .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str()).collect())
            .unwrap_or_default()
    }
}

/// One pass; returns how many writes it made.
pub async fn sweep(state: &AppState) -> Result<usize, ApiError> {
    let page = state.store.list(&ListRequest {
        prefix: "/".to_owned(),
        ..Default::default()
    })?;
    let entries: Vec<Entry> = page
        .items
        .iter()
        .filter_map(|kv| {
            Some(Entry {
                key: kv.key.clone(),
                obj: serde_json::from_slice(&kv.value).ok()?,
            })
        })
        .collect();
    let uids: HashSet<&str> = entries.iter().map(Entry::uid).collect();
    let mut dependents: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in &entries {
        for owner in e.owners() {
            dependents.entry(owner).or_default().push(e);
        }
    }
    let mut writes = 0;
    for e in &entries {
        // The custom resources of a CRD that is gone.
        if state.registry.for_key(&e.key).is_none() {
            match state.store.delete(&e.key, None).await {
                Ok(_) | Err(store::StoreError::NotFound { .. }) => writes += 1,
                Err(err) => return Err(err.into()),
            }
            continue;
        }
        let owners = e.owners();
        if !owners.is_empty() && !e.deleting() && owners.iter().all(|o| !uids.contains(o)) {
            writes += delete(state, &e.key).await?;
            continue;
        }
        if !e.deleting() {
            continue;
        }
        let deps = dependents
            .get(e.uid())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if e.has_finalizer(ORPHAN) {
            for d in deps {
                writes += drop_owner(state, &d.key, e.uid()).await?;
            }
            writes += drop_finalizer(state, &e.key, ORPHAN).await?;
        } else if e.has_finalizer(FOREGROUND) {
            if deps.is_empty() {
                writes += drop_finalizer(state, &e.key, FOREGROUND).await?;
            }
            for d in deps.iter().filter(|d| !d.deleting()) {
                writes += delete(state, &d.key).await?;
            }
        }
        if e.key.starts_with("/core/namespaces/") {
            let name = e.meta("name").as_str().unwrap_or_default();
            let contents: Vec<&Entry> = entries
                .iter()
                .filter(|c| c.meta("namespace").as_str() == Some(name) && c.key != e.key)
                .collect();
            for c in contents.iter().filter(|c| !c.deleting()) {
                writes += delete(state, &c.key).await?;
            }
            if contents.is_empty() {
                match state.store.delete(&e.key, None).await {
                    Ok(_) | Err(store::StoreError::NotFound { .. }) => writes += 1,
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(writes)
}

/// Deletes the object at `key` in the background; gone already is fine.
async fn delete(state: &AppState, key: &str) -> Result<usize, ApiError> {
    let Some(r) = state.registry.for_key(key) else {
        return Ok(0);
    };
    let opts = DeleteOptions {
        propagation: Some("Background".to_owned()),
        ..Default::default()
    };
    match ops::delete(state, &r, r.storage_version(), key, &opts).await {
        Ok(_) => Ok(1),
        Err(e) if e.code == 404 => Ok(0),
        Err(e) => Err(e),
    }
}

/// Updates the object at `key` with `edit` applied to its metadata.
async fn edit_meta(
    state: &AppState,
    key: &str,
    edit: impl Fn(&mut Value),
) -> Result<usize, ApiError> {
    let Some(r) = state.registry.for_key(key) else {
        return Ok(0);
    };
    let result = ops::update(
        state,
        &r,
        r.storage_version(),
        key,
        Part::Main,
        ops::Write::default(),
        |mut obj| {
            edit(&mut obj["metadata"]);
            Ok(obj)
        },
    )
    .await;
    match result {
        Ok(_) => Ok(1),
        Err(e) if e.code == 404 => Ok(0),
        Err(e) => Err(e),
    }
}

async fn drop_finalizer(state: &AppState, key: &str, finalizer: &str) -> Result<usize, ApiError> {
    edit_meta(state, key, |meta| {
        if let Some(fs) = meta["finalizers"].as_array_mut() {
            fs.retain(|f| f != finalizer);
        }
    })
    .await
}

async fn drop_owner(state: &AppState, key: &str, owner: &str) -> Result<usize, ApiError> {
    edit_meta(state, key, |meta| {
        if let Some(refs) = meta["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"] != json!(owner));
            if refs.is_empty()
                && let Some(m) = meta.as_object_mut()
            {
                m.remove("ownerReferences");
            }
        }
    })
    .await
}
