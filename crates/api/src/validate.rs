//! Validation: every problem of an object, each with its field path, in the shape of a
//! Kubernetes `StatusCause` so an API server can return them in a 422 unchanged.

mod vmi;

/// The value lists the VMI rules accept, shared with preference validation.
pub mod vmi_rules {
    pub use super::vmi::{CDROM_BUSES, DISK_BUSES, INTERFACE_MODELS};
}

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::parse::Object;
use crate::v1::{VirtualMachine, VirtualMachineInstanceReplicaSet};

pub use vmi::validate_vmi_spec;

/// Why a field is wrong, as Kubernetes spells it in `StatusCause.reason`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CauseReason {
    FieldValueRequired,
    FieldValueInvalid,
    FieldValueNotSupported,
    FieldValueDuplicate,
    FieldValueForbidden,
}

/// One problem with one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: CauseReason,
    pub message: String,
    pub field: String,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects causes under a field path.
#[derive(Debug, Default)]
pub struct Causes(pub Vec<Cause>);

impl Causes {
    pub fn push(
        &mut self,
        reason: CauseReason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Cause {
            reason,
            field: field.into(),
            message: message.into(),
        });
    }
    pub fn required(&mut self, field: impl Into<String>) {
        self.push(CauseReason::FieldValueRequired, field, "required value");
    }
    pub fn invalid(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(CauseReason::FieldValueInvalid, field, message);
    }
    pub fn not_supported(&mut self, field: impl Into<String>, value: &str, allowed: &[&str]) {
        let message = format!(
            "unsupported value {value:?}: supported values: {}",
            quoted(allowed)
        );
        self.push(CauseReason::FieldValueNotSupported, field, message);
    }
    pub fn duplicate(&mut self, field: impl Into<String>, value: &str) {
        self.push(
            CauseReason::FieldValueDuplicate,
            field,
            format!("duplicate value {value:?}"),
        );
    }
    pub fn forbidden(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(CauseReason::FieldValueForbidden, field, message);
    }
    /// Checks `value` against `allowed` when set.
    pub fn one_of(&mut self, field: impl Into<String>, value: Option<&str>, allowed: &[&str]) {
        if let Some(v) = value
            && !allowed.contains(&v)
        {
            self.not_supported(field, v, allowed);
        }
    }
    /// Records duplicates among `names`, each at `prefix[i].name`.
    pub fn unique_names<'a>(&mut self, prefix: &str, names: impl IntoIterator<Item = &'a str>) {
        let mut seen = BTreeSet::new();
        for (i, name) in names.into_iter().enumerate() {
            if name.is_empty() {
                self.required(format!("{prefix}[{i}].name"));
            } else if !seen.insert(name) {
                self.duplicate(format!("{prefix}[{i}].name"), name);
            }
        }
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates any object; an empty result means valid.
pub fn validate(object: &Object) -> Vec<Cause> {
    let mut c = Causes::default();
    validate_meta(object.metadata(), &mut c);
    match object {
        Object::VirtualMachineInstance(vmi) => validate_vmi_spec(&vmi.spec, "spec", true, &mut c),
        Object::VirtualMachine(vm) => validate_vm(vm, &mut c),
        Object::VirtualMachineInstanceReplicaSet(rs) => validate_replicaset(rs, &mut c),
        Object::VirtualMachineInstancePreset(p) => {
            validate_selector(&p.spec.selector, "spec.selector", &mut c)
        }
        Object::VirtualMachineInstanceMigration(m) => {
            if m.spec.vmi_name.as_deref().unwrap_or_default().is_empty() {
                c.required("spec.vmiName");
            }
            if m.spec.send_to.is_some() {
                c.forbidden("spec.sendTo", "cross-cluster migration is not supported");
            }
            if m.spec.receive.is_some() {
                c.forbidden("spec.receive", "cross-cluster migration is not supported");
            }
        }
        Object::VirtualMachineInstancetype(t) => {
            crate::expand::validate_instancetype(&t.spec, &mut c)
        }
        Object::VirtualMachineClusterInstancetype(t) => {
            crate::expand::validate_instancetype(&t.spec.spec, &mut c)
        }
        Object::VirtualMachinePreference(p) => crate::expand::validate_preference(&p.spec, &mut c),
        Object::VirtualMachineClusterPreference(p) => {
            crate::expand::validate_preference(&p.spec.spec, &mut c)
        }
        Object::MigrationPolicy(p) => {
            if let Some(q) = &p.spec.bandwidth_per_migration
                && crate::quantity::to_units(q).is_err()
            {
                c.invalid(
                    "spec.bandwidthPerMigration",
                    format!("{:?} is not a quantity of bytes", q.0),
                );
            }
            if p.spec.completion_timeout_per_gib.is_some_and(|t| t <= 0) {
                c.invalid("spec.completionTimeoutPerGiB", "must be positive");
            }
        }
        Object::KubeVirt(kv) => {
            let migrations = kv
                .spec
                .configuration
                .as_ref()
                .and_then(|c| c.migrations.as_ref());
            if let Some(m) = migrations {
                validate_migration_configuration(m, "spec.configuration.migrations", &mut c);
            }
        }
    }
    c.0
}

/// The cluster's migration settings: quantities of bytes, positive timeouts and limits.
fn validate_migration_configuration(
    m: &crate::migrations::MigrationConfiguration,
    at: &str,
    c: &mut Causes,
) {
    if let Some(q) = &m.bandwidth_per_migration
        && crate::quantity::to_units(q).is_err()
    {
        c.invalid(
            format!("{at}.bandwidthPerMigration"),
            format!("{:?} is not a quantity of bytes", q.0),
        );
    }
    let positive = [
        ("completionTimeoutPerGiB", m.completion_timeout_per_gib),
        ("progressTimeout", m.progress_timeout),
        (
            "parallelMigrationsPerCluster",
            m.parallel_migrations_per_cluster.map(i64::from),
        ),
        (
            "parallelOutboundMigrationsPerNode",
            m.parallel_outbound_migrations_per_node.map(i64::from),
        ),
    ];
    for (field, value) in positive {
        if value.is_some_and(|v| v <= 0) {
            c.invalid(format!("{at}.{field}"), "must be positive");
        }
    }
}

fn validate_meta(meta: &ObjectMeta, c: &mut Causes) {
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => {
            if let Err(why) = dns1123_subdomain(name) {
                c.invalid("metadata.name", why);
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {}
        _ => c.required("metadata.name"),
    }
}

fn validate_vm(vm: &VirtualMachine, c: &mut Causes) {
    let spec = &vm.spec;
    if spec.running.is_some() && spec.run_strategy.is_some() {
        c.forbidden(
            "spec.running",
            "running and runStrategy are mutually exclusive",
        );
    }
    if !spec.data_volume_templates.is_empty() {
        c.forbidden(
            "spec.dataVolumeTemplates",
            "DataVolumes need CDI, which is not supported",
        );
    }
    let kinds_it = [
        "VirtualMachineInstancetype",
        "VirtualMachineClusterInstancetype",
    ];
    let kinds_p = [
        "VirtualMachinePreference",
        "VirtualMachineClusterPreference",
    ];
    if let Some(m) = &spec.instancetype {
        matcher(
            m.name.as_deref(),
            m.kind.as_deref(),
            m.infer_from_volume.as_deref(),
            "spec.instancetype",
            &kinds_it,
            c,
        );
    }
    if let Some(m) = &spec.preference {
        matcher(
            m.name.as_deref(),
            m.kind.as_deref(),
            m.infer_from_volume.as_deref(),
            "spec.preference",
            &kinds_p,
            c,
        );
    }
    match &spec.template.spec {
        None => c.required("spec.template.spec"),
        Some(t) => validate_vmi_spec(t, "spec.template.spec", false, c),
    }
}

fn matcher(
    name: Option<&str>,
    kind: Option<&str>,
    infer: Option<&str>,
    at: &str,
    kinds: &[&str],
    c: &mut Causes,
) {
    if name.unwrap_or_default().is_empty() && infer.is_none() {
        c.required(format!("{at}.name"));
    }
    if let Some(infer) = infer {
        c.forbidden(format!("{at}.inferFromVolume"), format!("inferring from volume {infer:?} needs PVC or DataVolume labels, which are not supported"));
    }
    let lower: Vec<String> = kinds.iter().map(|k| k.to_lowercase()).collect();
    if let Some(kind) = kind
        && !kinds.contains(&kind)
        && !lower.iter().any(|k| k == kind)
    {
        c.not_supported(format!("{at}.kind"), kind, kinds);
    }
}

fn validate_replicaset(rs: &VirtualMachineInstanceReplicaSet, c: &mut Causes) {
    let spec = &rs.spec;
    if spec.replicas.is_some_and(|r| r < 0) {
        c.invalid("spec.replicas", "must be greater than or equal to 0");
    }
    validate_selector(&spec.selector, "spec.selector", c);
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !crate::preset::selector_matches(&spec.selector, &labels).unwrap_or(false) {
        c.invalid(
            "spec.template.metadata.labels",
            "selector does not match template labels",
        );
    }
    match &spec.template.spec {
        None => c.required("spec.template.spec"),
        Some(t) => validate_vmi_spec(t, "spec.template.spec", false, c),
    }
}

fn validate_selector(selector: &LabelSelector, at: &str, c: &mut Causes) {
    let empty = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        c.required(at);
    }
    if let Err(why) = crate::preset::selector_matches(selector, &Default::default()) {
        c.invalid(at, why);
    }
}

/// A DNS-1123 subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253 && name.split('.').all(|part| dns1123_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lower-case alphanumerics, '-' and '.', starting and ending with an alphanumeric, at most 253 characters"
        ))
    }
}

/// A machine type QEMU is given: `q35`, `pc`, or a versioned `pc-q35-X.Y[.Z]` /
/// `pc-i440fx-X.Y[.Z]`. Nothing else may reach `-machine`, whose options follow it.
pub fn machine_type_known(m: &str) -> bool {
    let version = |v: &str| {
        let parts: Vec<&str> = v.split('.').collect();
        (2..=3).contains(&parts.len())
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    m == "q35"
        || m == "pc"
        || m.strip_prefix("pc-q35-").is_some_and(version)
        || m.strip_prefix("pc-i440fx-").is_some_and(version)
}

/// A CPU model or feature name: QEMU splits `-cpu` on every comma (`,,` is no escape
/// there), so only letters, digits, `_`, `.` and `-` may reach it.
pub fn cpu_word(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// A DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters"
        ))
    }
}

#[cfg(test)]
mod tests;
