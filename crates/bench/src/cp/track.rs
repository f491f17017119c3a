//! Following the benchmark's VMIs and their launcher pods through two watches, with the
//! client's clock.
//!
//! 1. Both watches start at the revision of an empty list, before the first create, and
//!    the benchmark waits for their response headers (the server subscribes before it
//!    answers), so every event of every VMI and pod arrives.
//! 2. Each event is stamped with the time the chunk completing its line arrived, and
//!    applied to its object's timeline: a VMI's by its name, a launcher pod's by its
//!    `vm.kubevirt.io/name` label.
//! 3. A VMI's writes are the MODIFIED events up to and including the one that first says
//!    phase Running (its creation is not counted). A pod's writes are its ADDED and
//!    MODIFIED events whose `resourceVersion` is at most that of the VMI's Running event:
//!    revisions are positions in the server's one log, so this orders the two watches
//!    exactly where arrival times could not.
//! 4. Rounds wait on [`Tracker::wait`] until a condition holds for all their VMIs; a watch
//!    that fails or ends makes every wait fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::api::client::{Client, Endpoint};

/// The label the pod renderer puts on a launcher pod, naming its VMI.
const VMI_LABEL: &str = "vm.kubevirt.io/name";

/// What one watch line says, reduced to what the timelines need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub name: String,
    pub revision: u64,
    /// A pod's `vm.kubevirt.io/name` label.
    pub vmi: Option<String>,
    pub phase: Option<String>,
    /// A pod's `spec.nodeName`.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: RawObject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawObject {
    metadata: RawMeta,
    spec: RawSpec,
    status: RawStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawMeta {
    name: String,
    resource_version: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawSpec {
    node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStatus {
    phase: Option<String>,
}

/// Parses one watch line; None for blank lines and bookmarks. An ERROR event, or an
/// object without a numeric `resourceVersion`, is an error.
pub fn parse_event(line: &[u8]) -> anyhow::Result<Option<Event>> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let raw: RawEvent = serde_json::from_slice(line).context("decoding a watch event")?;
    let kind = match raw.kind.as_str() {
        "ADDED" => EventKind::Added,
        "MODIFIED" => EventKind::Modified,
        "DELETED" => EventKind::Deleted,
        "BOOKMARK" => return Ok(None),
        _ => bail!("watch event: {}", String::from_utf8_lossy(line)),
    };
    let meta = raw.object.metadata;
    let revision = meta.resource_version.parse().with_context(|| {
        format!(
            "resourceVersion {:?} of {} is not a number",
            meta.resource_version, meta.name
        )
    })?;
    Ok(Some(Event {
        kind,
        vmi: meta.labels.get(VMI_LABEL).cloned(),
        name: meta.name,
        revision,
        phase: raw.object.status.phase,
        node: raw.object.spec.node_name,
    }))
}

/// One VMI as the watch saw it.
#[derive(Debug, Clone, Default)]
pub struct VmiTimeline {
    pub added: Option<Instant>,
    /// When each phase was first seen.
    pub phases: BTreeMap<String, Instant>,
    /// The first event with phase Running: when it arrived, and its revision.
    pub running: Option<(Instant, u64)>,
    /// MODIFIED events up to and including `running`.
    pub writes: u32,
    pub deleted: Option<Instant>,
}

impl VmiTimeline {
    pub fn apply(&mut self, event: &Event, at: Instant) {
        match event.kind {
            EventKind::Added => {
                self.added.get_or_insert(at);
            }
            EventKind::Modified if self.running.is_none() => self.writes += 1,
            EventKind::Modified => {}
            EventKind::Deleted => {
                self.deleted.get_or_insert(at);
            }
        }
        if let Some(phase) = &event.phase {
            self.phases.entry(phase.clone()).or_insert(at);
            if phase == "Running" && self.running.is_none() {
                self.running = Some((at, event.revision));
            }
        }
    }

    pub fn phase_at(&self, phase: &str) -> Option<Instant> {
        self.phases.get(phase).copied()
    }
}

/// One launcher pod as the watch saw it.
#[derive(Debug, Clone, Default)]
pub struct PodTimeline {
    pub added: Option<Instant>,
    /// The first event with `spec.nodeName`.
    pub bound: Option<Instant>,
    /// The first event with phase Running.
    pub running: Option<Instant>,
    /// Revisions of its ADDED and MODIFIED events.
    pub writes: Vec<u64>,
    pub deleted: Option<Instant>,
}

impl PodTimeline {
    pub fn apply(&mut self, event: &Event, at: Instant) {
        match event.kind {
            EventKind::Added | EventKind::Modified => self.writes.push(event.revision),
            EventKind::Deleted => {
                self.deleted.get_or_insert(at);
            }
        }
        if event.kind == EventKind::Added {
            self.added.get_or_insert(at);
        }
        if event.node.as_deref().is_some_and(|n| !n.is_empty()) {
            self.bound.get_or_insert(at);
        }
        if event.phase.as_deref() == Some("Running") {
            self.running.get_or_insert(at);
        }
    }

    /// Writes at or before `revision`.
    pub fn writes_until(&self, revision: u64) -> u32 {
        self.writes.iter().filter(|&&r| r <= revision).count() as u32
    }
}

/// Everything both watches have seen.
#[derive(Debug, Default)]
pub struct Seen {
    pub vmis: HashMap<String, VmiTimeline>,
    /// By VMI name.
    pub pods: HashMap<String, PodTimeline>,
    /// Events of each watch so far, of any kind.
    pub vmi_events: u64,
    pub pod_events: u64,
    /// Why a watch stopped, once one has.
    failed: Option<String>,
}

impl Seen {
    fn apply_vmi(&mut self, event: &Event, at: Instant) {
        self.vmi_events += 1;
        self.vmis
            .entry(event.name.clone())
            .or_default()
            .apply(event, at);
    }

    fn apply_pod(&mut self, event: &Event, at: Instant) {
        self.pod_events += 1;
        if let Some(vmi) = &event.vmi {
            self.pods.entry(vmi.clone()).or_default().apply(event, at);
        }
    }
}

/// Which collection a watch follows.
#[derive(Debug, Clone, Copy)]
enum Watched {
    Vmis,
    Pods,
}

/// The two watches and what they saw; the watches stop when this is dropped.
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    changed: tokio::sync::watch::Receiver<u64>,
    _tasks: JoinSet<()>,
}

#[derive(Debug, Deserialize)]
struct ListMeta {
    metadata: ListRevision,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListRevision {
    resource_version: String,
}

impl Tracker {
    /// Opens both watches (see the module docs): VMIs at `vmis?labelSelector=..`, launcher
    /// pods at `pods?labelSelector=..`.
    pub async fn start(endpoint: &Endpoint, vmis: &str, pods: &str) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, changed) = tokio::sync::watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut tasks = JoinSet::new();
        for (collection, watched) in [(vmis, Watched::Vmis), (pods, Watched::Pods)] {
            let client = endpoint.streaming_client()?;
            let list: ListMeta = client.get(collection).await?;
            let sep = if collection.contains('?') { '&' } else { '?' };
            let path = format!(
                "{collection}{sep}watch=true&resourceVersion={}",
                list.metadata.resource_version
            );
            let response = client.send(Method::GET, &path, None).await?;
            let (seen, tx) = (seen.clone(), tx.clone());
            tasks.spawn(async move {
                let why = match follow(client, response, watched, &seen, &tx).await {
                    Ok(()) => format!("the watch {path} ended"),
                    Err(e) => format!("the watch {path}: {e:#}"),
                };
                lock(&seen).failed.get_or_insert(why);
                tx.send_modify(|v| *v += 1);
            });
        }
        Ok(Self {
            seen,
            changed,
            _tasks: tasks,
        })
    }

    /// Runs `f` on what has been seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&lock(&self.seen))
    }

    /// Waits until `done` holds for every name in `names`; fails after `within`, when a
    /// watch has stopped, or when `fail` gives a reason for one of them (a VMI that
    /// Failed).
    pub async fn wait(
        &mut self,
        what: &str,
        names: &[String],
        within: Duration,
        done: impl Fn(&Seen, &str) -> bool,
        fail: impl Fn(&Seen, &str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.changed.borrow_and_update();
            {
                let seen = lock(&self.seen);
                if let Some(why) = &seen.failed {
                    bail!("{what}: {why}");
                }
                if let Some(why) = names.iter().find_map(|n| fail(&seen, n)) {
                    bail!("{what}: {why}");
                }
                let missing: Vec<&String> = names.iter().filter(|n| !done(&seen, n)).collect();
                if missing.is_empty() {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{what}: {} of {} not within {within:?}, e.g. {:?}",
                        missing.len(),
                        names.len(),
                        &missing[..missing.len().min(5)]
                    );
                }
            }
            let _ = tokio::time::timeout_at(deadline, self.changed.changed()).await;
        }
    }
}

/// The lock on what was seen; a watch task that panicked holding it leaves its last
/// event half-applied, which the counts can live with.
fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads a watch until it ends, applying each event.
async fn follow(
    _client: Client,
    mut response: reqwest::Response,
    watched: Watched,
    seen: &Mutex<Seen>,
    tx: &tokio::sync::watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading")? {
        let at = Instant::now();
        pending.extend_from_slice(&chunk);
        let mut any = false;
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Some(event) = parse_event(&line)? else {
                continue;
            };
            let mut seen = lock(seen);
            match watched {
                Watched::Vmis => seen.apply_vmi(&event, at),
                Watched::Pods => seen.apply_pod(&event, at),
            }
            any = true;
        }
        if any {
            tx.send_modify(|v| *v += 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi_event(kind: &str, rv: u64, phase: Option<&str>) -> Event {
        let status = phase.map_or(String::new(), |p| format!(r#","status":{{"phase":"{p}"}}"#));
        let line = format!(
            r#"{{"type":"{kind}","object":{{"kind":"VirtualMachineInstance","metadata":{{"name":"v1","resourceVersion":"{rv}"}},"spec":{{"domain":{{}}}}{status}}}}}"#
        );
        parse_event(line.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn parses_pods_with_their_vmi_node_and_phase() {
        let line = br#"{"type":"MODIFIED","object":{"metadata":{"name":"virt-launcher-v1-abcde","resourceVersion":"42","labels":{"kubevirt.io":"virt-launcher","vm.kubevirt.io/name":"v1"}},"spec":{"nodeName":"node1","containers":[]},"status":{"phase":"Pending"}}}"#;
        let event = parse_event(line).unwrap().unwrap();
        assert_eq!(
            event,
            Event {
                kind: EventKind::Modified,
                name: "virt-launcher-v1-abcde".into(),
                revision: 42,
                vmi: Some("v1".into()),
                phase: Some("Pending".into()),
                node: Some("node1".into()),
            }
        );
    }

    #[test]
    fn blank_lines_and_bookmarks_are_skipped_errors_fail() {
        assert_eq!(parse_event(b"\n").unwrap(), None);
        let bookmark = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#;
        assert_eq!(parse_event(bookmark).unwrap(), None);
        let error = br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#;
        assert!(parse_event(error).is_err());
        let no_rv = br#"{"type":"ADDED","object":{"metadata":{"name":"x"}}}"#;
        assert!(parse_event(no_rv).is_err());
    }

    #[test]
    fn vmi_writes_count_modifications_up_to_running() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut vmi = VmiTimeline::default();
        vmi.apply(&vmi_event("ADDED", 10, None), at(0));
        vmi.apply(&vmi_event("MODIFIED", 12, Some("Scheduling")), at(10));
        vmi.apply(&vmi_event("MODIFIED", 15, Some("Scheduled")), at(40));
        vmi.apply(&vmi_event("MODIFIED", 20, Some("Running")), at(300));
        vmi.apply(&vmi_event("MODIFIED", 25, Some("Running")), at(400));
        vmi.apply(&vmi_event("DELETED", 30, Some("Running")), at(900));
        assert_eq!(vmi.writes, 3);
        assert_eq!(vmi.running, Some((at(300), 20)));
        assert_eq!(vmi.added, Some(at(0)));
        assert_eq!(vmi.phase_at("Scheduled"), Some(at(40)));
        assert_eq!(vmi.phase_at("Running"), Some(at(300)));
        assert_eq!(vmi.deleted, Some(at(900)));
    }

    #[test]
    fn pod_writes_are_ordered_by_revision() {
        let t0 = Instant::now();
        let pod = |kind: EventKind, revision, node: Option<&str>, phase: &str| Event {
            kind,
            name: "virt-launcher-v1-x".into(),
            revision,
            vmi: Some("v1".into()),
            phase: Some(phase.into()),
            node: node.map(Into::into),
        };
        let mut p = PodTimeline::default();
        p.apply(&pod(EventKind::Added, 11, None, "Pending"), t0);
        p.apply(&pod(EventKind::Modified, 13, Some("node1"), "Pending"), t0);
        p.apply(&pod(EventKind::Modified, 14, Some("node1"), "Running"), t0);
        p.apply(&pod(EventKind::Modified, 22, Some("node1"), "Running"), t0);
        p.apply(&pod(EventKind::Deleted, 31, Some("node1"), "Running"), t0);
        assert_eq!(p.writes_until(20), 3);
        assert_eq!(p.writes_until(u64::MAX), 4);
        assert!(p.added.is_some() && p.bound.is_some() && p.running.is_some());
        assert!(p.deleted.is_some());
    }

    #[test]
    fn pods_without_the_vmi_label_are_ignored() {
        let mut seen = Seen::default();
        let event = Event {
            kind: EventKind::Added,
            name: "other".into(),
            revision: 1,
            vmi: None,
            phase: None,
            node: None,
        };
        seen.apply_pod(&event, Instant::now());
        assert!(seen.pods.is_empty());
    }
}
