//! The launcher's domain lifecycle through its library API, with real QEMU under TCG:
//! paused start, pause and unpause, reset, shutdown, and the overlay's life.

use crate::common;

use std::time::Duration;

use launcher::domain::{DomainState, Exit};
use launcher::standalone::{launch, load_vmi};

async fn wait_for_log(log: &std::path::Path, needle: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{needle:?} not in {} within {timeout:?}: {}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

async fn wait_state(
    d: &launcher::domain::Domain,
    want: impl Fn(&DomainState) -> bool,
) -> DomainState {
    let mut rx = d.state();
    let s = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| want(s)))
        .await
        .expect("state change")
        .unwrap();
    s.clone()
}

#[tokio::test]
async fn paused_start_pause_unpause_reset_and_shutdown() {
    common::require_registry();
    let run = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = common::manifest(
        dir.path(),
        "vmi.yaml",
        &std::fs::read_to_string(common::example("vmi-ephemeral.yaml"))
            .unwrap()
            .replace(
                "terminationGracePeriodSeconds: 0",
                "terminationGracePeriodSeconds: 30\n  startStrategy: Paused",
            ),
    );
    let vmi = load_vmi(&file).unwrap();
    let launched = launch(&vmi, &common::launch_config(run.path()))
        .await
        .unwrap();
    let d = &launched.domain;
    let log = launched.sockets.serial_log.clone();

    // Paused start: vCPUs stopped, the guest prints nothing.
    let status = d.qmp().query_status().await.unwrap();
    assert!(!status.running, "{status:?}");
    assert_eq!(*d.state().borrow(), DomainState::Created);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "a paused guest printed output"
    );

    d.unpause().await.unwrap();
    wait_state(d, |s| *s == DomainState::Running).await;
    wait_for_log(&log, common::READY, Duration::from_secs(90)).await;

    // VNC on its unix socket speaks RFB 3.8.
    let mut vnc = tokio::net::UnixStream::connect(&launched.sockets.vnc)
        .await
        .unwrap();
    let mut greeting = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut vnc, &mut greeting)
        .await
        .unwrap();
    assert_eq!(&greeting, b"RFB 003.008\n");
    drop(vnc);

    d.pause().await.unwrap();
    assert_eq!(
        wait_state(d, |s| matches!(s, DomainState::Paused { .. })).await,
        DomainState::Paused {
            reason: "user".into()
        }
    );
    assert!(!d.qmp().query_status().await.unwrap().running);
    d.unpause().await.unwrap();
    wait_state(d, |s| *s == DomainState::Running).await;

    // Reset reboots the guest: it prints its ready marker a second time.
    d.reset().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while std::fs::read_to_string(&log)
        .unwrap()
        .matches(common::READY)
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second boot after reset"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let overlay = launched.dir.path().join("disks/containerdisk.qcow2");
    assert!(
        overlay.is_file(),
        "the per-VMI overlay exists while running"
    );
    let exit = d.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        exit,
        Exit::Stopped { forced: false },
        "the guest honours the ACPI power button"
    );
    let run_dir = launched.dir.path().to_path_buf();
    drop(launched);
    assert!(
        !run_dir.exists(),
        "the runtime directory with the overlay is gone"
    );
}

#[tokio::test]
async fn dropping_a_launch_kills_qemu() {
    common::require_registry();
    let run = tempfile::tempdir().unwrap();
    let vmi = load_vmi(&common::example("vmi-ephemeral.yaml")).unwrap();
    let launched = launch(&vmi, &common::launch_config(run.path()))
        .await
        .unwrap();
    let pid = launched.domain.pid().unwrap() as i32;
    drop(launched);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "qemu {pid} outlived its launch");
}
