//! The launcher pod of a VMI, and the memory it reserves beyond the guest.
//!
//! The pod follows upstream's shape (`virt-launcher-<vmi>-` names, the `kubevirt.io`
//! labels, the `compute` container, an owner reference to the VMI, the grace period plus
//! 15 s), but its memory request is the guest plus *our* overhead, measured rather than
//! upstream's 240 MiB of fixed terms (see docs/benchmarks.md):
//!
//! | term | MiB |
//! |---|---|
//! | virt-launcher | 10 (measured 8.1 RSS) |
//! | QEMU beyond guest RAM | 48 (measured 42.5 paused, 46.8 running without the TCG cache) |
//! | TCG translation cache, under software emulation | 64 (`tb-size`) |
//! | page tables | guest / 512 |
//! | per vCPU | 2 |
//! | video RAM, with a graphics device | 16 |

use std::collections::BTreeMap;

use api::v1::VirtualMachineInstance;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    ImageVolumeSource, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const MIB: u64 = 1024 * 1024;

/// The launcher's user and group in its pod: upstream's qemu (107).
pub const LAUNCHER_USER: i64 = 107;
/// Where the launcher keeps its sockets, overlays and ISOs: the pod's `private` emptyDir,
/// which virt-handler reaches on the node by the pod's uid.
pub const PRIVATE_DIR: &str = "/var/run/kubevirt-private";
/// The pod's `emptyDir` for [`PRIVATE_DIR`].
pub const PRIVATE_VOLUME: &str = "private";
/// Where the pod mounts the VMI's images (containerDisks and the kernel-boot image) as
/// image volumes: `volumes/<volume>/` and `kernel-boot/`.
pub const IMAGES_DIR: &str = "/var/run/kubevirt/images";
/// The resource upstream's device plugin hands `/dev/kvm` out by.
pub const KVM_RESOURCE: &str = "devices.kubevirt.io/kvm";
/// The resource embedded mode's pod runner hands `/dev/userfaultfd` out by (not
/// upstream's: its post-copy relies on the node's `vm.unprivileged_userfaultfd`).
pub const USERFAULTFD_RESOURCE: &str = "devices.kubevirt.io/userfaultfd";

/// Where the launcher runs: its image and what the nodes offer it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LauncherConfig {
    pub image: String,
    /// Whether the nodes emulate the CPU (no `/dev/kvm` is asked for, the TCG cache is
    /// reserved).
    pub software_emulation: bool,
    /// The node directories `hostDisk` volumes may be in, each namespace in its own
    /// subdirectory: a VMI's launcher pod mounts its namespace's (as a `hostPath`).
    pub host_disk_dirs: Vec<String>,
    /// Whether the nodes hand out `/dev/userfaultfd` ([`USERFAULTFD_RESOURCE`]): every
    /// launcher asks for it then, as both ends of a post-copy migration need it.
    pub userfaultfd: bool,
}

/// The guest's memory in bytes (0 when the VMI names none; validation refuses that).
pub fn guest_memory(vmi: &VirtualMachineInstance) -> u64 {
    vmi.spec.guest_memory().unwrap_or(0)
}

/// vCPUs: sockets × cores × threads, at least 1.
pub fn vcpus(vmi: &VirtualMachineInstance) -> u64 {
    let cpu = vmi.spec.domain.cpu.as_ref();
    let n = |v: Option<u32>| u64::from(v.unwrap_or(1).max(1));
    // Validation keeps it at most 512; saturating all the same, so no spec can overflow.
    n(cpu.and_then(|c| c.sockets))
        .saturating_mul(n(cpu.and_then(|c| c.cores)))
        .saturating_mul(n(cpu.and_then(|c| c.threads)))
}

/// The memory a VMI's launcher pod needs beyond the guest, in bytes.
pub fn memory_overhead(vmi: &VirtualMachineInstance, software_emulation: bool) -> u64 {
    let graphics = vmi.spec.domain.devices.autoattach_graphics_device != Some(false);
    let mut mib = 58u64.saturating_add(vcpus(vmi).saturating_mul(2));
    if software_emulation {
        mib = mib.saturating_add(64);
    }
    if graphics {
        mib = mib.saturating_add(16);
    }
    mib.saturating_mul(MIB)
        .saturating_add(guest_memory(vmi) / 512)
}

fn quantity(bytes: u64) -> Quantity {
    api::quantity::format_bytes(bytes)
}

/// The launcher pod for `vmi`.
pub fn launcher_pod(vmi: &VirtualMachineInstance, config: &LauncherConfig) -> Pod {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let overhead = memory_overhead(vmi, config.software_emulation);
    let mut labels = vmi.metadata.labels.clone().unwrap_or_default();
    labels.insert("kubevirt.io".into(), "virt-launcher".into());
    labels.insert("kubevirt.io/created-by".into(), uid.clone());
    labels.insert("vm.kubevirt.io/name".into(), name.clone());
    let annotations = BTreeMap::from([
        (
            "kubectl.kubernetes.io/default-container".to_owned(),
            "compute".to_owned(),
        ),
        ("kubevirt.io/domain".to_owned(), name.clone()),
        (
            "kubevirt.io/memory-overhead-bytes".to_owned(),
            overhead.to_string(),
        ),
    ]);
    let mut requests = BTreeMap::from([
        (
            "memory".to_owned(),
            quantity(guest_memory(vmi).saturating_add(overhead)),
        ),
        (
            "cpu".to_owned(),
            Quantity(format!("{}m", vcpus(vmi).saturating_mul(100))),
        ),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(resources) = &vmi.spec.domain.resources {
        if let Some(limit) = resources
            .limits
            .get("memory")
            .and_then(|q| api::quantity::to_units(q).ok())
        {
            limits.insert(
                "memory".to_owned(),
                quantity(limit.saturating_add(overhead)),
            );
        }
        if let Some(cpu) = resources.requests.get("cpu") {
            requests.insert("cpu".to_owned(), cpu.clone());
        }
        if let Some(cpu) = resources.limits.get("cpu") {
            limits.insert("cpu".to_owned(), cpu.clone());
        }
    }
    let devices = [
        (KVM_RESOURCE, !config.software_emulation),
        (USERFAULTFD_RESOURCE, config.userfaultfd),
    ];
    for (resource, wanted) in devices {
        if wanted {
            requests.insert(resource.to_owned(), Quantity("1".into()));
            limits.insert(resource.to_owned(), Quantity("1".into()));
        }
    }
    let (volumes, mounts, host_disk_dirs) = launcher_volumes(vmi, config);
    let env_value = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut node_selector = vmi.spec.node_selector.clone();
    node_selector.insert("kubevirt.io/schedulable".into(), "true".into());
    let grace = vmi
        .spec
        .termination_grace_period_seconds
        .unwrap_or(30)
        .saturating_add(15);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace: vmi.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![crate::controller_ref(
                "VirtualMachineInstance",
                &vmi.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "compute".into(),
                image: Some(config.image.clone()),
                command: Some(vec!["virt-launcher".into()]),
                args: Some(vec![
                    "serve".into(),
                    "--name".into(),
                    name,
                    "--namespace".into(),
                    vmi.metadata.namespace.clone().unwrap_or_default(),
                    "--uid".into(),
                    uid,
                    "--grace-period-seconds".into(),
                    grace.to_string(),
                ]),
                env: Some(vec![
                    // Where a migration target listens (the pod's address).
                    EnvVar {
                        name: "POD_IP".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "status.podIP".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..EnvVarSource::default()
                        }),
                        ..EnvVar::default()
                    },
                    env_value("KUBEVIRT_RS_RUN_DIR", PRIVATE_DIR),
                    env_value("KUBEVIRT_RS_IMAGE_VOLUMES", IMAGES_DIR),
                    env_value("KUBEVIRT_RS_HOST_DISK_DIRS", &host_disk_dirs.join(":")),
                ]),
                volume_mounts: Some(mounts),
                // QEMU needs no capability: user-mode networking, /dev/kvm by its device.
                // It writes only to its volumes: the image stays read-only (and shared).
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: Some(vec!["NET_BIND_SERVICE".into()]),
                    }),
                    ..SecurityContext::default()
                }),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: (!limits.is_empty()).then_some(limits),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            node_selector: Some(node_selector),
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(LAUNCHER_USER),
                run_as_group: Some(LAUNCHER_USER),
                run_as_non_root: Some(true),
                fs_group: Some(LAUNCHER_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            hostname: vmi.spec.hostname.clone(),
            subdomain: vmi.spec.subdomain.clone(),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(grace),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The launcher pod's volumes and the compute container's mounts: the `private` emptyDir,
/// an image volume per containerDisk and for the kernel-boot image, and the namespace's
/// host-disk directories its `hostDisk` volumes are in (also returned alone).
fn launcher_volumes(
    vmi: &VirtualMachineInstance,
    config: &LauncherConfig,
) -> (Vec<Volume>, Vec<VolumeMount>, Vec<String>) {
    let mut volumes = vec![Volume {
        name: PRIVATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: PRIVATE_VOLUME.into(),
        mount_path: PRIVATE_DIR.into(),
        ..VolumeMount::default()
    }];
    let mut image = |name: String, reference: &str, policy: Option<&String>, at: String| {
        volumes.push(Volume {
            name: name.clone(),
            image: Some(ImageVolumeSource {
                reference: Some(reference.to_owned()),
                pull_policy: policy.cloned(),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: at,
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    for (i, v) in vmi.spec.volumes.iter().enumerate() {
        if let Some(cd) = &v.container_disk {
            image(
                format!("container-disk-{i}"),
                &cd.image,
                cd.image_pull_policy.as_ref(),
                format!("{IMAGES_DIR}/volumes/{}", v.name),
            );
        }
    }
    let kernel_boot = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref());
    if let Some(c) = kernel_boot.and_then(|k| k.container.as_ref()) {
        image(
            "kernel-boot".into(),
            &c.image,
            c.image_pull_policy.as_ref(),
            format!("{IMAGES_DIR}/kernel-boot"),
        );
    }
    // A hostDisk's directory: `<allowed dir>/<namespace>`, mounted where it is on the
    // node (admission keeps every hostDisk inside one).
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let mut host_disk_dirs: Vec<String> = Vec::new();
    for v in &vmi.spec.volumes {
        let Some(h) = &v.host_disk else { continue };
        let dir = config
            .host_disk_dirs
            .iter()
            .map(|root| std::path::Path::new(root).join(&namespace))
            .find(|dir| std::path::Path::new(&h.path).starts_with(dir));
        if let Some(dir) = dir.map(|d| d.display().to_string())
            && !host_disk_dirs.contains(&dir)
        {
            host_disk_dirs.push(dir);
        }
    }
    for (k, dir) in host_disk_dirs.iter().enumerate() {
        let name = format!("host-disk-{k}");
        volumes.push(Volume {
            name: name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: dir.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: dir.clone(),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts, host_disk_dirs)
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "big"},
            "spec": {"terminationGracePeriodSeconds": i64::MAX,
                "domain": {"devices": {}, "memory": {"guest": "64Mi"},
                    "cpu": {"sockets": u32::MAX, "cores": u32::MAX, "threads": u32::MAX}}}}))
        .unwrap();
        assert_eq!(vcpus(&vmi), u64::MAX);
        assert_eq!(memory_overhead(&vmi, true), u64::MAX);
        let pod = launcher_pod(
            &vmi,
            &LauncherConfig {
                image: "i".into(),
                software_emulation: true,
                ..LauncherConfig::default()
            },
        );
        assert_eq!(
            pod.spec.unwrap().termination_grace_period_seconds,
            Some(i64::MAX)
        );
    }

    fn vmi(domain: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "cirros", "namespace": "default", "uid": "u1", "labels": {"app": "demo"}},
            "spec": {"domain": domain, "nodeSelector": {"disk": "ssd"}, "terminationGracePeriodSeconds": 0}}))
        .unwrap()
    }

    #[test]
    fn a_small_vm_reserves_a_fraction_of_upstreams_overhead() {
        let small = vmi(json!({"devices": {}, "memory": {"guest": "128Mi"}}));
        // 10 + 48 + 2 + 16 MiB and 128Mi/512: 76.25 MiB, against upstream's 288.25 MiB.
        assert_eq!(memory_overhead(&small, false), 76 * MIB + 256 * 1024);
        assert_eq!(memory_overhead(&small, true), 140 * MIB + 256 * 1024);
        let big = vmi(json!({"devices": {"autoattachGraphicsDevice": false},
            "cpu": {"sockets": 2, "cores": 2}, "resources": {"requests": {"memory": "2Gi"}}}));
        assert_eq!(vcpus(&big), 4);
        assert_eq!(memory_overhead(&big, false), (10 + 48 + 8) * MIB + 4 * MIB);
    }

    #[test]
    fn the_pod_carries_upstreams_labels_and_our_resources() {
        let config = LauncherConfig {
            image: "kubevirt-rs/virt-launcher".into(),
            software_emulation: false,
            ..LauncherConfig::default()
        };
        let pod = launcher_pod(
            &vmi(json!({"devices": {}, "memory": {"guest": "128Mi"},
            "resources": {"limits": {"memory": "256Mi"}}})),
            &config,
        );
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("virt-launcher-cirros-"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["kubevirt.io"], "virt-launcher");
        assert_eq!(labels["kubevirt.io/created-by"], "u1");
        assert_eq!(labels["app"], "demo");
        assert_eq!(
            meta.owner_references.as_ref().unwrap()[0].kind,
            "VirtualMachineInstance"
        );
        let spec = pod.spec.unwrap();
        let resources = spec.containers[0].resources.clone().unwrap();
        let requests = resources.requests.unwrap();
        let bytes = |q: &Quantity| api::quantity::to_units(q).unwrap();
        assert_eq!(
            bytes(&requests["memory"]),
            128 * MIB + 76 * MIB + 256 * 1024
        );
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(
            bytes(&resources.limits.unwrap()["memory"]),
            256 * MIB + 76 * MIB + 256 * 1024
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(15));
        assert_eq!(
            spec.node_selector.unwrap()["kubevirt.io/schedulable"],
            "true"
        );
        assert_eq!(spec.containers[0].name, "compute");
    }
}

#[cfg(test)]
mod sandbox_tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_launcher_runs_as_qemu_without_capabilities_and_mounts_its_images() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "metadata": {"name": "v", "namespace": "ns", "uid": "u"},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"},
                "firmware": {"kernelBoot": {"container": {"image": "kb:1", "kernelPath": "/k"}}}},
                "volumes": [
                    {"name": "ci", "cloudInitNoCloud": {"userData": "x"}},
                    {"name": "root_disk", "containerDisk": {"image": "disk:1", "imagePullPolicy": "Always"}}]}}))
        .unwrap();
        let config = |software_emulation| LauncherConfig {
            image: "l".into(),
            software_emulation,
            ..LauncherConfig::default()
        };
        let pod = serde_json::to_value(launcher_pod(&vmi, &config(false))).unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsUser"], 107);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["resources"]["limits"][KVM_RESOURCE], "1");
        assert_eq!(
            spec["volumes"],
            json!([{"name": "private", "emptyDir": {}},
                   {"name": "container-disk-1", "image": {"reference": "disk:1", "pullPolicy": "Always"}},
                   {"name": "kernel-boot", "image": {"reference": "kb:1"}}])
        );
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                PRIVATE_DIR,
                "/var/run/kubevirt/images/volumes/root_disk",
                "/var/run/kubevirt/images/kernel-boot"
            ]
        );
        // Under software emulation the pod asks for no /dev/kvm.
        let emulated = serde_json::to_value(launcher_pod(&vmi, &config(true))).unwrap();
        assert!(
            emulated["spec"]["containers"][0]["resources"]["limits"]
                .get(KVM_RESOURCE)
                .is_none()
        );
    }
}
