use super::*;
use crate::defaults::{DefaultsConfig, set_vmi_defaults};
use crate::validate::validate;

fn shared(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Every upstream example and the seed's manifest parses, takes the defaults and validates.
#[test]
fn every_shared_example_parses_defaults_and_validates() {
    let files: Vec<_> = shared("upstream-examples")
        .into_iter()
        .chain(shared("seed-examples"))
        .collect();
    assert!(
        files.len() >= 15,
        "expected the example corpus, found {}",
        files.len()
    );
    for (name, text) in files {
        let objects = parse_documents(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!objects.is_empty(), "{name}: no objects");
        for mut object in objects {
            if let Object::VirtualMachineInstance(vmi) = &mut object {
                set_vmi_defaults(
                    &mut vmi.spec,
                    Some("6a1f5c2e-8a44-4c8e-9a51-0d6f3f1d2b7e"),
                    &DefaultsConfig::default(),
                );
            }
            let causes = validate(&object);
            assert!(causes.is_empty(), "{name} {}: {causes:?}", object.kind());
        }
    }
}

#[test]
fn the_seed_v1alpha2_vm_converts_to_v1() {
    let (_, text) = shared("seed-examples")
        .into_iter()
        .find(|(n, _)| n == "vm-v1alpha2.yaml")
        .unwrap();
    let objects = parse_documents(&text).unwrap();
    let Object::VirtualMachine(vm) = &objects[0] else {
        panic!("{:?}", objects[0].kind())
    };
    assert_eq!(vm.spec.running, Some(false));
    let spec = vm.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.volumes[0].name, "registrydisk");
    assert_eq!(
        spec.volumes[0].container_disk.as_ref().unwrap().image,
        "kubevirt/cirros-registry-disk-demo"
    );
    assert_eq!(spec.volumes[1].name, "cloudinitdisk");
    assert_eq!(
        spec.volumes[1]
            .cloud_init_no_cloud
            .as_ref()
            .unwrap()
            .user_data_base64
            .as_deref(),
        Some("SGkuXG4=")
    );
    let Object::VirtualMachineInstancePreset(preset) = &objects[1] else {
        panic!()
    };
    assert_eq!(preset.metadata.name.as_deref(), Some("small"));
}

#[test]
fn v1alpha3_is_accepted_as_v1() {
    let objects = parse_documents("apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachineInstanceMigration\nmetadata: {name: m}\nspec: {vmiName: x}\n").unwrap();
    assert_eq!(objects[0].kind(), "VirtualMachineInstanceMigration");
}

fn field_error(text: &str) -> (String, String) {
    match parse_documents(text) {
        Err(ParseError::Field { field, message, .. }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn an_unknown_field_is_an_error_that_names_its_path() {
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: a}\nspec:\n  domain:\n    devices:\n      disks:\n      - name: d\n        disk: {bux: virtio}\n";
    assert_eq!(
        field_error(text),
        (
            "spec.domain.devices.disks[0].disk.bux".into(),
            "unknown field".into()
        )
    );
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: a}\nspec: {template: {}}\nsepc: {}\n";
    assert_eq!(field_error(text).0, "sepc");
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: a, lables: {}}\nspec: {template: {}}\n";
    assert_eq!(field_error(text).0, "metadata.lables");
}

#[test]
fn a_wrong_type_names_its_path() {
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: a}\nspec: {domain: {devices: {}, cpu: {cores: many}}}\n";
    let (field, message) = field_error(text);
    assert_eq!(field, "spec.domain.cpu.cores");
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn bad_documents_are_clear_errors() {
    assert!(matches!(
        parse_documents("a: [unclosed"),
        Err(ParseError::Syntax { .. })
    ));
    assert!(
        matches!(parse_documents("kind: VirtualMachine\n"), Err(ParseError::Field { field, .. }) if field == "apiVersion")
    );
    assert!(matches!(
        parse_documents("apiVersion: kubevirt.io/v2\nkind: VirtualMachine\n"),
        Err(ParseError::UnknownKind { .. })
    ));
    assert!(matches!(
        parse_documents("apiVersion: v1\nkind: Pod\n"),
        Err(ParseError::UnknownKind { .. })
    ));
    assert!(matches!(
        parse_documents("- 1\n- 2\n"),
        Err(ParseError::Field { .. })
    ));
}

#[test]
fn the_document_index_is_reported() {
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata: {name: m}\nspec: {vmiName: x}\n---\napiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata: {name: m}\nspec: {vmi: x}\n";
    match parse_documents(text) {
        Err(ParseError::Field { doc, field, .. }) => {
            assert_eq!((doc, field.as_str()), (1, "spec.vmi"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn objects_round_trip_through_json_unchanged() {
    for (name, text) in shared("upstream-examples") {
        for object in parse_documents(&text).unwrap() {
            let json = match &object {
                Object::VirtualMachine(o) => serde_json::to_value(o),
                Object::VirtualMachineInstance(o) => serde_json::to_value(o),
                Object::VirtualMachineInstanceReplicaSet(o) => serde_json::to_value(o),
                Object::VirtualMachineInstancePreset(o) => serde_json::to_value(o),
                Object::VirtualMachineInstanceMigration(o) => serde_json::to_value(o),
                Object::VirtualMachineInstancetype(o) => serde_json::to_value(o),
                Object::VirtualMachineClusterInstancetype(o) => serde_json::to_value(o),
                Object::VirtualMachinePreference(o) => serde_json::to_value(o),
                Object::VirtualMachineClusterPreference(o) => serde_json::to_value(o),
                Object::MigrationPolicy(o) => serde_json::to_value(o),
                Object::KubeVirt(o) => serde_json::to_value(o),
            }
            .unwrap();
            let original: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            assert_eq!(json, original, "{name}");
        }
    }
}
