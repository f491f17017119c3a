//! PATCH bodies: JSON merge patch, JSON patch, strategic merge (built-in kinds only) and
//! server-side apply.
//!
//! Strategic merge patches merge lists of objects by their merge key where Kubernetes
//! declares one for the field (containers and volumes by `name`, container ports by
//! `containerPort`, service ports by `port`, mounts by `mountPath`, conditions by `type`
//! ...), honour `$patch: delete|replace`, `$retainKeys` and `$deleteFromPrimitiveList`,
//! and take `$setElementOrder` as ordering only; other lists are replaced, as in a merge
//! patch. Server-side apply merges the applied configuration into the live object as a
//! merge patch and does not track field managers: `managedFields` stays empty and there
//! are no apply conflicts.

use serde_json::Value;

use crate::ApiError;

/// The patch formats the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl Kind {
    /// The format a `Content-Type` names; 415 for anything else, and for strategic merge
    /// on a custom resource, as the real server answers.
    pub fn from_content_type(content_type: &str, builtin: bool) -> Result<Self, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" if builtin => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            _ => Err(ApiError::unsupported_patch(content_type)),
        }
    }
}

/// Parses the body of a patch of `kind`.
pub fn parse(kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = match kind {
        Kind::Apply => crate::body::decode_yaml_or_json(body)?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?,
    };
    match (kind, &parsed) {
        (Kind::Json, Value::Array(_))
        | (Kind::Merge | Kind::Strategic | Kind::Apply, Value::Object(_)) => Ok(parsed),
        (Kind::Json, _) => Err(ApiError::bad_request(
            "a JSON patch must be a list of operations",
        )),
        _ => Err(ApiError::bad_request("a merge patch must be a JSON object")),
    }
}

/// `target` with `patch` applied.
pub fn apply(kind: Kind, mut target: Value, patch: &Value) -> Result<Value, ApiError> {
    match kind {
        Kind::Merge | Kind::Apply => json_patch::merge(&mut target, patch),
        Kind::Strategic => strategic(&mut target, patch),
        Kind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut target, &ops).map_err(|e| {
                ApiError::unprocessable_patch(&format!("the JSON patch could not be applied: {e}"))
            })?;
        }
    }
    Ok(target)
}

/// The merge key of a list field, for lists whose elements carry it.
fn merge_key(field: &str, element: &Value) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports" if element.get("containerPort").is_some() => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    };
    element.get(key).is_some().then_some(key)
}

/// Applies a strategic merge patch object to `target`.
fn strategic(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        map.retain(|k, _| retain.iter().any(|r| r == k.as_str()));
    }
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(gone)) = (
                map.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(_) => strategic(map.entry(key.clone()).or_insert(Value::Null), value),
            Value::Array(items) => {
                let key_name = items.first().and_then(|first| merge_key(key, first));
                match (key_name, map.get_mut(key).and_then(Value::as_array_mut)) {
                    (Some(k), Some(existing)) => merge_list(existing, items, k),
                    _ => {
                        let kept: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .cloned()
                            .collect();
                        map.insert(key.clone(), Value::Array(kept));
                    }
                }
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let at = existing.iter().position(|e| e.get(key) == item.get(key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (Some(i), false) => strategic(&mut existing[i], item),
            (None, true) => {}
            (None, false) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn formats_follow_the_content_type() {
        assert_eq!(
            Kind::from_content_type("application/merge-patch+json; charset=utf-8", false),
            Ok(Kind::Merge)
        );
        let refused = Kind::from_content_type("application/strategic-merge-patch+json", false);
        assert_eq!(refused.map_err(|e| e.code), Err(415));
        assert_eq!(
            Kind::from_content_type("application/strategic-merge-patch+json", true),
            Ok(Kind::Strategic)
        );
        assert_eq!(
            Kind::from_content_type("text/plain", true).map_err(|e| e.code),
            Err(415)
        );
    }

    #[test]
    fn strategic_merge_merges_lists_by_their_keys() {
        let pod = json!({"spec": {"containers": [
            {"name": "main", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "side", "image": "b:1"}
        ], "volumes": [{"name": "v", "emptyDir": {}}]}, "metadata": {"finalizers": ["x", "y"]}});
        // What kubectl apply sends when only main's image changed.
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "main"}, {"name": "side"}],
            "containers": [{"name": "main", "image": "a:2"}, {"name": "side", "$patch": "delete"}],
            "volumes": [{"name": "w", "emptyDir": {}}],
        }, "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
        let out = apply(Kind::Strategic, pod, &patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "main", "image": "a:2", "ports": [{"containerPort": 80, "name": "http"}]}])
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        let replaced = apply(
            Kind::Strategic,
            out,
            &json!({"spec": {"$patch": "replace", "x": 1}}),
        )
        .unwrap();
        assert_eq!(replaced["spec"], json!({"x": 1}));
    }

    #[test]
    fn merge_and_json_patches() {
        let obj = json!({"spec": {"running": false, "template": {"a": 1}}, "metadata": {"labels": {"x": "1"}}});
        let merged = apply(
            Kind::Merge,
            obj.clone(),
            &json!({"spec": {"running": true}, "metadata": {"labels": {"x": null, "y": "2"}}}),
        )
        .unwrap();
        assert_eq!(
            merged["spec"],
            json!({"running": true, "template": {"a": 1}})
        );
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2"}));

        let ops = json!([{"op": "replace", "path": "/spec/running", "value": true}, {"op": "remove", "path": "/spec/template"}]);
        let patched = apply(Kind::Json, obj.clone(), &ops).unwrap();
        assert_eq!(patched["spec"], json!({"running": true}));

        let failing = json!([{"op": "test", "path": "/spec/running", "value": true}]);
        assert_eq!(
            apply(Kind::Json, obj, &failing).map_err(|e| e.code),
            Err(422)
        );
        assert_eq!(parse(Kind::Json, b"{}").map_err(|e| e.code), Err(400));
        assert_eq!(parse(Kind::Merge, b"[1").map_err(|e| e.code), Err(400));
    }
}
