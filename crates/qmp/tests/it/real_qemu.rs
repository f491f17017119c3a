//! Lifecycle against a real `qemu-system-x86_64` (microvm, TCG, paused at start).
//!
//! Set `KUBEVIRT_RS_SKIP_QEMU=1` to skip; otherwise a missing QEMU fails the test.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use qmp::{Qmp, ScreendumpFormat};
use tokio::process::{Child, Command};

const STEP: Duration = Duration::from_secs(10);

fn skip() -> bool {
    let skip = std::env::var("KUBEVIRT_RS_SKIP_QEMU").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipping real QEMU test: KUBEVIRT_RS_SKIP_QEMU=1");
    }
    skip
}

fn spawn_qemu(socket: &Path) -> Child {
    Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "microvm,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run qemu-system-x86_64 (install it or set KUBEVIRT_RS_SKIP_QEMU=1)")
}

async fn wait_for_socket(child: &mut Child, socket: &Path) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !socket.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("qemu exited before creating its QMP socket: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QMP socket after {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn real_qemu_lifecycle() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("qmp.sock");
    let mut child = spawn_qemu(&socket);
    wait_for_socket(&mut child, &socket).await;

    let (qmp, mut events) = Qmp::connect(&socket, STEP).await.expect("connect");
    assert!(qmp.version().major >= 2, "version {}", qmp.version());

    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(
        (status.status.as_str(), status.running),
        ("prelaunch", false)
    );

    // Several commands in flight at once from clones of one handle.
    let (a, b) = (qmp.clone(), qmp.clone());
    let (ra, rb, rc) = tokio::join!(a.query_status(), b.query_status(), qmp.query_status());
    for r in [ra, rb, rc] {
        assert!(!r.expect("concurrent query-status").running);
    }

    qmp.cont().await.expect("cont");
    assert_eq!(
        events.wait_for("RESUME", STEP).await.expect("RESUME").event,
        "RESUME"
    );
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!((status.status.as_str(), status.running), ("running", true));

    qmp.stop().await.expect("stop");
    events.wait_for("STOP", STEP).await.expect("STOP");
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!((status.status.as_str(), status.running), ("paused", false));

    // No display device: QEMU rejects screendump with a GenericError.
    let shot = dir.path().join("screen.ppm");
    let err = qmp
        .screendump(&shot, ScreendumpFormat::Ppm)
        .await
        .expect_err("no console");
    assert_eq!(err.class(), Some("GenericError"), "{err}");

    qmp.quit().await.expect("quit");
    let shutdown = events.wait_for("SHUTDOWN", STEP).await.expect("SHUTDOWN");
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");
    let end = tokio::time::timeout(STEP, events.recv())
        .await
        .expect("stream end");
    assert_eq!(end, None, "connection should close after quit");
    let err = qmp.query_status().await.expect_err("closed");
    assert!(err.is_disconnected(), "{err:?}");

    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("qemu exit")
        .expect("wait");
    assert!(status.success(), "qemu exit status {status}");
    drop(dir);
}
