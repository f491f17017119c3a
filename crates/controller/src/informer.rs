//! Caches: one reflector per kind, its changes fanned out to the controllers that read it,
//! and the expectations that bridge a write and the watch event that reports it.
//!
//! 1. The reflector applies a watch event to its store.
//! 2. Only then the object is observed by the expectations and handed to each subscriber
//!    (a controller's own trigger or its owner trigger), so a reconcile it starts always
//!    reads a store that already holds the change.
//! 3. A controller that creates or deletes an object records it in its expectations; until
//!    the watch reports that object, reads of the cache see it as created or deleting. This
//!    is what keeps a second launcher pod or an extra replica from being made off a cache
//!    that lags the controller's own writes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

/// A stream of changed objects, as a controller's trigger wants it.
pub type Trigger<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// A cache of one kind, and what keeps it current.
pub struct Informer<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// The cache.
    pub store: Store<K>,
    /// One trigger per subscriber, in the order asked for.
    pub triggers: Vec<Trigger<K>>,
    /// Runs the watch; the cache and triggers go quiet when it is dropped.
    pub driver: futures_util::future::BoxFuture<'static, ()>,
}

impl<K: Resource + 'static> Debug for Informer<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("triggers", &self.triggers.len())
            .finish_non_exhaustive()
    }
}

/// Watches `api` into a store; `subscribers` triggers, and the `observers` told of every
/// object the watch reports.
pub fn informer<K>(
    api: Api<K>,
    config: watcher::Config,
    subscribers: usize,
    observers: Vec<Arc<Expectations<K>>>,
) -> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let mut senders = Vec::with_capacity(subscribers);
    let mut triggers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        triggers.push(receiver_stream(rx).map(Ok).boxed());
    }
    let kind = K::kind(&()).into_owned();
    let events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let driver = async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(obj) => {
                    for o in &observers {
                        o.observe(obj.meta());
                    }
                    for tx in &senders {
                        // A closed receiver is a controller that stopped; the others go on.
                        let _ = tx.send(obj.clone());
                    }
                }
                Err(error) => warn!(%kind, %error, "watch failed; retrying"),
            }
        }
    }
    .boxed();
    Informer {
        store,
        triggers,
        driver,
    }
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::UnboundedReceiver<T>) -> impl Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// How long an unobserved expectation is trusted; past it the cache wins (a watch that
/// compressed create-then-delete never reports the object).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Pending<K> {
    created: Vec<(Instant, K)>,
    deleted: Vec<(Instant, String)>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Self {
            created: Vec::new(),
            deleted: Vec::new(),
        }
    }
}

/// Objects an owner created or deleted that the cache may not show yet, by owner uid.
#[derive(Debug)]
pub struct Expectations<K> {
    pending: Mutex<HashMap<String, Pending<K>>>,
}

impl<K> Default for Expectations<K> {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
        }
    }
}

impl<K: Resource + Clone> Expectations<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending<K>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `owner` created `obj` (as the server returned it).
    pub fn created(&self, owner: &str, obj: K) {
        self.lock()
            .entry(owner.to_owned())
            .or_default()
            .created
            .push((Instant::now(), obj));
    }

    /// `owner` deleted the object with `uid`.
    pub fn deleted(&self, owner: &str, uid: &str) {
        self.lock()
            .entry(owner.to_owned())
            .or_default()
            .deleted
            .push((Instant::now(), uid.to_owned()));
    }

    /// The watch reported `meta`'s object: the cache now has it, and has its deletion
    /// once it shows a deletionTimestamp (an older version of a deleted object, still on
    /// its way, does not count).
    pub fn observe(&self, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.as_deref() else {
            return;
        };
        let deleting = meta.deletion_timestamp.is_some();
        let mut pending = self.lock();
        pending.retain(|_, p| {
            p.created.retain(|(at, o)| {
                o.meta().uid.as_deref() != Some(uid) && at.elapsed() < EXPECTATION_TTL
            });
            p.deleted
                .retain(|(at, u)| !(deleting && u == uid) && at.elapsed() < EXPECTATION_TTL);
            !p.created.is_empty() || !p.deleted.is_empty()
        });
    }

    /// `cached` as `owner` last left it: its unreported creations added, its unreported
    /// deletions marked as deleting.
    pub fn overlay(&self, owner: &str, mut cached: Vec<K>) -> Vec<K> {
        let mut pending = self.lock();
        let Some(p) = pending.get_mut(owner) else {
            return cached;
        };
        p.created.retain(|(at, _)| at.elapsed() < EXPECTATION_TTL);
        p.deleted.retain(|(at, _)| at.elapsed() < EXPECTATION_TTL);
        for (_, obj) in &p.created {
            if !cached.iter().any(|c| c.meta().uid == obj.meta().uid) {
                cached.push(obj.clone());
            }
        }
        for obj in &mut cached {
            let uid = obj.meta().uid.clone().unwrap_or_default();
            let meta = obj.meta_mut();
            if meta.deletion_timestamp.is_none() && p.deleted.iter().any(|(_, u)| *u == uid) {
                meta.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            }
        }
        if p.created.is_empty() && p.deleted.is_empty() {
            pending.remove(owner);
        }
        cached
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn pod(uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn unreported_writes_show_until_the_watch_reports_them() {
        let e = Expectations::default();
        e.created("vmi", pod("p2"));
        e.deleted("vmi", "p1");
        let view = e.overlay("vmi", vec![pod("p1")]);
        assert_eq!(view.len(), 2);
        assert!(view[0].metadata.deletion_timestamp.is_some());
        assert!(e.overlay("other", vec![]).is_empty());
        // A version of p1 from before the deletion does not end its expectation.
        e.observe(&pod("p1").metadata);
        e.observe(&pod("p2").metadata);
        let view = e.overlay("vmi", vec![pod("p1")]);
        assert_eq!(view.len(), 1);
        assert!(view[0].metadata.deletion_timestamp.is_some());
        let mut deleting = pod("p1");
        deleting.metadata.deletion_timestamp = view[0].metadata.deletion_timestamp.clone();
        e.observe(&deleting.metadata);
        let view = e.overlay("vmi", vec![pod("p1")]);
        assert!(view[0].metadata.deletion_timestamp.is_none());
    }
}
