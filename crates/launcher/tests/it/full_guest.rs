//! The full Debian guest (`make guest-full`): real cloud-init runs the user data, and
//! qemu-guest-agent answers on the launcher's agent socket. Slow under TCG (minutes).

use crate::common;

use std::time::Duration;

use launcher::standalone::{launch, load_vmi};

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
    let agent = launcher::agent::Agent::new(&launched.sockets.guest_agent);
    while !agent.ping(Duration::from_secs(5)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the guest agent never answered guest-ping"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // What `virtctl guestosinfo` shows, in upstream's field names.
    let info = agent.os_info(Duration::from_secs(10)).await.unwrap();
    assert_eq!(info["id"], "debian", "{info}");
    assert!(
        info["kernelRelease"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{info}"
    );
    let exit = launched.domain.shutdown(Duration::from_secs(60)).await;
    assert_eq!(
        exit,
        launcher::domain::Exit::Stopped { forced: false },
        "systemd powers off on ACPI"
    );
}
