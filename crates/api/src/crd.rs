//! CustomResourceDefinitions generated from the Rust types.
//!
//! kube-derive produces one version per kind; here each kubevirt.io kind also gets the
//! deprecated `v1alpha3` (same schema, conversion `None`, as upstream), the kinds the seed's
//! documents used also `v1alpha2` (see [`seed`]), the CRDs carry
//! upstream's `kubevirt.io` label, and the VMI loses its status subresource (upstream's VMI
//! has none: status is written with ordinary updates). `deploy/crds/` holds the output of
//! `cargo run -p api --bin crdgen`, and a test keeps it in step with the types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::CustomResourceExt;

use crate::instancetype::{
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachinePreference,
};
use crate::kubevirt::KubeVirt;
use crate::migrations::MigrationPolicy;
use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstancePreset, VirtualMachineInstanceReplicaSet,
};

/// Every CRD of the project, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        seed(core(VirtualMachine::crd())),
        seed(core(VirtualMachineInstance::crd())),
        seed(core(VirtualMachineInstanceReplicaSet::crd())),
        seed(core(VirtualMachineInstancePreset::crd())),
        core(VirtualMachineInstanceMigration::crd()),
        labelled(VirtualMachineInstancetype::crd()),
        labelled(VirtualMachineClusterInstancetype::crd()),
        labelled(VirtualMachinePreference::crd()),
        labelled(VirtualMachineClusterPreference::crd()),
        labelled(MigrationPolicy::crd()),
        operator(core(KubeVirt::crd())),
    ];
    for crd in &mut crds {
        if crd.spec.names.kind == "VirtualMachineInstance" {
            for v in &mut crd.spec.versions {
                if let Some(sub) = &mut v.subresources {
                    sub.status = None;
                }
            }
        }
    }
    crds
}

/// `deploy/crds/`, compiled in, in the order of [`all`]: what a server installs. Reading
/// these costs a YAML parse; generating the schemas ([`all`]) costs far more, and a test
/// keeps the two equal.
const MANIFESTS: [&str; 11] = [
    include_str!("../../../deploy/crds/virtualmachines.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/virtualmachineinstances.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/virtualmachineinstancereplicasets.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/virtualmachineinstancepresets.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/virtualmachineinstancemigrations.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/virtualmachineinstancetypes.instancetype.kubevirt.io.yaml"),
    include_str!(
        "../../../deploy/crds/virtualmachineclusterinstancetypes.instancetype.kubevirt.io.yaml"
    ),
    include_str!("../../../deploy/crds/virtualmachinepreferences.instancetype.kubevirt.io.yaml"),
    include_str!(
        "../../../deploy/crds/virtualmachineclusterpreferences.instancetype.kubevirt.io.yaml"
    ),
    include_str!("../../../deploy/crds/migrationpolicies.migrations.kubevirt.io.yaml"),
    include_str!("../../../deploy/crds/kubevirts.kubevirt.io.yaml"),
];

/// The names of the compiled-in CRDs, in the same order.
pub const NAMES: [&str; 11] = [
    "virtualmachines.kubevirt.io",
    "virtualmachineinstances.kubevirt.io",
    "virtualmachineinstancereplicasets.kubevirt.io",
    "virtualmachineinstancepresets.kubevirt.io",
    "virtualmachineinstancemigrations.kubevirt.io",
    "virtualmachineinstancetypes.instancetype.kubevirt.io",
    "virtualmachineclusterinstancetypes.instancetype.kubevirt.io",
    "virtualmachinepreferences.instancetype.kubevirt.io",
    "virtualmachineclusterpreferences.instancetype.kubevirt.io",
    "migrationpolicies.migrations.kubevirt.io",
    "kubevirts.kubevirt.io",
];

/// The CRDs a server installs, read from the compiled-in manifests.
pub fn installed() -> Vec<CustomResourceDefinition> {
    MANIFESTS
        .iter()
        .filter_map(|m| serde_saphyr::from_str(m).ok())
        .collect()
}

/// The compiled-in manifests as JSON values, for writing them to a store: far lighter to
/// hold than the typed CRDs, whose schema nodes are large structs.
pub fn installed_json() -> Vec<serde_json::Value> {
    MANIFESTS
        .iter()
        .filter_map(|m| serde_saphyr::from_str(m).ok())
        .collect()
}

/// A short fingerprint of the compiled-in manifests: a server compares it with what it
/// stored to know whether its CRDs are current without reading them.
pub fn fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for m in MANIFESTS {
        hash.update(m.as_bytes());
    }
    hash.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file name a CRD is written to under `deploy/crds/`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The CRD as YAML, as written to `deploy/crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let value = serde_json::to_value(crd).unwrap_or_default();
    serde_saphyr::to_string(&value).unwrap_or_default()
}

fn labelled(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("kubevirt.io".into(), String::new());
    crd
}

/// The KubeVirt CR's CRD carries upstream's operator label instead.
fn operator(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.remove("kubevirt.io");
    labels.insert("operator.kubevirt.io".into(), String::new());
    crd
}

fn core(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut crd = labelled(crd);
    let v1 = crd.spec.versions[0].clone();
    crd.spec.versions.push(CustomResourceDefinitionVersion {
        name: "v1alpha3".into(),
        served: true,
        storage: false,
        deprecated: Some(true),
        deprecation_warning: Some(format!(
            "kubevirt.io/v1alpha3 {} is now deprecated and will be removed in a future release.",
            crd.spec.names.kind
        )),
        ..v1
    });
    crd
}

/// Adds the seed's `v1alpha2` (served, deprecated) to a kind that existed then. Its
/// objects are v1 with older field names (`registryDisk`, `volumeName`); the API server
/// converts them through this crate's parser, so the schema only says "an object".
fn seed(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let v1 = crd.spec.versions[0].clone();
    let schema = serde_json::from_value(serde_json::json!({
        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    }))
    .ok();
    crd.spec.versions.push(CustomResourceDefinitionVersion {
        name: "v1alpha2".into(),
        served: true,
        storage: false,
        deprecated: Some(true),
        deprecation_warning: Some(format!(
            "kubevirt.io/v1alpha2 {} is deprecated; use kubevirt.io/v1",
            crd.spec.names.kind
        )),
        schema,
        additional_printer_columns: v1.additional_printer_columns.clone(),
        ..v1
    });
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
        for crd in all() {
            let path = dir.join(file_name(&crd));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == to_yaml(&crd),
                "{} is stale: run `make crds` and review the API change",
                path.display()
            );
        }
    }

    #[test]
    fn compiled_in_manifests_are_the_generated_crds() {
        let crds = installed();
        assert_eq!(crds, all());
        let as_json: Vec<serde_json::Value> = crds
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        assert_eq!(installed_json(), as_json);
        let names: Vec<&str> = crds
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        assert_eq!(names, NAMES);
        assert_eq!(fingerprint().len(), 16);
    }

    #[test]
    fn printer_columns_and_names_are_upstreams() {
        let crds = all();
        let find = |kind: &str| crds.iter().find(|c| c.spec.names.kind == kind).unwrap();
        let columns = |kind: &str| -> Vec<String> {
            find(kind).spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(columns("VirtualMachine"), ["Age", "Status", "Ready"]);
        assert_eq!(
            columns("VirtualMachineInstance"),
            [
                "Age",
                "Phase",
                "IP",
                "NodeName",
                "Ready",
                "Live-Migratable",
                "Paused"
            ]
        );
        assert_eq!(
            columns("VirtualMachineInstanceReplicaSet"),
            ["Desired", "Current", "Ready", "Age"]
        );
        assert_eq!(columns("VirtualMachineInstanceMigration"), ["Phase", "VMI"]);
        assert_eq!(
            find("VirtualMachine")
                .spec
                .names
                .short_names
                .as_deref()
                .unwrap(),
            ["vm", "vms"]
        );
        assert_eq!(
            find("VirtualMachineClusterInstancetype").spec.scope,
            "Cluster"
        );
        let vmi = find("VirtualMachineInstance");
        assert!(
            vmi.spec
                .versions
                .iter()
                .all(|v| v.subresources.as_ref().is_none_or(|s| s.status.is_none()))
        );
        let rs = find("VirtualMachineInstanceReplicaSet");
        assert!(
            rs.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .scale
                .is_some()
        );
        assert_eq!(
            rs.spec
                .versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["v1", "v1alpha3", "v1alpha2"]
        );
    }
}
