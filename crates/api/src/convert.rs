//! Conversion of older API versions to the storage version, on raw JSON.
//!
//! - `kubevirt.io/v1alpha3` has the same schema as `v1`: only `apiVersion` changes (the
//!   preset, whose storage version upstream is still v1alpha3, is stored as v1 here).
//! - `kubevirt.io/v1alpha2`, the seed's version: `registryDisk` volumes became
//!   `containerDisk`, and disks named their volume through `volumeName` where v1 requires
//!   the disk and the volume to share a name, so volumes are renamed after their disks;
//!   a VM's `spec.selector` is dropped (v1 VMs own their VMI by reference, not by label).

use serde_json::{Value, json};

/// The version objects of a kind are stored in, if we serve the kind at all.
pub fn storage_version(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        (
            crate::GROUP,
            "VirtualMachine"
            | "VirtualMachineInstance"
            | "VirtualMachineInstanceReplicaSet"
            | "VirtualMachineInstancePreset"
            | "VirtualMachineInstanceMigration"
            | "KubeVirt",
        ) => Some("v1"),
        (
            crate::INSTANCETYPE_GROUP,
            "VirtualMachineInstancetype"
            | "VirtualMachineClusterInstancetype"
            | "VirtualMachinePreference"
            | "VirtualMachineClusterPreference",
        ) => Some("v1beta1"),
        (crate::MIGRATIONS_GROUP, "MigrationPolicy") => Some("v1alpha1"),
        _ => None,
    }
}

/// Converts `value` in place from `version` to the storage version. `None` when the
/// version is not one we accept.
pub fn to_storage(group: &str, version: &str, kind: &str, value: &mut Value) -> Option<()> {
    match (group, version) {
        (crate::GROUP, "v1alpha3") => {}
        (crate::GROUP, "v1alpha2") => from_v1alpha2(kind, value),
        _ => return None,
    }
    value["apiVersion"] = json!(format!("{group}/{}", storage_version(group, kind)?));
    Some(())
}

fn from_v1alpha2(kind: &str, value: &mut Value) {
    // v1alpha2 VMs carried a label selector for their VMIs; v1 owns the VMI by reference.
    if kind == "VirtualMachine"
        && let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.remove("selector");
    }
    let spec = match kind {
        "VirtualMachineInstance" => value.pointer_mut("/spec"),
        "VirtualMachine" | "VirtualMachineInstanceReplicaSet" => {
            value.pointer_mut("/spec/template/spec")
        }
        _ => None,
    };
    if let Some(spec) = spec {
        vmi_spec_from_v1alpha2(spec);
    }
}

fn vmi_spec_from_v1alpha2(spec: &mut Value) {
    let mut renames = Vec::new();
    if let Some(disks) = spec
        .pointer_mut("/domain/devices/disks")
        .and_then(Value::as_array_mut)
    {
        for disk in disks {
            let Some(disk) = disk.as_object_mut() else {
                continue;
            };
            if let Some(Value::String(volume)) = disk.remove("volumeName")
                && let Some(Value::String(name)) = disk.get("name")
            {
                renames.push((volume, name.clone()));
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for volume in volumes {
            let Some(volume) = volume.as_object_mut() else {
                continue;
            };
            if let Some(registry_disk) = volume.remove("registryDisk") {
                volume.insert("containerDisk".into(), registry_disk);
            }
            let current = volume
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some((_, disk)) = renames.iter().find(|(v, _)| Some(v) == current.as_ref()) {
                volume.insert("name".into(), json!(disk));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1alpha2_registry_disk_becomes_a_container_disk_named_after_its_disk() {
        let mut vm = json!({
            "apiVersion": "kubevirt.io/v1alpha2", "kind": "VirtualMachine",
            "spec": {"template": {"spec": {
                "domain": {"devices": {"disks": [
                    {"name": "registrydisk", "volumeName": "registryvolume", "disk": {"bus": "virtio"}}
                ]}},
                "volumes": [{"name": "registryvolume", "registryDisk": {"image": "kubevirt/x"}}]
            }}}
        });
        to_storage("kubevirt.io", "v1alpha2", "VirtualMachine", &mut vm).unwrap();
        assert_eq!(vm["apiVersion"], "kubevirt.io/v1");
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["disks"][0],
            json!({"name": "registrydisk", "disk": {"bus": "virtio"}})
        );
        assert_eq!(
            spec["volumes"][0],
            json!({"name": "registrydisk", "containerDisk": {"image": "kubevirt/x"}})
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut v = json!({});
        assert!(to_storage("kubevirt.io", "v2", "VirtualMachine", &mut v).is_none());
        assert!(
            to_storage(
                "instancetype.kubevirt.io",
                "v1alpha1",
                "VirtualMachineInstancetype",
                &mut v
            )
            .is_none()
        );
    }
}
