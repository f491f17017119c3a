//! Fixed-count write load over N concurrent clients: ConfigMap creates and updates (PUT
//! with the `resourceVersion` the create returned, as a controller does) against the API
//! server, and puts of the same bytes under the same keys against etcd.
//!
//! Each client is one task that takes the next index until `count` are done, so fast
//! clients do more; the figure is `count` over the wall time of the whole batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::Client;
use super::etcd::EtcdClient;

/// Runs `op(worker, i)` for every `i < count`, each worker doing one at a time; returns
/// the wall time. The first error stops everything (the other tasks are aborted).
pub async fn drive<W, F, Fut>(workers: &[W], count: usize, op: F) -> anyhow::Result<Duration>
where
    W: Clone + Send + 'static,
    F: Fn(W, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in workers {
        let (worker, op, next) = (worker.clone(), op.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                op(worker.clone(), i).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a load task panicked")??;
    }
    Ok(started.elapsed())
}

/// The name of the `i`th object of a batch.
pub fn name(i: usize) -> String {
    format!("cm-{i:05}")
}

/// A ConfigMap of about 300 bytes of JSON: a label and a 128-byte value that `round`
/// changes. With `resource_version`, an update conditional on it.
pub fn configmap(name: &str, round: usize, resource_version: Option<&str>) -> Vec<u8> {
    let mut metadata = json!({"name": name, "labels": {"app": "kubevirt-rs-bench"}});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let payload: String = format!("{name}-{round}-")
        .chars()
        .cycle()
        .take(128)
        .collect();
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"payload": payload},
    });
    object.to_string().into_bytes()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    metadata: WrittenMeta,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenMeta {
    resource_version: String,
}

/// Creates `count` ConfigMaps in `ns`; returns the wall time and each one's
/// `resourceVersion`, by index.
pub async fn create_configmaps(
    clients: &[Client],
    ns: &str,
    count: usize,
) -> anyhow::Result<(Duration, Vec<String>)> {
    let versions = Arc::new(Mutex::new(vec![String::new(); count]));
    let path = Arc::<str>::from(format!("/api/v1/namespaces/{ns}/configmaps"));
    let sink = versions.clone();
    let took = drive(clients, count, move |client, i| {
        let (path, sink) = (path.clone(), sink.clone());
        async move {
            let body = configmap(&name(i), 0, None);
            let written: Written = client.call(Method::POST, &path, Some(body)).await?;
            let mut versions = sink
                .lock()
                .map_err(|_| anyhow::anyhow!("resourceVersion list poisoned"))?;
            versions[i] = written.metadata.resource_version;
            Ok(())
        }
    })
    .await?;
    let versions = versions
        .lock()
        .map_err(|_| anyhow::anyhow!("resourceVersion list poisoned"))?
        .clone();
    Ok((took, versions))
}

/// Replaces each ConfigMap `create_configmaps` made, conditionally on its version.
pub async fn update_configmaps(
    clients: &[Client],
    ns: &str,
    versions: Vec<String>,
) -> anyhow::Result<Duration> {
    let versions = Arc::new(versions);
    let ns = Arc::<str>::from(ns);
    drive(clients, versions.len(), move |client, i| {
        let (versions, ns) = (versions.clone(), ns.clone());
        async move {
            let name = name(i);
            let body = configmap(&name, 1, Some(&versions[i]));
            let path = format!("/api/v1/namespaces/{ns}/configmaps/{name}");
            client
                .call::<IgnoredAny>(Method::PUT, &path, Some(body))
                .await?;
            Ok(())
        }
    })
    .await
}

/// Puts `count` values under `prefix` (the keys and bytes the server would store for
/// the same ConfigMaps, in JSON); `round` 0 writes new keys, later rounds overwrite.
pub async fn etcd_puts(
    clients: &[EtcdClient],
    prefix: &str,
    count: usize,
    round: usize,
) -> anyhow::Result<Duration> {
    let prefix = Arc::<str>::from(prefix);
    drive(clients, count, move |client, i| {
        let prefix = prefix.clone();
        async move {
            let name = name(i);
            client
                .put(&format!("{prefix}{name}"), &configmap(&name, round, None))
                .await
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmaps_are_json_of_the_stated_size() {
        let body = configmap(&name(7), 0, Some("42"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["metadata"]["name"], "cm-00007");
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["data"]["payload"].as_str().map(str::len), Some(128));
        assert!(body.len() < 400, "{}", body.len());
    }

    #[tokio::test]
    async fn drive_runs_each_index_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        drive(&[(), (), ()], 50, move |(), i| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(i);
                Ok(())
            }
        })
        .await
        .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn drive_stops_at_the_first_error() {
        let result = drive(&[()], 10, |(), i| async move {
            anyhow::ensure!(i < 3, "op {i} failed");
            Ok(())
        })
        .await;
        assert!(result.is_err());
    }
}
