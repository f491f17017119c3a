//! Deleting a running pod: SIGTERM first, SIGKILL after the grace period, then the pod
//! disappears.

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use serde_json::json;

use crate::harness::{Cluster, running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_sends_sigterm_and_the_pod_goes() {
    let c = Cluster::start().await;
    let mark = c.scratch("bye");
    let script =
        format!("trap 'echo bye > {mark}; exit 0' TERM; echo hello; while :; do sleep 0.1; done");
    c.pod(
        "polite",
        &script,
        json!({"terminationGracePeriodSeconds": 20}),
    )
    .await;
    let pod = c.wait_phase("polite", "Running").await;
    let pid = c.pid(&pod);
    let asked = Instant::now();
    c.pods()
        .delete("polite", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_gone("polite").await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "bye\n");
    assert!(!running(pid));
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    assert!(
        !c.state.path().join(uid).exists(),
        "the pod's state is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let c = Cluster::start().await;
    c.pod(
        "stubborn",
        "trap '' TERM; while :; do sleep 0.1; done",
        json!({}),
    )
    .await;
    let pod = c.wait_phase("stubborn", "Running").await;
    let pid = c.pid(&pod);
    let asked = Instant::now();
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::default()
    };
    c.pods().delete("stubborn", &params).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(running(pid), "still running within its grace period");
    c.wait_gone("stubborn").await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!running(pid));
}
