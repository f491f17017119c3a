//! Watch delivery latency: many watchers on one namespace's ConfigMaps, one writer
//! creating ConfigMaps there at a steady rate, and for every (watcher, event) pair the
//! time from the write to the event's arrival at that watcher.
//!
//! Step by step:
//! 1. Create the namespace and read its (empty) list's `resourceVersion` R.
//! 2. Open every watch, `?watch=true&resourceVersion=R`, each on a connection of its own
//!    (as separate controllers would), and wait for all their response headers: the
//!    server subscribes before it answers, so from then on no event is a replay.
//! 3. Create `w-00000`, `w-00001`, ... at the given rate, each POST in its own task,
//!    recording when it was sent and when its answer (the acknowledgement) arrived.
//! 4. Each watcher timestamps every event line when the chunk completing it arrives,
//!    and stops once it has seen every write as an ADDED event.
//! 5. Latency from the acknowledgement is arrival minus answer (negative when the event
//!    beats the answer: the store publishes before it replies); latency from the send is
//!    arrival minus the POST's start, so it includes the durable write itself.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::client::{Client, Endpoint};
use super::load::configmap;
use super::ms;

/// Everything must have arrived this long after the last write was acknowledged.
const DRAIN: Duration = Duration::from_secs(60);

/// What was measured, in ms, sorted ascending.
#[derive(Debug, Clone, Default)]
pub struct WatchOutcome {
    pub from_ack_ms: Vec<f64>,
    pub from_send_ms: Vec<f64>,
    /// Each write's own round trip (send to acknowledgement).
    pub write_ms: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct ListMeta {
    metadata: ResourceVersion,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceVersion {
    resource_version: String,
}

/// Runs the measurement in the new namespace `ns` (see the module docs).
pub async fn measure(
    endpoint: &Endpoint,
    ns: &str,
    watchers: usize,
    writes: usize,
    rate: f64,
) -> anyhow::Result<WatchOutcome> {
    let writer = endpoint.client()?;
    writer.create_namespace(ns).await?;
    let collection = format!("/api/v1/namespaces/{ns}/configmaps");
    let list: ListMeta = writer.get(&collection).await?;
    let watch_path = format!(
        "{collection}?watch=true&resourceVersion={}",
        list.metadata.resource_version
    );

    let mut opening = JoinSet::new();
    for _ in 0..watchers {
        let client = endpoint.streaming_client()?;
        let path = watch_path.clone();
        opening.spawn(async move {
            let response = client.send(Method::GET, &path, None).await?;
            anyhow::Ok((client, response))
        });
    }
    let mut readers = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        let (client, response) = opened.context("opening a watch panicked")??;
        readers.spawn(read_events(client, response, writes));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut posts = JoinSet::new();
    for i in 0..writes {
        tick.tick().await;
        let (writer, path) = (writer.clone(), collection.clone());
        posts.spawn(async move {
            let body = configmap(&format!("w-{i:05}"), 0, None);
            let sent = Instant::now();
            writer
                .call::<IgnoredAny>(Method::POST, &path, Some(body))
                .await?;
            anyhow::Ok((i, sent, Instant::now()))
        });
    }
    let mut written = vec![None; writes];
    while let Some(post) = posts.join_next().await {
        let (i, sent, acked) = post.context("a write panicked")??;
        written[i] = Some((sent, acked));
    }
    let written: Vec<(Instant, Instant)> = written.into_iter().flatten().collect();
    if written.len() != writes {
        bail!("only {} of {writes} writes were recorded", written.len());
    }

    let mut outcome = WatchOutcome {
        write_ms: written.iter().map(|(s, a)| ms(*a - *s)).collect(),
        ..WatchOutcome::default()
    };
    let deadline = tokio::time::Instant::now() + DRAIN;
    while let Some(read) = tokio::time::timeout_at(deadline, readers.join_next())
        .await
        .context("watchers still waiting for events")?
    {
        let arrivals = read.context("a watcher panicked")??;
        for (arrived, (sent, acked)) in arrivals.iter().zip(&written) {
            outcome.from_ack_ms.push(signed_ms(*arrived, *acked));
            outcome.from_send_ms.push(signed_ms(*arrived, *sent));
        }
    }
    for v in [
        &mut outcome.from_ack_ms,
        &mut outcome.from_send_ms,
        &mut outcome.write_ms,
    ] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    Ok(outcome)
}

/// `later - earlier` in ms, negative when `later` is in fact earlier.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => ms(d),
        None => -ms(earlier - later),
    }
}

/// Reads a watch until all `writes` ADDED events arrived; returns their arrival times by
/// write index.
async fn read_events(
    _client: Client,
    mut response: reqwest::Response,
    writes: usize,
) -> anyhow::Result<Vec<Instant>> {
    let mut arrived = vec![None; writes];
    let mut seen = 0;
    let mut pending = Vec::new();
    while seen < writes {
        let chunk = response
            .chunk()
            .await
            .context("reading a watch")?
            .context("a watch ended early")?;
        let at = Instant::now();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(i) = added_index(&line)?
                && let Some(slot @ None) = arrived.get_mut(i)
            {
                *slot = Some(at);
                seen += 1;
            }
        }
    }
    Ok(arrived.into_iter().flatten().collect())
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: EventObject,
}

#[derive(Debug, Deserialize)]
struct EventObject {
    #[serde(default)]
    metadata: EventMeta,
}

#[derive(Debug, Default, Deserialize)]
struct EventMeta {
    #[serde(default)]
    name: String,
}

/// The write index of an ADDED event for `w-NNNNN`; None for other lines. An ERROR
/// event is an error.
fn added_index(line: &[u8]) -> anyhow::Result<Option<usize>> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let event: WatchEvent = serde_json::from_slice(line).context("decoding a watch event")?;
    match event.kind.as_str() {
        "ADDED" => Ok(event
            .object
            .metadata
            .name
            .strip_prefix("w-")
            .and_then(|n| n.parse().ok())),
        "ERROR" => bail!("watch error: {}", String::from_utf8_lossy(line)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_events_give_their_index() {
        let line = br#"{"type":"ADDED","object":{"metadata":{"name":"w-00042"}}}"#;
        assert_eq!(added_index(line).unwrap(), Some(42));
        let other = br#"{"type":"MODIFIED","object":{"metadata":{"name":"w-00042"}}}"#;
        assert_eq!(added_index(other).unwrap(), None);
        let bookmark = br#"{"type":"BOOKMARK","object":{"metadata":{}}}"#;
        assert_eq!(added_index(bookmark).unwrap(), None);
        assert_eq!(added_index(b"\n").unwrap(), None);
    }

    #[test]
    fn error_events_are_errors() {
        let line = br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#;
        assert!(added_index(line).is_err());
    }

    #[test]
    fn signed_durations() {
        let a = Instant::now();
        let b = a + Duration::from_millis(3);
        assert_eq!(signed_ms(b, a), 3.0);
        assert_eq!(signed_ms(a, b), -3.0);
    }
}
