//! `kubectl logs` through the API server's `pods/log`, which reads the runner's log
//! endpoint over TLS.

use std::time::{Duration, Instant};

use futures_util::AsyncBufReadExt;
use futures_util::TryStreamExt;
use kube::api::LogParams;
use serde_json::json;

use crate::harness::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_and_followed_through_the_api_server() {
    let c = Cluster::start().await;
    c.pod(
        "talker",
        "for i in 1 2 3; do echo line $i; sleep 0.4; done",
        json!({}),
    )
    .await;
    c.wait_phase("talker", "Running").await;

    // Followed: the lines come as they are written, and the stream ends with the process.
    let started = Instant::now();
    let follow = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = c
        .pods()
        .log_stream("talker", &follow)
        .await
        .unwrap()
        .lines();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(5), lines.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push((line, started.elapsed()));
    }
    let text: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(text, ["line 1", "line 2", "line 3"]);
    assert!(
        seen[2].1 - seen[0].1 >= Duration::from_millis(500),
        "streamed: {seen:?}"
    );

    c.wait_phase("talker", "Succeeded").await;
    let all = c
        .pods()
        .logs("talker", &LogParams::default())
        .await
        .unwrap();
    assert_eq!(all, "line 1\nline 2\nline 3\n");
    let tail = LogParams {
        tail_lines: Some(1),
        ..LogParams::default()
    };
    assert_eq!(c.pods().logs("talker", &tail).await.unwrap(), "line 3\n");
    let limited = LogParams {
        limit_bytes: Some(9),
        ..LogParams::default()
    };
    assert_eq!(
        c.pods().logs("talker", &limited).await.unwrap(),
        "line 1\nli"
    );
}
