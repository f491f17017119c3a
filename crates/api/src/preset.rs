//! VirtualMachineInstancePresets: label selection and merging into a VMI.
//!
//! A preset applies to every VMI whose labels its selector matches. Its domain settings fill
//! what the VMI leaves unset; a preset that would change something the VMI sets differently
//! is not applied at all and reported as a conflict. Applied presets are recorded as
//! `virtualmachineinstancepreset.kubevirt.io/<name>: kubevirt.io/v1` annotations, and a VMI
//! annotated `virtualmachineinstancepresets.admission.kubevirt.io/exclude: "true"` takes none.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::v1::{DomainSpec, VirtualMachineInstance, VirtualMachineInstancePreset};

pub const PRESET_ANNOTATION_PREFIX: &str = "virtualmachineinstancepreset.kubevirt.io/";
pub const EXCLUDE_ANNOTATION: &str = "virtualmachineinstancepresets.admission.kubevirt.io/exclude";

/// Whether `selector` selects `labels`; an error for an expression Kubernetes would refuse.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let mut matches = true;
    for (k, v) in selector.match_labels.iter().flatten() {
        matches &= labels.get(k) == Some(v);
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let has = labels.get(&e.key);
        matches &= match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "operator {} for key {:?} needs values",
                    e.operator, e.key
                ));
            }
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => return Err(format!("unknown operator {other:?}")),
        };
    }
    Ok(matches)
}

/// A preset that matched but could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetConflict {
    pub preset: String,
    pub field: String,
}

/// Applies every matching preset, in name order, returning the conflicts.
pub fn apply_presets(
    vmi: &mut VirtualMachineInstance,
    presets: &[VirtualMachineInstancePreset],
) -> Vec<PresetConflict> {
    let annotations = vmi
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if annotations
        .get(EXCLUDE_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Vec::new();
    }
    let labels = vmi.metadata.labels.clone().unwrap_or_default();
    let mut sorted: Vec<_> = presets.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    let mut conflicts = Vec::new();
    for preset in sorted {
        if !selector_matches(&preset.spec.selector, &labels).unwrap_or(false) {
            continue;
        }
        let name = preset.metadata.name.clone().unwrap_or_default();
        let Some(domain) = &preset.spec.domain else {
            continue;
        };
        match merge_domain(&vmi.spec.domain, domain) {
            Ok(merged) => {
                vmi.spec.domain = merged;
                vmi.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(
                        format!("{PRESET_ANNOTATION_PREFIX}{name}"),
                        "kubevirt.io/v1".into(),
                    );
            }
            Err(field) => conflicts.push(PresetConflict {
                preset: name,
                field,
            }),
        }
    }
    conflicts
}

/// Fills `base` from `preset`, or names the first field both set differently.
fn merge_domain(base: &DomainSpec, preset: &DomainSpec) -> Result<DomainSpec, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let preset = serde_json::to_value(preset).map_err(|e| e.to_string())?;
    fill(&mut merged, &preset, "spec.domain")?;
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

/// Recursively copies `from` into `into` where `into` has nothing; lists are atomic.
fn fill(into: &mut Value, from: &Value, at: &str) -> Result<(), String> {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                match into.get_mut(k) {
                    None => {
                        into.insert(k.clone(), v.clone());
                    }
                    Some(existing) => fill(existing, v, &format!("{at}.{k}"))?,
                }
            }
            Ok(())
        }
        (into, from) if into == from => Ok(()),
        (Value::Array(a), _) if a.is_empty() => Ok(()),
        (_, Value::Array(b)) if b.is_empty() => Ok(()),
        _ => Err(at.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Object, parse_documents};

    fn load(yaml: &str) -> Vec<Object> {
        parse_documents(yaml).unwrap()
    }

    const VMI: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: a, labels: {kubevirt.io/size: small}}
spec:
  domain:
    devices: {}
    cpu: {cores: 2}
";

    fn preset(yaml_domain: &str) -> VirtualMachineInstancePreset {
        let text = format!(
            "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstancePreset
metadata: {{name: small}}
spec:
  selector: {{matchLabels: {{kubevirt.io/size: small}}}}
  domain: {yaml_domain}
"
        );
        match load(&text).remove(0) {
            Object::VirtualMachineInstancePreset(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn vmi() -> VirtualMachineInstance {
        match load(VMI).remove(0) {
            Object::VirtualMachineInstance(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_matching_preset_fills_unset_fields_and_is_recorded() {
        let mut v = vmi();
        let conflicts = apply_presets(
            &mut v,
            &[preset(
                "{resources: {requests: {memory: 64M}}, cpu: {cores: 2}}",
            )],
        );
        assert!(conflicts.is_empty());
        assert_eq!(v.spec.domain.resources.unwrap().requests["memory"].0, "64M");
        assert_eq!(
            v.metadata.annotations.unwrap()["virtualmachineinstancepreset.kubevirt.io/small"],
            "kubevirt.io/v1"
        );
    }

    #[test]
    fn a_conflicting_preset_is_not_applied_and_names_the_field() {
        let mut v = vmi();
        let conflicts = apply_presets(
            &mut v,
            &[preset(
                "{resources: {requests: {memory: 64M}}, cpu: {cores: 4}}",
            )],
        );
        assert_eq!(
            conflicts,
            vec![PresetConflict {
                preset: "small".into(),
                field: "spec.domain.cpu.cores".into()
            }]
        );
        assert!(
            v.spec.domain.resources.is_none(),
            "nothing of a conflicting preset is applied"
        );
    }

    #[test]
    fn a_preset_that_does_not_match_is_ignored() {
        let mut v = vmi();
        v.metadata.labels = None;
        assert!(apply_presets(&mut v, &[preset("{cpu: {cores: 4}}")]).is_empty());
        assert_eq!(v.spec.domain.cpu.unwrap().cores, Some(2));
    }

    #[test]
    fn selector_expressions() {
        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        let sel =
            |json: serde_json::Value| -> LabelSelector { serde_json::from_value(json).unwrap() };
        assert!(selector_matches(&sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]})), &labels).unwrap());
        assert!(!selector_matches(&sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]})), &labels).unwrap());
        assert!(selector_matches(&sel(serde_json::json!({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]})), &labels).unwrap());
        assert!(
            selector_matches(
                &sel(serde_json::json!({"matchExpressions": [{"key": "b", "operator": "Near"}]})),
                &labels
            )
            .is_err()
        );
    }
}
