//! What the server does to an object's body on the way in and out.
//!
//! In: the kind and apiVersion must match the URL; kubevirt kinds parse strictly (an
//! unknown field is a 400 naming it), convert to the storage version and validate (a 422
//! with field causes); the server sets `uid`, `creationTimestamp`, `generation` and the
//! namespace. Out: `resourceVersion` is the revision that wrote the object, and
//! `apiVersion` the version the client asked for.

use serde_json::{Value, json};

use crate::{ApiError, Resource};

fn now() -> String {
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

/// Checks and converts a body for `resource`; returns it in the storage version.
fn admit(resource: &Resource, version: &str, body: Value) -> Result<Value, ApiError> {
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
    let object = api::parse::parse_object(body).map_err(|e| match e.field() {
        Some(field) if e.to_string().ends_with("unknown field") => {
            ApiError::bad_request(format!("strict decoding error: unknown field \"{field}\""))
        }
        _ => ApiError::bad_request(e.to_string()),
    })?;
    let causes = api::validate::validate(&object);
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
    };
    v.map_err(|e| ApiError::internal(e.to_string()))
}

/// A new object: admitted, named, stamped.
pub fn for_create(
    resource: &Resource,
    version: &str,
    namespace: Option<&str>,
    body: Value,
) -> Result<Value, ApiError> {
    let mut obj = admit(resource, version, body)?;
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
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
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
    Ok(obj)
}

/// A replacement for `old`: admitted; identity and timestamps kept; `generation` bumped
/// when the spec changed; with a status subresource, the status is not the client's to set.
pub fn for_update(
    resource: &Resource,
    version: &str,
    old: &Value,
    body: Value,
) -> Result<Value, ApiError> {
    let mut obj = admit(resource, version, body)?;
    for field in ["uid", "creationTimestamp", "namespace", "name"] {
        obj["metadata"][field] = old["metadata"][field].clone();
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
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
    Ok(obj)
}

/// The object as a client sees it: its revision and the asked-for version.
pub fn outgoing(
    resource: &Resource,
    version: &str,
    kv: &store::KeyValue,
) -> Result<Value, ApiError> {
    let mut obj: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    obj["apiVersion"] = json!(resource.api_version(version));
    obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
    Ok(obj)
}

pub fn to_bytes(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}
