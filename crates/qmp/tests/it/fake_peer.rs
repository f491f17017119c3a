//! Protocol behaviour against a scripted fake peer: handshake, correlation, events.

use std::path::Path;

use crate::common::{STEP, serve};
use qmp::{DEFAULT_COMMAND_TIMEOUT, Qmp, ScreendumpFormat, StatusInfo};
use serde_json::{Value, json};

#[tokio::test]
async fn greeting_and_capabilities() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        peer.expect_eof().await;
    });
    let (qmp, mut events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    assert_eq!(qmp.version().to_string(), "9.2.1");
    assert_eq!(qmp.version().package, "v9.2.1");
    assert_eq!(qmp.greeting().capabilities, ["oob"]);
    assert_eq!(qmp.timeout(), DEFAULT_COMMAND_TIMEOUT);
    // Dropping the last handle closes our side and ends the event stream.
    drop(qmp);
    assert_eq!(
        tokio::time::timeout(STEP, events.recv())
            .await
            .expect("stream end"),
        None
    );
    server.finish().await;
}

#[tokio::test]
async fn concurrent_commands_answered_out_of_order() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let (a, b) = (peer.recv().await, peer.recv().await);
        let (a, b) = if a["execute"] == "query-a" {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(a["execute"], "query-a");
        assert_eq!(b["execute"], "query-b");
        assert_eq!(b["arguments"], json!({"x": 1}));
        assert_ne!(a["id"], b["id"]);
        peer.reply(&b, json!("for b")).await;
        peer.reply(&a, json!({"for": "a"})).await;
        peer.expect_eof().await;
    });
    let (qmp, _events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    let other = qmp.clone();
    let (a, b) = tokio::join!(
        qmp.execute("query-a", None),
        other.execute("query-b", Some(json!({"x": 1}))),
    );
    assert_eq!(a.expect("query-a"), json!({"for": "a"}));
    assert_eq!(b.expect("query-b"), json!("for b"));
    drop((qmp, other));
    server.finish().await;
}

#[tokio::test]
async fn event_before_reply_is_delivered_in_order() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let cont = peer.expect("cont").await;
        peer.event("RESUME", None).await;
        peer.event("VSERPORT_CHANGE", Some(json!({"id": "ch0", "open": true})))
            .await;
        peer.reply(&cont, json!({})).await;
        let stop = peer.expect("stop").await;
        peer.reply(&stop, json!({})).await;
        peer.event("STOP", None).await;
    });
    let (qmp, mut events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    qmp.cont().await.expect("cont");
    // Both events preceded the reply, so they must already be queued.
    let resume = events
        .try_recv()
        .expect("RESUME queued before cont returned");
    assert_eq!(resume.event, "RESUME");
    assert_eq!(resume.data, Value::Null);
    assert_eq!(resume.timestamp, (1_700_000_000, 42));
    let port = events.try_recv().expect("second event queued");
    assert_eq!(port.event, "VSERPORT_CHANGE");
    assert_eq!(port.data["open"], true);
    // An event after the reply arrives later.
    qmp.stop().await.expect("stop");
    events.wait_for("STOP", STEP).await.expect("STOP");
    server.finish().await;
}

#[tokio::test]
async fn typed_helpers() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let q = peer.expect("query-status").await;
        let status = json!({"status": "prelaunch", "running": false, "singlestep": false});
        peer.reply(&q, status).await;
        let shot = peer.expect("screendump").await;
        assert_eq!(
            shot["arguments"],
            json!({"filename": "/tmp/s.png", "format": "png"})
        );
        peer.reply(&shot, json!({})).await;
        for command in ["system_powerdown", "system_reset"] {
            let request = peer.expect(command).await;
            assert!(request.get("arguments").is_none());
            peer.reply(&request, json!({})).await;
        }
        let q = peer.expect("query-name").await;
        peer.reply(&q, json!({"name": 7})).await;
    });
    let (qmp, _events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    let status = qmp.query_status().await.expect("query-status");
    let want = StatusInfo {
        running: false,
        status: "prelaunch".into(),
    };
    assert_eq!(status, want);
    let path = Path::new("/tmp/s.png");
    qmp.screendump(path, ScreendumpFormat::Png)
        .await
        .expect("screendump");
    qmp.system_powerdown().await.expect("system_powerdown");
    qmp.system_reset().await.expect("system_reset");
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Name {
        name: String,
    }
    let err = qmp
        .execute_as::<Name>("query-name", None)
        .await
        .expect_err("bad shape");
    assert!(matches!(err, qmp::QmpError::Decode { ref command, .. } if command == "query-name"));
    server.finish().await;
}
