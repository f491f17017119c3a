//! A runner that stops and starts again adopts the processes it left running, and
//! reports what ended while it was away.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Cluster, running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_adopts_its_processes_and_reports_their_exit() {
    let mut c = Cluster::start().await;
    let stop = c.scratch("stop");
    let script = format!("echo started; while [ ! -e {stop} ]; do sleep 0.05; done; exit 7");
    c.pod("survivor", &script, json!({})).await;
    let pod = c.wait_phase("survivor", "Running").await;
    let pid = c.pid(&pod);
    let started_at = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();

    c.stop_runner().await;
    assert!(running(pid), "the process outlives the runner");
    c.start_runner();
    // Adopted, not started again: same process, one start in the log, same start time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod = c.wait_phase("survivor", "Running").await;
    assert_eq!(c.pid(&pod), pid);
    assert!(running(pid));
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
        started_at
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(c.state.path().join(uid).join("main.log")).unwrap();
    assert_eq!(log, "started\n");

    // It ends while no runner watches; the next one reports how.
    c.stop_runner().await;
    std::fs::write(&stop, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_runner();
    let pod = c.wait_phase("survivor", "Failed").await;
    let done = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(done["exitCode"], 7, "{pod:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_removes_what_deleted_pods_left() {
    let mut c = Cluster::start().await;
    c.pod("forgotten", "while :; do sleep 0.1; done", json!({}))
        .await;
    let pod = c.wait_phase("forgotten", "Running").await;
    let pid = c.pid(&pod);
    c.stop_runner().await;
    // Forced away while no runner watches.
    let force = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    c.pods().delete("forgotten", &force).await.unwrap();
    c.wait_gone("forgotten").await;
    c.start_runner();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let dir = c.state.path().join(uid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(pid) || dir.exists() {
        assert!(std::time::Instant::now() < deadline, "orphan not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
