//! Golden tests: the command line for each upstream example, after defaults, with fixed
//! paths. `UPDATE_GOLDEN=1 cargo test -p launcher` rewrites the files; review the diff.

use std::path::{Path, PathBuf};

use super::*;
use crate::disks::{DiskFormat, KernelBoot, PreparedVolume};

fn runtime(accel: Accel) -> Runtime {
    Runtime {
        forward_ports: true,
        sockets: Sockets::in_dir(Path::new("/run/vmi")),
        accel,
        tcg_tb_size_mib: 64,
        port_address: "127.0.0.1".into(),
        published: [(22, 2222)].into(),
    }
}

fn load(file: &str) -> VirtualMachineInstance {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let api::parse::Object::VirtualMachineInstance(mut vmi) =
        api::parse::parse_documents(&text).unwrap().remove(0)
    else {
        panic!("{file} is not a VMI")
    };
    vmi.metadata.namespace = Some("default".into());
    api::defaults::set_vmi_defaults(
        &mut vmi.spec,
        Some("5a9f1e3c-0000-4000-8000-000000000001"),
        &Default::default(),
    );
    vmi
}

/// Fake prepared volumes: every volume at /run/vmi/disks/<name>.
fn prepared(vmi: &VirtualMachineInstance) -> Prepared {
    let volumes = vmi
        .spec
        .volumes
        .iter()
        .map(|v| {
            let iso = v.cloud_init_no_cloud.is_some() || v.cloud_init_config_drive.is_some();
            PreparedVolume {
                name: v.name.clone(),
                path: PathBuf::from(format!(
                    "/run/vmi/disks/{}.{}",
                    v.name,
                    if iso { "iso" } else { "qcow2" }
                )),
                format: if iso {
                    DiskFormat::Raw
                } else {
                    DiskFormat::Qcow2
                },
                read_only: iso,
            }
        })
        .collect();
    let kernel_boot = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .map(|kb| KernelBoot {
            kernel: kb
                .container
                .as_ref()
                .and_then(|c| c.kernel_path.as_ref())
                .map(|p| PathBuf::from(format!("/cache/tree{p}"))),
            initrd: kb
                .container
                .as_ref()
                .and_then(|c| c.initrd_path.as_ref())
                .map(|p| PathBuf::from(format!("/cache/tree{p}"))),
            args: kb.kernel_args.clone(),
        });
    Prepared {
        volumes,
        kernel_boot,
    }
}

fn check_golden(name: &str, args: &[String]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.args"));
    let text = args.join("\n") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    pretty_assertions::assert_eq!(
        golden,
        text,
        "{} differs; UPDATE_GOLDEN=1 rewrites it",
        path.display()
    );
}

#[test]
fn upstream_examples_match_their_golden_command_lines() {
    let tcg = Accel::Tcg {
        reason: "test".into(),
    };
    for file in [
        "vmi-ephemeral.yaml",
        "vmi-nocloud.yaml",
        "vmi-sata.yaml",
        "vmi-migratable.yaml",
        "vmi-kernel-boot.yaml",
    ] {
        let vmi = load(file);
        let args = build(&vmi, &prepared(&vmi), &runtime(tcg.clone()))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        check_golden(file.trim_end_matches(".yaml"), &args);
    }
}

fn vmi_from(yaml: &str) -> VirtualMachineInstance {
    let api::parse::Object::VirtualMachineInstance(mut vmi) =
        api::parse::parse_documents(yaml).unwrap().remove(0)
    else {
        panic!()
    };
    api::defaults::set_vmi_defaults(&mut vmi.spec, None, &Default::default());
    vmi
}

#[test]
fn a_rich_spec_maps_each_field() {
    let vmi = vmi_from("
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: rich, namespace: ns}
spec:
  hostname: box
  domain:
    cpu: {sockets: 2, cores: 2, threads: 1, model: Haswell, features: [{name: pcid, policy: disable}]}
    memory: {guest: 1Gi}
    machine: {type: pc}
    firmware: {serial: 'a,b', uuid: 5a9f1e3c-0000-4000-8000-000000000002}
    features: {acpi: {enabled: false}, smm: {enabled: true}}
    devices:
      autoattachGraphicsDevice: false
      autoattachMemBalloon: false
      rng: {}
      inputs: [{name: t, type: tablet, bus: virtio}]
      watchdog: {name: w, i6300esb: {action: poweroff}}
      disks:
      - {name: root, disk: {bus: sata}, bootOrder: 1, serial: S1, cache: none, io: native}
      - {name: cd, cdrom: {bus: sata}}
      - {name: data, disk: {bus: scsi, readonly: true}}
      interfaces:
      - {name: default, masquerade: {}, model: e1000, macAddress: '02:00:00:00:00:01', ports: [{port: 22}, {port: 53, protocol: UDP}]}
  networks: [{name: default, pod: {vmNetworkCIDR: 192.168.7.0/24}}]
  volumes:
  - {name: root, containerDisk: {image: x}}
  - {name: cd, cloudInitNoCloud: {userData: hi}}
  - {name: data, emptyDisk: {capacity: 1Gi}}
");
    let args = build(&vmi, &prepared(&vmi), &runtime(Accel::Kvm)).unwrap();
    check_golden("rich", &args);
}

#[test]
fn what_cannot_run_yet_is_a_clear_error_with_its_field() {
    let cases = [
        (
            "firmware: {bootloader: {efi: {}}}",
            "spec.domain.firmware.bootloader.efi: EFI firmware is not supported yet",
        ),
        (
            "devices: {tpm: {}}",
            "spec.domain.devices.tpm: TPM is not supported yet",
        ),
        (
            "clock: {timezone: Europe/Berlin}",
            "spec.domain.clock.timezone: a guest clock in a named timezone is not supported yet",
        ),
        (
            "memory: {guest: 1Gi, hugepages: {pageSize: 2Mi}}",
            "spec.domain.memory.hugepages: hugepages is not supported yet",
        ),
    ];
    for (domain, expected) in cases {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: x}}\nspec:\n  domain:\n    memory: {{guest: 64Mi}}\n    {domain}\n"
        );
        let yaml = yaml.replacen("    memory: {guest: 64Mi}\n    memory:", "    memory:", 1);
        let vmi = vmi_from(&yaml);
        let err = build(&vmi, &prepared(&vmi), &runtime(Accel::Kvm)).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn host_model_means_max_under_tcg_and_host_under_kvm() {
    let vmi = load("vmi-ephemeral.yaml");
    let cpu = |accel| {
        let args = build(&vmi, &prepared(&vmi), &runtime(accel)).unwrap();
        let i = args.iter().position(|a| a == "-cpu").unwrap();
        args[i + 1].clone()
    };
    assert_eq!(cpu(Accel::Kvm), "host");
    assert_eq!(
        cpu(Accel::Tcg {
            reason: String::new()
        }),
        "max"
    );
}

/// Every user-written string that reaches an option value, as a placeholder.
const INJECTABLE: &str = r#"{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
 "metadata": {"name": N0, "namespace": N1},
 "spec": {"hostname": N2,
  "domain": {"memory": {"guest": "64Mi"},
   "machine": {"type": N18},
   "cpu": {"model": N19, "features": [{"name": N20, "policy": "require"}]},
   "firmware": {"serial": N3},
   "chassis": {"manufacturer": N4, "version": N5, "serial": N6, "asset": N7, "sku": N8},
   "devices": {
    "inputs": [{"name": N9, "type": "tablet", "bus": "usb"}],
    "watchdog": {"name": N10, "i6300esb": {"action": "reset"}},
    "sound": {"name": N11, "model": "ich9"},
    "disks": [{"name": N12, "disk": {"bus": "virtio"}, "serial": N13},
              {"name": N14, "disk": {"bus": "sata"}},
              {"name": N15, "disk": {"bus": "scsi"}},
              {"name": N16, "disk": {"bus": "usb"}}],
    "interfaces": [{"name": N17, "masquerade": {}, "ports": [{"port": 22}]}]}},
  "networks": [{"name": N17, "pod": {}}],
  "volumes": [{"name": N12, "containerDisk": {"image": "x"}},
              {"name": N14, "emptyDisk": {"capacity": "1Gi"}},
              {"name": N15, "emptyDisk": {"capacity": "1Gi"}},
              {"name": N16, "emptyDisk": {"capacity": "1Gi"}}]}}"#;

/// The command line for `INJECTABLE` with `values` in its placeholders; `None` when the
/// builder refuses it.
fn injected(values: &[String]) -> Option<Vec<String>> {
    let mut json = INJECTABLE.to_owned();
    // Highest first, so N1 does not match the start of N17.
    for (i, v) in values.iter().enumerate().rev() {
        json = json.replace(&format!("N{i}"), &serde_json::to_string(v).unwrap());
    }
    let api::parse::Object::VirtualMachineInstance(mut vmi) =
        api::parse::parse_documents(&json).ok()?.remove(0)
    else {
        return None;
    };
    api::defaults::set_vmi_defaults(&mut vmi.spec, None, &Default::default());
    build(&vmi, &prepared(&vmi), &runtime(Accel::Kvm)).ok()
}

/// What QEMU's parser makes of a command line, without the values: each flag, and for
/// each value its keys (`a=1,,b,c=2` has keys `a` and `c`; JSON values their structure).
fn shape(args: &[String]) -> Vec<Vec<String>> {
    fn json_keys(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    json_keys(v, &format!("{at}.{k}"), out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| json_keys(v, at, out)),
            _ => out.push(at.to_owned()),
        }
    }
    args.iter()
        .map(|arg| {
            if arg.starts_with('-') && !arg.contains([',', '=']) {
                return vec![arg.clone()];
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(arg)
                && v.is_object()
            {
                let mut keys = Vec::new();
                json_keys(&v, "", &mut keys);
                return keys;
            }
            // QEMU's option syntax: `,,` is a comma inside a value, `,` ends a part.
            let mut parts = vec![String::new()];
            let mut chars = arg.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, chars.peek()) {
                    (',', Some(',')) => {
                        chars.next();
                        parts.last_mut().unwrap().push(',');
                    }
                    (',', _) => parts.push(String::new()),
                    _ => parts.last_mut().unwrap().push(c),
                }
            }
            parts
                .iter()
                .map(|p| p.split_once('=').map_or("<value>", |(k, _)| k).to_owned())
                .collect()
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// No value in a spec can add an option, a device or a flag to QEMU's command line:
    /// whatever the strings, the command line has the shape it has with plain names.
    #[test]
    fn no_spec_value_adds_an_option_or_a_device(
        values in proptest::collection::vec("[a-z,=.:/ -]{1,12}", 18),
        machine in "[0-9a-z,=./ -]{0,12}",
        cpu in proptest::collection::vec("[a-z0-9,=.:/+ -]{0,12}", 2),
    ) {
        let mut plain: Vec<String> = (0..18).map(|i| format!("n{i}")).collect();
        plain.extend(["q35", "Haswell", "pcid"].map(String::from));
        let want = shape(&injected(&plain).expect("plain names build"));
        // Names must stay distinct where the spec pairs them up.
        let mut names: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v}{i}"))
            .collect();
        names.extend(plain[18..].iter().cloned());
        if let Some(args) = injected(&names) {
            proptest::prop_assert_eq!(shape(&args), want.clone());
        }
        // Machine and CPU values behind a name QEMU knows (`-machine` and `-cpu` take
        // options after the first word, and `-cpu` has no escape).
        let mut typed = plain[..18].to_vec();
        typed.extend([
            format!("pc-q35-{machine}"),
            format!("Haswell{}", cpu[0]),
            format!("pcid{}", cpu[1]),
        ]);
        if let Some(args) = injected(&typed) {
            proptest::prop_assert_eq!(shape(&args), want);
        }
    }
}
