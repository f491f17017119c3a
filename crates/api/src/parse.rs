//! Strict parsing of manifests into typed objects.
//!
//! 1. Split a YAML or JSON stream into documents (`serde-saphyr`, as kube uses).
//! 2. Read `apiVersion` and `kind`; convert older versions to the storage version
//!    ([`crate::convert`]).
//! 3. Refuse unknown top-level and `metadata` keys, then deserialize the typed object with
//!    unknown fields refused everywhere in `spec`; the first error names its field path.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::convert;
use crate::instancetype::{
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachinePreference,
};
use crate::v1::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstancePreset, VirtualMachineInstanceReplicaSet,
};

/// Any object of the API, in its storage version.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    VirtualMachine(VirtualMachine),
    VirtualMachineInstance(VirtualMachineInstance),
    VirtualMachineInstanceReplicaSet(VirtualMachineInstanceReplicaSet),
    VirtualMachineInstancePreset(VirtualMachineInstancePreset),
    VirtualMachineInstanceMigration(VirtualMachineInstanceMigration),
    VirtualMachineInstancetype(VirtualMachineInstancetype),
    VirtualMachineClusterInstancetype(VirtualMachineClusterInstancetype),
    VirtualMachinePreference(VirtualMachinePreference),
    VirtualMachineClusterPreference(VirtualMachineClusterPreference),
    MigrationPolicy(crate::migrations::MigrationPolicy),
    KubeVirt(crate::kubevirt::KubeVirt),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VirtualMachine(_) => "VirtualMachine",
            Self::VirtualMachineInstance(_) => "VirtualMachineInstance",
            Self::VirtualMachineInstanceReplicaSet(_) => "VirtualMachineInstanceReplicaSet",
            Self::VirtualMachineInstancePreset(_) => "VirtualMachineInstancePreset",
            Self::VirtualMachineInstanceMigration(_) => "VirtualMachineInstanceMigration",
            Self::VirtualMachineInstancetype(_) => "VirtualMachineInstancetype",
            Self::VirtualMachineClusterInstancetype(_) => "VirtualMachineClusterInstancetype",
            Self::VirtualMachinePreference(_) => "VirtualMachinePreference",
            Self::VirtualMachineClusterPreference(_) => "VirtualMachineClusterPreference",
            Self::MigrationPolicy(_) => "MigrationPolicy",
            Self::KubeVirt(_) => "KubeVirt",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::VirtualMachine(o) => &o.metadata,
            Self::VirtualMachineInstance(o) => &o.metadata,
            Self::VirtualMachineInstanceReplicaSet(o) => &o.metadata,
            Self::VirtualMachineInstancePreset(o) => &o.metadata,
            Self::VirtualMachineInstanceMigration(o) => &o.metadata,
            Self::VirtualMachineInstancetype(o) => &o.metadata,
            Self::VirtualMachineClusterInstancetype(o) => &o.metadata,
            Self::VirtualMachinePreference(o) => &o.metadata,
            Self::VirtualMachineClusterPreference(o) => &o.metadata,
            Self::MigrationPolicy(o) => &o.metadata,
            Self::KubeVirt(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
}

/// Why a manifest could not be read. Each names the document and, where there is one, the
/// field path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("document {doc}: not valid YAML or JSON: {message}")]
    Syntax { doc: usize, message: String },
    #[error("document {doc}: {field}: {message}")]
    Field {
        doc: usize,
        field: String,
        message: String,
    },
    #[error("document {doc}: no kind {kind:?} in version {api_version:?}")]
    UnknownKind {
        doc: usize,
        api_version: String,
        kind: String,
    },
}

impl ParseError {
    /// The field path the error is about, if any (`spec.domain.devices.disks[0].disk.bux`).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Field { field, .. } => Some(field),
            Self::UnknownKind { .. } => Some("kind"),
            Self::Syntax { .. } => None,
        }
    }
}

/// Parses every document of a YAML or JSON stream. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ParseError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ParseError::Syntax {
        doc: 0,
        message: first_line(&e.to_string()),
    })?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, d)| parse_object(d).map_err(|e| e.in_document(i)))
        .collect()
}

/// Parses one object given as JSON (as an API server or webhook receives it).
pub fn parse_object(mut value: Value) -> Result<Object, ParseError> {
    let field = |field: &str, message: &str| ParseError::Field {
        doc: 0,
        field: field.to_owned(),
        message: message.to_owned(),
    };
    if !value.is_object() {
        return Err(field("", "expected an object"));
    }
    let api_version = value["apiVersion"]
        .as_str()
        .ok_or_else(|| field("apiVersion", "required"))?
        .to_owned();
    let kind = value["kind"]
        .as_str()
        .ok_or_else(|| field("kind", "required"))?
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let unknown = || ParseError::UnknownKind {
        doc: 0,
        api_version: api_version.clone(),
        kind: kind.clone(),
    };
    let storage = convert::storage_version(group, &kind).ok_or_else(unknown)?;
    if version != storage {
        convert::to_storage(group, version, &kind, &mut value).ok_or_else(unknown)?;
    }
    check_keys(
        &value,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    check_keys(&value["metadata"], "metadata", OBJECT_META_FIELDS)?;
    match kind.as_str() {
        "VirtualMachine" => typed(value).map(Object::VirtualMachine),
        "VirtualMachineInstance" => typed(value).map(Object::VirtualMachineInstance),
        "VirtualMachineInstanceReplicaSet" => {
            typed(value).map(Object::VirtualMachineInstanceReplicaSet)
        }
        "VirtualMachineInstancePreset" => typed(value).map(Object::VirtualMachineInstancePreset),
        "VirtualMachineInstanceMigration" => {
            typed(value).map(Object::VirtualMachineInstanceMigration)
        }
        "VirtualMachineInstancetype" => typed(value).map(Object::VirtualMachineInstancetype),
        "VirtualMachineClusterInstancetype" => {
            typed(value).map(Object::VirtualMachineClusterInstancetype)
        }
        "VirtualMachinePreference" => typed(value).map(Object::VirtualMachinePreference),
        "VirtualMachineClusterPreference" => {
            typed(value).map(Object::VirtualMachineClusterPreference)
        }
        "MigrationPolicy" => typed(value).map(Object::MigrationPolicy),
        "KubeVirt" => typed(value).map(Object::KubeVirt),
        _ => Err(unknown()),
    }
}

/// Deserializes a value strictly, reporting the path of the first bad field.
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let parent = e.path().to_string();
        let message = e.inner().to_string();
        let field = if parent == "." { String::new() } else { parent };
        let message = if unknown_field_name(&message).is_some() {
            "unknown field".to_owned()
        } else {
            message
        };
        ParseError::Field {
            doc: 0,
            field,
            message,
        }
    })
}

impl ParseError {
    fn in_document(self, doc: usize) -> Self {
        match self {
            Self::Syntax { message, .. } => Self::Syntax { doc, message },
            Self::Field { field, message, .. } => Self::Field {
                doc,
                field,
                message,
            },
            Self::UnknownKind {
                api_version, kind, ..
            } => Self::UnknownKind {
                doc,
                api_version,
                kind,
            },
        }
    }
}

/// `ObjectMeta` fields a client may send; k8s-openapi's own type ignores unknown keys.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

fn check_keys(value: &Value, at: &str, allowed: &[&str]) -> Result<(), ParseError> {
    let Some(map) = value.as_object() else {
        return Ok(());
    };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(ParseError::Field {
            doc: 0,
            field: if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            },
            message: "unknown field".to_owned(),
        }),
    }
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests;
