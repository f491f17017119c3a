//! Failure handling against a scripted fake peer.

use std::time::Duration;

use crate::common::{STEP, serve};
use qmp::{Qmp, QmpError};
use serde_json::json;

#[tokio::test]
async fn error_reply_maps_to_command_error() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let request = peer.expect("screendump").await;
        let error = json!({"class": "GenericError", "desc": "There is no console"});
        peer.send(json!({"id": request["id"], "error": error}))
            .await;
    });
    let (qmp, _events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    let err = qmp
        .execute("screendump", Some(json!({"filename": "/x"})))
        .await
        .expect_err("error");
    assert!(
        matches!(&err, QmpError::Command { class, desc }
            if class == "GenericError" && desc == "There is no console"),
        "{err:?}"
    );
    assert_eq!(err.class(), Some("GenericError"));
    assert_eq!(err.to_string(), "GenericError: There is no console");
    server.finish().await;
}

#[tokio::test]
async fn timeout_then_late_reply_is_ignored() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let slow = peer.expect("slow").await;
        let fast = peer.expect("fast").await;
        peer.reply(&slow, json!("late")).await;
        peer.reply(&fast, json!("fast")).await;
    });
    let (qmp, _events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    let short = qmp.with_timeout(Duration::from_millis(200));
    let err = short.execute("slow", None).await.expect_err("timeout");
    assert!(
        matches!(&err, QmpError::Timeout { op, .. } if op == "slow"),
        "{err:?}"
    );
    assert_eq!(
        qmp.execute("fast", None).await.expect("fast"),
        json!("fast")
    );
    server.finish().await;
}

#[tokio::test]
async fn hang_up_fails_pending_and_later_commands() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        peer.event("STOP", None).await;
        peer.recv().await;
        peer.recv().await;
        // Dropping the peer closes the socket with both requests unanswered.
    });
    let (qmp, mut events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    let (a, b) = tokio::join!(qmp.execute("one", None), qmp.execute("two", None));
    for result in [a, b] {
        let err = result.expect_err("must fail");
        assert!(err.is_disconnected(), "{err:?}");
        assert_eq!(err.to_string(), "QMP connection closed: peer hung up");
    }
    let err = qmp.query_status().await.expect_err("closed");
    assert!(err.is_disconnected(), "{err:?}");
    // Events sent before the hang-up are still delivered, then the stream ends.
    assert_eq!(events.recv().await.expect("STOP").event, "STOP");
    assert_eq!(events.recv().await, None);
    // quit on a closed connection is not an error: QEMU is gone either way.
    qmp.quit().await.expect("quit");
    server.finish().await;
}

#[tokio::test]
async fn garbage_lines_are_skipped() {
    let server = serve(|mut peer| async move {
        peer.handshake().await;
        let ping = peer.expect("ping").await;
        for junk in [
            &b"not json\n"[..],
            b"[1, 2]\n",
            b"\xff\xfe\x00\n",
            b"\r\n",
            b"{\"foo\": 1}\n",
            b"{\"event\": 5}\n",
            b"{\"return\": {}}\n",
            b"{\"return\": {}, \"id\": \"weird\"}\n",
            b"{\"return\": {}, \"id\": 999}\n",
        ] {
            peer.send_raw(junk).await;
        }
        peer.send(json!({"error": "not an object", "id": ping["id"]}))
            .await;
        let mut huge = vec![b'x'; (16 << 20) + 1];
        huge.push(b'\n');
        peer.send_raw(&huge).await;
        peer.event("GOOD", None).await;
        peer.reply(&ping, json!("pong")).await;
        let again = peer.expect("ping").await;
        peer.reply(&again, json!("pong2")).await;
    });
    let (qmp, mut events) = Qmp::connect(&server.path, STEP).await.expect("connect");
    assert_eq!(
        qmp.execute("ping", None).await.expect("ping"),
        json!("pong")
    );
    assert_eq!(events.try_recv().expect("GOOD").event, "GOOD");
    assert_eq!(events.try_recv(), None);
    assert_eq!(
        qmp.execute("ping", None).await.expect("ping"),
        json!("pong2")
    );
    server.finish().await;
}

#[tokio::test]
async fn handshake_failures() {
    let bad = serve(|mut peer| async move { peer.send(json!({"hello": 1})).await });
    let err = Qmp::connect(&bad.path, STEP)
        .await
        .expect_err("bad greeting");
    assert!(matches!(err, QmpError::Handshake(_)), "{err:?}");
    bad.finish().await;

    let silent = serve(|mut peer| async move { peer.expect_eof().await });
    let err = Qmp::connect(&silent.path, Duration::from_millis(200))
        .await
        .expect_err("silent");
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    silent.finish().await;

    let rejected = serve(|mut peer| async move {
        peer.greet().await;
        let caps = peer.expect("qmp_capabilities").await;
        let error = json!({"class": "CommandNotFound", "desc": "nope"});
        peer.send(json!({"id": caps["id"], "error": error})).await;
    });
    let err = Qmp::connect(&rejected.path, STEP)
        .await
        .expect_err("rejected");
    assert_eq!(err.class(), Some("CommandNotFound"));
    rejected.finish().await;

    let gone = serve(|_peer| async move {});
    let err = Qmp::connect(&gone.path, STEP).await.expect_err("hung up");
    assert!(err.is_disconnected(), "{err:?}");
    gone.finish().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let err = Qmp::connect(dir.path().join("none"), STEP)
        .await
        .expect_err("no socket");
    assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
}
