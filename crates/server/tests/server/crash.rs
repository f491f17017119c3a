//! `kill -9` in the middle of a burst of writes: every acknowledged write survives with
//! its resourceVersion, revisions are never handed out twice, and the dead server's lock
//! does not stop the next start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{Scratch, Server, Tls, https_client};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
/// Concurrent writers, each with its own connection.
const WRITERS: usize = 8;
/// Acknowledged creates before the kill; every writer has its next create in flight then.
const KILL_AFTER: usize = 200;
const BURST_DEADLINE: Duration = Duration::from_secs(60);

/// What a 201 said: name -> (resourceVersion, uid).
type Acks = Arc<Mutex<BTreeMap<String, (u64, String)>>>;

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("no numeric resourceVersion in {object}"))
}

/// Creates ConfigMaps one after another until a request fails (the server died),
/// recording each one acknowledged.
async fn writer(server_url: String, ca: Vec<u8>, token: String, id: usize, acks: Acks) {
    let client = https_client(&ca, Tls::default());
    for i in 0.. {
        let name = format!("w{id}-{i}");
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": name}, "data": {"writer": id.to_string()}});
        let sent = client
            .post(&server_url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let Ok(response) = sent else { return };
        let status = response.status();
        let Ok(bytes) = response.bytes().await else {
            return;
        };
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
        let object: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(object["metadata"]["name"], name.as_str());
        let uid = object["metadata"]["uid"].as_str().unwrap().to_owned();
        acks.lock().unwrap().insert(name, (rv(&object), uid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9_and_revisions_are_not_reused() {
    let scratch = Scratch::new();
    let mut first = Server::start(&scratch).await;
    let acks: Acks = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            tokio::spawn(writer(
                first.url(CONFIGMAPS),
                first.ca_pem(),
                first.token(),
                id,
                acks.clone(),
            ))
        })
        .collect();

    // The one deliberate moment: kill once enough creates are acknowledged, with the
    // writers still going.
    let started = Instant::now();
    while acks.lock().unwrap().len() < KILL_AFTER {
        assert!(
            started.elapsed() < BURST_DEADLINE,
            "only {} creates acknowledged in {BURST_DEADLINE:?}:\n{}",
            acks.lock().unwrap().len(),
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = first.stop(Signal::SIGKILL);
    assert_eq!(status.code(), None, "killed, not exited: {status}");
    let burst = started.elapsed();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(15), w)
            .await
            .expect("a writer still waiting 15 s after the kill")
            .unwrap();
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "kill -9 after {} acknowledged creates in {burst:?}",
        acks.len()
    );
    drop(first);

    let second = Server::start(&scratch).await;
    eprintln!(
        "restart after kill -9: ready after {:?}",
        second.ready_after
    );
    let lock = std::fs::read_to_string(second.data.join("lock")).unwrap();
    assert_eq!(
        lock,
        format!("{}\n", second.pid()),
        "the lock names the new server"
    );

    let client = https_client(&second.ca_pem(), Tls::default());
    let list: Value = serde_json::from_slice(
        &client
            .get(second.url(CONFIGMAPS))
            .bearer_auth(second.token())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["metadata"]["continue"].as_str().unwrap_or(""), "");
    let stored: BTreeMap<String, (u64, String)> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|cm| {
            let name = cm["metadata"]["name"].as_str().unwrap().to_owned();
            let uid = cm["metadata"]["uid"].as_str().unwrap().to_owned();
            (name, (rv(cm), uid))
        })
        .collect();
    let lost: Vec<_> = acks
        .iter()
        .filter(|(name, ack)| stored.get(*name) != Some(ack))
        .map(|(name, ack)| (name, ack, stored.get(name)))
        .collect();
    // The first few say enough.
    let shown = &lost[..lost.len().min(10)];
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost or changed (name, acknowledged, stored): {shown:?}",
        lost.len(),
        acks.len()
    );
    eprintln!(
        "{} stored, {} of them unacknowledged when the kill landed",
        stored.len(),
        stored
            .keys()
            .filter(|name| !acks.contains_key(*name))
            .count()
    );

    let newest = acks
        .values()
        .chain(stored.values())
        .map(|(rv, _)| *rv)
        .max()
        .unwrap();
    let after = client
        .post(second.url(CONFIGMAPS))
        .bearer_auth(second.token())
        .header("content-type", "application/json")
        .body(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 201);
    let after: Value = serde_json::from_slice(&after.bytes().await.unwrap()).unwrap();
    assert!(
        rv(&after) > newest,
        "the first write after the restart got {}, not above {newest}",
        rv(&after)
    );
}
