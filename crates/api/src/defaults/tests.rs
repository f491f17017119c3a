use super::*;
use crate::parse::{Object, parse_documents};

fn defaulted(yaml: &str) -> VirtualMachineInstanceSpec {
    let Object::VirtualMachineInstance(mut vmi) = parse_documents(yaml).unwrap().remove(0) else {
        panic!()
    };
    set_vmi_defaults(
        &mut vmi.spec,
        Some("0f0e0d0c-0b0a-0908-0706-050403020100"),
        &DefaultsConfig::default(),
    );
    vmi.spec
}

#[test]
fn a_volume_without_a_disk_gets_a_sata_disk_and_the_pod_network() {
    let spec = defaulted(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/upstream-examples/vmi-sata.yaml"),
        )
        .unwrap(),
    );
    let disk = &spec.domain.devices.disks[0];
    assert_eq!(disk.name, "containerdisk");
    assert_eq!(disk.disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
    assert_eq!(spec.networks[0].name, "default");
    assert!(spec.networks[0].pod.is_some());
    assert!(spec.domain.devices.interfaces[0].masquerade.is_some());
    assert_eq!(
        spec.domain.machine.unwrap().machine_type.as_deref(),
        Some("q35")
    );
    let cpu = spec.domain.cpu.unwrap();
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads, cpu.model.as_deref()),
        (Some(1), Some(1), Some(1), Some("host-model"))
    );
    assert_eq!(
        spec.domain.features.unwrap().acpi.unwrap().enabled,
        Some(true)
    );
    assert_eq!(
        spec.domain.firmware.unwrap().uuid.as_deref(),
        Some("0f0e0d0c-0b0a-0908-0706-050403020100")
    );
}

#[test]
fn guest_memory_and_sockets_come_from_resources() {
    let spec = defaulted(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: a}
spec:
  domain:
    devices:
      autoattachPodInterface: false
      disks: [{name: cd, cdrom: {}}]
    resources: {requests: {memory: 64M}, limits: {cpu: 1500m}}
  volumes: [{name: cd, containerDisk: {image: x}}]
",
    );
    assert_eq!(spec.domain.memory.unwrap().guest.unwrap().0, "64M");
    assert_eq!(spec.domain.cpu.unwrap().sockets, Some(2));
    assert_eq!(spec.domain.resources.unwrap().requests["cpu"].0, "1500m");
    let cd = spec.domain.devices.disks[0].cdrom.clone().unwrap();
    assert_eq!(
        (cd.bus.as_deref(), cd.readonly, cd.tray.as_deref()),
        (Some("sata"), Some(true), Some("closed"))
    );
    assert!(
        spec.networks.is_empty(),
        "autoattachPodInterface: false means no pod network"
    );
}

#[test]
fn an_explicit_topology_is_kept() {
    let spec = defaulted(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: a}
spec:
  domain: {devices: {}, cpu: {cores: 2}, memory: {guest: 1Gi}}
",
    );
    let cpu = spec.domain.cpu.unwrap();
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (None, Some(2), None));
}
