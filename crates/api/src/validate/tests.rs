use super::*;
use crate::parse::parse_documents;

fn causes(yaml: &str) -> Vec<(String, CauseReason)> {
    let object = parse_documents(yaml).unwrap().remove(0);
    validate(&object)
        .into_iter()
        .map(|c| (c.field, c.reason))
        .collect()
}

const BAD_VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: Bad_Name}
spec:
  domain:
    devices:
      disks:
      - {name: root, disk: {bus: ide}}
      - {name: root}
      - {name: orphan, bootOrder: 0}
      interfaces:
      - {name: default, masquerade: {}, bridge: {}, ports: [{port: 70000}]}
    cpu: {cores: 0}
  volumes:
  - {name: root}
  - name: two
    containerDisk: {image: x}
    emptyDisk: {capacity: 1Gi}
  - name: ci
    cloudInitNoCloud: {userDataBase64: '!!!'}
  networks:
  - {name: default, pod: {}}
";

#[test]
fn every_problem_is_reported_with_its_path() {
    use CauseReason::*;
    let got = causes(BAD_VMI);
    let expected = [
        ("metadata.name", FieldValueInvalid),
        ("spec.domain.memory.guest", FieldValueRequired),
        ("spec.domain.cpu.cores", FieldValueInvalid),
        ("spec.domain.devices.disks[1].name", FieldValueDuplicate),
        (
            "spec.domain.devices.disks[0].disk.bus",
            FieldValueNotSupported,
        ),
        ("spec.domain.devices.disks[2].name", FieldValueInvalid),
        ("spec.domain.devices.disks[2].bootOrder", FieldValueInvalid),
        ("spec.volumes[0].containerDisk", FieldValueRequired),
        ("spec.volumes[1]", FieldValueInvalid),
        (
            "spec.volumes[2].cloudInitNoCloud.userDataBase64",
            FieldValueInvalid,
        ),
        ("spec.domain.devices.interfaces[0]", FieldValueInvalid),
        (
            "spec.domain.devices.interfaces[0].ports[0].port",
            FieldValueInvalid,
        ),
    ];
    for (field, reason) in expected {
        assert!(
            got.contains(&(field.to_string(), reason)),
            "missing {field} {reason:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "{got:#?}");
}

#[test]
fn vm_rules() {
    let got = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  running: true
  runStrategy: Always
  instancetype: {kind: Flavor, name: x}
  template:
    spec:
      domain: {devices: {}}
",
    );
    assert_eq!(
        got,
        vec![
            ("spec.running".to_string(), CauseReason::FieldValueForbidden),
            (
                "spec.instancetype.kind".to_string(),
                CauseReason::FieldValueNotSupported
            ),
        ],
        "memory is not required in a VM template"
    );
}

#[test]
fn replicaset_selector_must_match_its_template() {
    let got = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceReplicaSet
metadata: {name: rs}
spec:
  replicas: -1
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {domain: {devices: {}, memory: {guest: 64Mi}}}
",
    );
    assert_eq!(
        got,
        vec![
            ("spec.replicas".to_string(), CauseReason::FieldValueInvalid),
            (
                "spec.template.metadata.labels".to_string(),
                CauseReason::FieldValueInvalid
            ),
        ]
    );
}

#[test]
fn hardware_we_cannot_run_is_refused_by_name() {
    let got = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: gpu}
spec:
  domain:
    memory: {guest: 1Gi}
    devices:
      gpus: [{name: g, deviceName: nvidia.com/X}]
",
    );
    assert_eq!(
        got,
        vec![(
            "spec.domain.devices.gpus".to_string(),
            CauseReason::FieldValueForbidden
        )]
    );
}

#[test]
fn names_follow_dns_1123() {
    assert!(dns1123_subdomain("vm-cirros.a1").is_ok());
    for bad in ["", "-a", "A", "a_b", &"a".repeat(64)] {
        assert!(dns1123_subdomain(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn probes_need_one_action_a_real_port_and_sane_counts() {
    use CauseReason::*;
    let got = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: probed}
spec:
  domain:
    devices:
      interfaces: [{name: default, masquerade: {}, ports: [{name: http, port: 80}]}]
    memory: {guest: 64Mi}
  networks: [{name: default, pod: {}}]
  livenessProbe:
    tcpSocket: {port: 0}
    guestAgentPing: {}
    successThreshold: 2
    periodSeconds: -1
  readinessProbe:
    httpGet: {port: https, scheme: FTP, httpHeaders: [{name: 'X Bad', value: v}]}
",
    );
    let expected = [
        ("spec.livenessProbe", FieldValueForbidden),
        ("spec.livenessProbe.tcpSocket.port", FieldValueInvalid),
        ("spec.livenessProbe.periodSeconds", FieldValueInvalid),
        ("spec.livenessProbe.successThreshold", FieldValueInvalid),
        ("spec.readinessProbe.httpGet.port", FieldValueInvalid),
        ("spec.readinessProbe.httpGet.scheme", FieldValueNotSupported),
        (
            "spec.readinessProbe.httpGet.httpHeaders[0].name",
            FieldValueInvalid,
        ),
    ];
    for (field, reason) in expected {
        assert!(
            got.contains(&(field.to_string(), reason)),
            "missing {field} {reason:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    let ok = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: probed}
spec:
  domain:
    devices:
      interfaces: [{name: default, masquerade: {}, ports: [{name: http, port: 80}]}]
    memory: {guest: 64Mi}
  networks: [{name: default, pod: {}}]
  livenessProbe: {tcpSocket: {port: 22}, initialDelaySeconds: 30}
  readinessProbe: {httpGet: {port: http, path: /healthz}}
",
    );
    assert!(ok.is_empty(), "{ok:#?}");
    let none = causes(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: probed}
spec:
  domain: {memory: {guest: 64Mi}}
  readinessProbe: {periodSeconds: 5}
",
    );
    assert_eq!(
        none,
        [("spec.readinessProbe".to_string(), FieldValueRequired)]
    );
}

#[test]
fn image_paths_must_be_clean_absolute_paths() {
    let vmi = |path: &str, kernel: &str| {
        format!(
            "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: v}}
spec:
  domain:
    memory: {{guest: 64Mi}}
    devices: {{disks: [{{name: root}}]}}
    firmware:
      kernelBoot:
        container: {{image: k, kernelPath: '{kernel}'}}
  volumes:
  - name: root
    containerDisk: {{image: x, path: '{path}'}}
"
        )
    };
    assert_eq!(causes(&vmi("/disk/a.img", "/boot/vmlinuz")), []);
    for bad in [
        "/../../../../etc/shadow",
        "/disk/../../etc/shadow",
        "disk/a.img",
        "/",
        "/disk/./a.img",
        "/disk//a.img",
        "/disk/",
        "",
    ] {
        assert_eq!(
            causes(&vmi(bad, bad)),
            [
                (
                    "spec.volumes[0].containerDisk.path".to_owned(),
                    CauseReason::FieldValueInvalid
                ),
                (
                    "spec.domain.firmware.kernelBoot.container.kernelPath".to_owned(),
                    CauseReason::FieldValueInvalid
                ),
            ],
            "{bad}"
        );
    }
}

#[test]
fn vcpu_products_are_bounded_without_overflow() {
    let vmi = |cpu: &str| {
        format!(
            "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: v}}
spec:
  domain: {{memory: {{guest: 64Mi}}, devices: {{}}, cpu: {cpu}}}
"
        )
    };
    assert_eq!(causes(&vmi("{sockets: 2, cores: 16, threads: 16}")), []);
    let max = u32::MAX;
    assert_eq!(
        causes(&vmi(&format!(
            "{{sockets: {max}, cores: {max}, threads: {max}, maxSockets: {max}}}"
        ))),
        [
            (
                "spec.domain.cpu.sockets".to_owned(),
                CauseReason::FieldValueInvalid
            ),
            (
                "spec.domain.cpu.maxSockets".to_owned(),
                CauseReason::FieldValueInvalid
            ),
        ]
    );
}
