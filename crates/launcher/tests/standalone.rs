//! `virt-launcher run --vmi` with real QEMU under TCG and the tiny guest from the loopback
//! registry, as a user runs it.

mod common;

use std::time::Duration;

use common::{Launcher, READY, example, manifest};
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
      - {name: cloudinitdisk, cdrom: {bus: sata}}
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
