//! What the server does to an object's body on the way in and out.
//!
//! In: the kind and apiVersion must match the URL; kubevirt kinds parse strictly (an
//! unknown field is a 400 naming it), convert to the storage version and validate (a 422
//! with field causes); the server sets `uid`, `creationTimestamp`, `generation` and the
//! namespace. Out: `resourceVersion` is the revision that wrote the object, and
//! `apiVersion` the version the client asked for.

use serde_json::{Value, json};

use crate::registry::Admission;
use crate::{ApiError, Resource};

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn name_of(body: &Value) -> String {
    body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Whether `name` is a DNS-1123 subdomain (or, with `label`, a DNS-1123 label), the
/// rule object names follow.
fn name_problem(name: &str, label: bool) -> Option<String> {
    let max = if label { 63 } else { 253 };
    if name.is_empty() {
        return Some("name or generateName is required".to_owned());
    }
    if name.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    let ok = if label {
        ok_part(name)
    } else {
        name.split('.').all(ok_part)
    };
    (!ok).then(|| {
        format!(
            "a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character",
            if label { "label" } else { "subdomain" },
            if label { "" } else { " or '.'" }
        )
    })
}

/// RBAC objects' names (`system:basic-user`) need only be usable in a path.
fn path_segment_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name or generateName is required".to_owned());
    }
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ['/', '%']
        .into_iter()
        .find(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
}

/// Checks and converts a body for `resource`; returns it in the storage version.
fn admit(
    resource: &Resource,
    version: &str,
    mut body: Value,
    strict: bool,
    validate: bool,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let kind = body["kind"].as_str().unwrap_or_default();
    if kind != resource.kind || api_version != resource.api_version(version) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) and kind ({kind}) do not match the request ({}, {})",
            resource.api_version(version),
            resource.kind
        )));
    }
    if !body["metadata"].is_object() && !body["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if resource.builtin && resource.plural == "customresourcedefinitions" {
        check_crd(&body)?;
    }
    if resource.admission == Admission::Generic {
        if let Some(schema) = resource.schema.as_deref().filter(|_| !resource.builtin) {
            let report = crate::schema::check(&mut body, schema);
            if strict && let Some(field) = report.unknown.first() {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: unknown field \"{field}\""
                )));
            }
            if !report.causes.is_empty() {
                return Err(ApiError::invalid(
                    &resource.kind,
                    &name_of(&body),
                    report.causes,
                ));
            }
        }
        return Ok(body);
    }
    let name = name_of(&body);
    let object = api::parse::parse_object(body).map_err(|e| match &e {
        api::parse::ParseError::Field { field, message, .. } if message == "unknown field" => {
            ApiError::bad_request(format!("strict decoding error: unknown field \"{field}\""))
        }
        // A value outside an enumeration is invalid (422), as upstream's validation says.
        api::parse::ParseError::Field { field, message, .. }
            if message.starts_with("unknown variant") =>
        {
            let supported = message.split("expected ").nth(1).unwrap_or_default();
            ApiError::unprocessable(
                &resource.kind,
                &name,
                field,
                &format!("Unsupported value: supported values: {supported}"),
            )
        }
        api::parse::ParseError::Field { field, message, .. } => {
            ApiError::bad_request(format!("{field}: {message}"))
        }
        other => ApiError::bad_request(other.to_string()),
    })?;
    let causes = if validate {
        api::validate::validate(&object)
    } else {
        Vec::new()
    };
    let stored = object_json(&object)?;
    if !causes.is_empty() {
        let causes = causes
            .into_iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        return Err(ApiError::invalid(&resource.kind, &name_of(&stored), causes));
    }
    Ok(stored)
}

fn object_json(object: &api::Object) -> Result<Value, ApiError> {
    use api::Object as O;
    let v = match object {
        O::VirtualMachine(o) => serde_json::to_value(o),
        O::VirtualMachineInstance(o) => serde_json::to_value(o),
        O::VirtualMachineInstanceReplicaSet(o) => serde_json::to_value(o),
        O::VirtualMachineInstancePreset(o) => serde_json::to_value(o),
        O::VirtualMachineInstanceMigration(o) => serde_json::to_value(o),
        O::VirtualMachineInstancetype(o) => serde_json::to_value(o),
        O::VirtualMachineClusterInstancetype(o) => serde_json::to_value(o),
        O::VirtualMachinePreference(o) => serde_json::to_value(o),
        O::VirtualMachineClusterPreference(o) => serde_json::to_value(o),
        O::MigrationPolicy(o) => serde_json::to_value(o),
        O::KubeVirt(o) => serde_json::to_value(o),
    };
    v.map_err(|e| ApiError::internal(e.to_string()))
}

/// A new object: admitted, named, stamped.
pub fn for_create(
    resource: &Resource,
    version: &str,
    namespace: Option<&str>,
    body: Value,
    strict: bool,
) -> Result<Value, ApiError> {
    let mut obj = admit(resource, version, body, strict, false)?;
    let meta = &mut obj["metadata"];
    if let (Some(ns), Some(given)) = (namespace, meta["namespace"].as_str())
        && ns != given
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
        )));
    }
    if meta["name"].as_str().unwrap_or_default().is_empty() {
        let prefix = meta["generateName"].as_str().unwrap_or_default().to_owned();
        let suffix: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(5)
            .collect();
        meta["name"] = json!(format!("{prefix}{suffix}"));
    }
    let name = meta["name"].as_str().unwrap_or_default();
    let problem = if resource.group == crate::rbac::GROUP {
        path_segment_problem(name)
    } else {
        name_problem(name, resource.plural == "namespaces")
    };
    if let Some(problem) = problem {
        return Err(ApiError::unprocessable(
            &resource.kind,
            name,
            "metadata.name",
            &problem,
        ));
    }
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    if let Some(m) = meta.as_object_mut() {
        for server_set in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            m.remove(server_set);
        }
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
    }
    if resource.status_subresource
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    if resource.builtin && resource.plural == "namespaces" {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
        obj["status"] = json!({"phase": "Active"});
    }
    if resource.builtin && resource.plural == "customresourcedefinitions" {
        obj["status"] = crd_status(&obj);
    }
    Ok(obj)
}

/// A CRD is served as soon as it is stored: its names are accepted and it is established.
fn crd_status(crd: &Value) -> Value {
    let now = now();
    let condition = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let stored: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| &v["name"])
        .collect();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

/// The rules a CustomResourceDefinition must follow to be served.
fn check_crd(body: &Value) -> Result<(), ApiError> {
    let crd = crate::registry::read_crd(&to_bytes(body))
        .map_err(|e| ApiError::bad_request(format!("invalid CustomResourceDefinition: {e}")))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let spec = &crd.spec;
    let mut causes = Vec::new();
    let mut problem = |field: &str, message: String| {
        causes.push(json!({"reason": "FieldValueInvalid", "field": field, "message": message}));
    };
    let expected = format!("{}.{}", spec.names.plural, spec.group);
    if name != expected {
        problem(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group ({expected})"
            ),
        );
    }
    if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
        problem(
            "spec.scope",
            format!(
                "Unsupported value: {:?}: supported values: \"Cluster\", \"Namespaced\"",
                spec.scope
            ),
        );
    }
    if spec.versions.is_empty() {
        problem(
            "spec.versions",
            "Required value: must have at least one version".to_owned(),
        );
    }
    if spec.versions.iter().filter(|v| v.storage).count() != 1 {
        problem(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        );
    }
    if spec.names.kind.is_empty() {
        problem("spec.names.kind", "Required value".to_owned());
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("CustomResourceDefinition", &name, causes))
    }
}

/// An object as the mutating webhooks left it, checked again and validated: as in
/// Kubernetes, validation sees what mutation made (a preset may supply the memory a VMI
/// template leaves out).
pub fn recheck(resource: &Resource, obj: Value, strict: bool) -> Result<Value, ApiError> {
    admit(resource, resource.storage_version(), obj, strict, true)
}

/// Which part of an object an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main endpoint: everything but the status, when there is a status subresource.
    Main,
    /// The `/status` subresource: the status only.
    Status,
}

/// A replacement for `old`: admitted; identity, timestamps and deletion state kept;
/// `generation` bumped when the spec changed. With a status subresource the main endpoint
/// keeps the old status and `/status` keeps everything else.
pub fn for_update(
    resource: &Resource,
    version: &str,
    old: &Value,
    body: Value,
    part: Part,
    strict: bool,
) -> Result<Value, ApiError> {
    let mut obj = admit(resource, version, body, strict, false)?;
    if part == Part::Status {
        let status = obj.get("status").cloned();
        obj = old.clone();
        obj["apiVersion"] = json!(resource.api_version(resource.storage_version()));
        match status {
            Some(s) => obj["status"] = s,
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        return Ok(obj);
    }
    let old_meta = &old["metadata"];
    let meta = &mut obj["metadata"];
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(field) {
            Some(v) => meta[field] = v.clone(),
            None => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if old_meta.get("deletionTimestamp").is_some() {
        let before = old_meta["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let added = meta["finalizers"]
            .as_array()
            .is_some_and(|now| now.iter().any(|f| !before.contains(f)));
        if added {
            return Err(ApiError::unprocessable(
                &resource.kind,
                old_meta["name"].as_str().unwrap_or_default(),
                "metadata.finalizers",
                "Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    let generation = old_meta["generation"].as_i64().unwrap_or(1);
    let changed = obj.get("spec") != old.get("spec");
    obj["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    if resource.status_subresource {
        match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if resource.builtin && resource.plural == "namespaces" {
        obj["spec"] = old["spec"].clone();
    }
    Ok(obj)
}

/// Whether an object is being deleted and nothing holds it any more.
/// (A namespace is released by the server's namespace cleanup instead, and a pod in its
/// grace period by its node.)
pub fn releasable(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
        && obj["kind"] != "Namespace"
        && obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
}

/// The object as a client sees it: its revision and the asked-for version (still the
/// stored one for a resource with a conversion webhook: [`crate::convert`] does that).
pub fn outgoing(
    resource: &Resource,
    version: &str,
    kv: &store::KeyValue,
) -> Result<Value, ApiError> {
    let mut obj: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    if resource.conversion.is_none() {
        obj["apiVersion"] = json!(resource.api_version(version));
    }
    obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
    Ok(obj)
}

pub fn to_bytes(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}
