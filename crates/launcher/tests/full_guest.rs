//! The full Debian guest (`make guest-full`): real cloud-init runs the user data, and
//! qemu-guest-agent answers on the launcher's agent socket. Slow under TCG (minutes).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use launcher::standalone::{launch, load_vmi};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: full}
spec:
  terminationGracePeriodSeconds: 60
  domain:
    devices:
      disks: [{name: containerdisk, disk: {bus: virtio}}, {name: cloudinitdisk, disk: {bus: virtio}}]
      interfaces: [{name: default, masquerade: {}}]
    memory: {guest: 1Gi}
  networks: [{name: default, pod: {}}]
  volumes:
  - {name: containerdisk, containerDisk: {image: 'registry:5000/kubevirt/fedora-with-test-tooling-container-disk:devel'}}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #cloud-config
        runcmd:
          - echo full-guest-user-data-ran > /dev/ttyS0
";

/// Sends one agent command and returns the first reply line that is not a sync echo.
async fn agent(socket: &std::path::Path, command: &str) -> Option<serde_json::Value> {
    let stream = UnixStream::connect(socket).await.ok()?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let id = std::process::id() as u64 * 1000 + rand_id();
    // guest-sync flushes whatever an earlier client left in the channel.
    write
        .write_all(
            format!("{{\"execute\":\"guest-sync\",\"arguments\":{{\"id\":{id}}}}}\n").as_bytes(),
        )
        .await
        .ok()?;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .ok()?
            .ok()??;
        if serde_json::from_str::<serde_json::Value>(&line).ok()?["return"] == id {
            break;
        }
    }
    write
        .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .await
        .ok()?;
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .ok()?
        .ok()??;
    serde_json::from_str(&line).ok()
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 1000
}

#[tokio::test]
async fn cloud_init_runs_and_the_guest_agent_answers() {
    common::require_registry();
    let dir = tempfile::tempdir().unwrap();
    let vmi = load_vmi(&common::manifest(dir.path(), "full.yaml", VMI)).unwrap();
    let cfg = common::launch_config(&dir.path().join("run"));
    let launched = launch(&vmi, &cfg).await.unwrap();
    launched.domain.start_vcpus().await.unwrap();
    let log = launched.sockets.serial_log.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(420);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("full-guest-user-data-ran")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no user-data marker:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut reply = None;
    while tokio::time::Instant::now() < deadline {
        reply = agent(&launched.sockets.guest_agent, "guest-ping").await;
        if reply.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(
        reply,
        Some(serde_json::json!({"return": {}})),
        "guest-ping over the agent channel"
    );
    let exit = launched.domain.shutdown(Duration::from_secs(60)).await;
    assert_eq!(
        exit,
        launcher::domain::Exit::Stopped { forced: false },
        "systemd powers off on ACPI"
    );
}
