//! `virt-launcher run --vmi` with real QEMU under TCG and the tiny guest from the loopback
//! registry, as a user runs it.

use std::time::Duration;

use crate::common::{Launcher, READY, example, manifest};
use nix::sys::signal::Signal;

const BOOT: Duration = Duration::from_secs(90);

#[test]
fn upstream_ephemeral_vmi_boots_from_a_pulled_container_disk_and_stops_on_sigterm() {
    let mut l = Launcher::start(&example("vmi-ephemeral.yaml"));
    l.wait_for_output(READY, BOOT);
    assert!(
        l.stdout().contains("DHCP-LEASE 10.0.2.2"),
        "masquerade lease: {}",
        l.stdout()
    );
    l.signal(Signal::SIGTERM);
    // terminationGracePeriodSeconds: 0 means no ACPI wait: QEMU is ended at once.
    assert_eq!(l.wait_exit(Duration::from_secs(15)), 0, "{}", l.stderr());
    assert!(
        l.stderr().contains("Stopped { forced: true }"),
        "{}",
        l.stderr()
    );
    l.assert_nothing_left();
}

#[test]
fn nocloud_user_data_runs_and_acpi_shutdown_ends_the_guest_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example("vmi-nocloud.yaml")).unwrap();
    let text = text.replace(
        "terminationGracePeriodSeconds: 0",
        "terminationGracePeriodSeconds: 60",
    );
    let mut l = Launcher::start(&manifest(dir.path(), "vmi.yaml", &text));
    l.wait_for_output("printed from cloud-init userdata", BOOT);
    l.wait_for_output(READY, BOOT);
    let asked = std::time::Instant::now();
    l.signal(Signal::SIGINT);
    assert_eq!(l.wait_exit(Duration::from_secs(60)), 0, "{}", l.stderr());
    assert!(
        l.stderr().contains("Stopped { forced: false }"),
        "the guest powered off on ACPI: {}",
        l.stderr()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "ACPI shutdown took {:?}",
        asked.elapsed()
    );
    l.assert_nothing_left();
}

#[test]
fn a_guest_that_powers_itself_off_ends_the_launcher_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let vmi = manifest(dir.path(), "vmi.yaml", "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: selfstop}
spec:
  domain:
    devices:
      disks:
      - {name: containerdisk, disk: {bus: virtio}}
      - {name: cloudinitdisk, disk: {bus: sata}}
    memory: {guest: 128Mi}
  volumes:
  - {name: containerdisk, containerDisk: {image: 'registry:5000/kubevirt/cirros-container-disk-demo:devel'}}
  - name: cloudinitdisk
    cloudInitConfigDrive:
      userData: |
        #!/bin/sh
        echo config-drive-ran
        poweroff -f
");
    let mut l = Launcher::start(&vmi);
    assert_eq!(l.wait_exit(BOOT), 0, "{}", l.stderr());
    assert!(l.stdout().contains("config-drive-ran"), "{}", l.stdout());
    assert!(l.stderr().contains("GuestShutdown"), "{}", l.stderr());
    l.assert_nothing_left();
}

#[test]
fn upstream_sata_and_kernel_boot_examples_boot() {
    for file in ["vmi-sata.yaml", "vmi-kernel-boot.yaml"] {
        let mut l = Launcher::start(&example(file));
        l.wait_for_output(READY, BOOT);
        l.signal(Signal::SIGTERM);
        assert_eq!(
            l.wait_exit(Duration::from_secs(15)),
            0,
            "{file}: {}",
            l.stderr()
        );
        l.assert_nothing_left();
    }
}

#[test]
fn bad_specs_and_missing_images_are_one_clear_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec: {domain: {devices: {disks: [{name: a, disk: {bux: virtio}}]}}}\n",
            "spec.domain.devices.disks[0].disk.bux: unknown field",
        ),
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec: {domain: {devices: {}}}\n",
            "spec.domain.memory.guest: required value",
        ),
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec:\n  domain: {devices: {}, memory: {guest: 64Mi}}\n  volumes: [{name: d, containerDisk: {image: 'registry:5000/kubevirt/no-such-image:devel'}}]\n",
            "pull registry:5000/kubevirt/no-such-image:devel: ",
        ),
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\nspec:\n  domain: {devices: {tpm: {}}, memory: {guest: 64Mi}}\n",
            "spec.domain.devices.tpm: TPM is not supported yet",
        ),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let mut l = Launcher::start(&manifest(dir.path(), &format!("bad{i}.yaml"), yaml));
        assert_eq!(l.wait_exit(Duration::from_secs(30)), 1);
        let lines: Vec<_> = l
            .stderr()
            .lines()
            .filter(|l| l.starts_with("virt-launcher: "))
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), 1, "one error line: {}", l.stderr());
        assert!(
            lines[0].contains(expected),
            "{:?} should contain {expected:?}",
            lines[0]
        );
        l.assert_nothing_left();
    }
}

#[test]
fn masquerade_gives_the_guest_outbound_access_and_forwards_its_ports() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = server.accept() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nfrom-host\n");
        }
    });
    let published = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let vmi = manifest(dir.path(), "vmi.yaml", &format!("
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: net}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks: [{{name: containerdisk, disk: {{bus: virtio}}}}, {{name: cloudinitdisk, disk: {{bus: virtio}}}}]
      interfaces: [{{name: default, masquerade: {{}}, ports: [{{port: 8080}}]}}]
    memory: {{guest: 128Mi}}
  networks: [{{name: default, pod: {{}}}}]
  volumes:
  - {{name: containerdisk, containerDisk: {{image: 'registry:5000/kubevirt/cirros-container-disk-demo:devel'}}}}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        wget -q -O- http://10.0.2.1:{host_port}/ | sed 's/^/outbound: /'
        (echo from-guest | nc -l -p 8080) &
        echo listening-on-8080
"));
    let mut l = Launcher::start_with(&vmi, &["--publish", &format!("8080:{published}")]);
    l.wait_for_output("outbound: from-host", BOOT);
    l.wait_for_output("listening-on-8080", BOOT);
    let mut got = String::new();
    for _ in 0..50 {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", published)) {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = conn.read_to_string(&mut got);
            if got.contains("from-guest") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        got.contains("from-guest"),
        "forwarded port answered {got:?}"
    );
    l.signal(Signal::SIGTERM);
    assert_eq!(l.wait_exit(Duration::from_secs(15)), 0);
    l.assert_nothing_left();
}
