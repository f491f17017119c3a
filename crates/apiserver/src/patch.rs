//! PATCH bodies: JSON merge patch, JSON patch, strategic merge (built-in kinds only) and
//! server-side apply.
//!
//! Strategic merge patches are applied as merge patches: lists are replaced instead of
//! merged by key. Server-side apply merges the applied configuration into the live object
//! the same way and does not track field managers: `managedFields` stays empty and there
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
        Kind::Merge | Kind::Strategic | Kind::Apply => json_patch::merge(&mut target, patch),
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
