//! Structural-schema checks for custom resources of CRDs the server learns at run time:
//! types, `required`, `enum`, `minimum`/`maximum`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `pattern`-free string checks, `nullable`, defaults, and
//! pruning of fields the schema does not know (an error instead with strict field
//! validation, which kubectl asks for). `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-int-or-string` are honoured. `metadata`, `apiVersion` and `kind` at the
//! root are the server's business and skipped.

use serde_json::{Value, json};

/// What a check found: unknown fields (by path) and invalid values (as 422 causes).
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub unknown: Vec<String>,
    pub causes: Vec<Value>,
}

/// Applies defaults, prunes (or reports) unknown fields and validates `obj` against
/// `schema` (an `openAPIV3Schema`).
pub fn check(obj: &mut Value, schema: &Value) -> Report {
    let mut report = Report::default();
    if let (Some(map), Some(props)) = (obj.as_object_mut(), schema["properties"].as_object()) {
        for (key, sub) in props {
            if matches!(key.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            default_into(map, key, sub);
            if let Some(v) = map.get_mut(key) {
                walk(v, sub, key, &mut report);
            }
        }
        let known =
            |k: &str| props.contains_key(k) || matches!(k, "metadata" | "apiVersion" | "kind");
        if !preserves(schema) {
            let unknown: Vec<String> = map.keys().filter(|k| !known(k)).cloned().collect();
            for k in unknown {
                map.remove(&k);
                report.unknown.push(k);
            }
        }
        required(map, schema, "", &mut report);
    }
    report
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == json!(true)
}

fn default_into(map: &mut serde_json::Map<String, Value>, key: &str, sub: &Value) {
    if !map.contains_key(key)
        && let Some(d) = sub.get("default")
    {
        map.insert(key.to_owned(), d.clone());
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn cause(report: &mut Report, reason: &str, path: &str, message: String) {
    report
        .causes
        .push(json!({"reason": reason, "message": message, "field": path}));
}

fn required(map: &serde_json::Map<String, Value>, schema: &Value, path: &str, report: &mut Report) {
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(k) = r.as_str()
            && !map.contains_key(k)
        {
            cause(
                report,
                "FieldValueRequired",
                &join(path, k),
                "Required value".to_owned(),
            );
        }
    }
}

fn type_matches(v: &Value, ty: &str, schema: &Value) -> bool {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return v.is_string() || v.is_i64() || v.is_u64();
    }
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, report: &mut Report) {
    if v.is_null() {
        if schema["nullable"] != json!(true) && schema.get("type").is_some() {
            cause(
                report,
                "FieldValueTypeInvalid",
                path,
                "Invalid value: \"null\": must not be null".to_owned(),
            );
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str()
        && !type_matches(v, ty, schema)
    {
        cause(
            report,
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: {v}: {path} in body must be of type {ty}"),
        );
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        cause(
            report,
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        );
    }
    let bound = |k: &str| schema[k].as_f64();
    if let Some(n) = v.as_f64() {
        if bound("minimum").is_some_and(|m| n < m) {
            cause(
                report,
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {v}: {path} in body should be greater than or equal to {}",
                    schema["minimum"]
                ),
            );
        }
        if bound("maximum").is_some_and(|m| n > m) {
            cause(
                report,
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {v}: {path} in body should be less than or equal to {}",
                    schema["maximum"]
                ),
            );
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as f64;
        if bound("minLength").is_some_and(|m| len < m) {
            cause(
                report,
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {v}: {path} in body should be at least {} chars long",
                    schema["minLength"]
                ),
            );
        }
        if bound("maxLength").is_some_and(|m| len > m) {
            cause(
                report,
                "FieldValueTooLong",
                path,
                format!(
                    "Too long: {path} may not be longer than {}",
                    schema["maxLength"]
                ),
            );
        }
    }
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            if let Some(props) = props {
                for (key, sub) in props {
                    default_into(map, key, sub);
                    if let Some(child) = map.get_mut(key) {
                        walk(child, sub, &join(path, key), report);
                    }
                }
            }
            let additional = &schema["additionalProperties"];
            if additional.is_object() {
                for (key, child) in map.iter_mut() {
                    if props.is_none_or(|p| !p.contains_key(key)) {
                        walk(child, additional, &join(path, key), report);
                    }
                }
            } else if !preserves(schema) && *additional != json!(true) {
                let unknown: Vec<String> = map
                    .keys()
                    .filter(|k| props.is_none_or(|p| !p.contains_key(*k)))
                    .cloned()
                    .collect();
                for k in unknown {
                    map.remove(&k);
                    report.unknown.push(join(path, &k));
                }
            }
            required(map, schema, path, report);
        }
        Value::Array(items) => {
            let n = items.len() as f64;
            if bound("minItems").is_some_and(|m| n < m) {
                cause(
                    report,
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {path} in body should have at least {} items",
                        schema["minItems"]
                    ),
                );
            }
            if bound("maxItems").is_some_and(|m| n > m) {
                cause(
                    report,
                    "FieldValueTooMany",
                    path,
                    format!(
                        "Too many: {path} must have at most {} items",
                        schema["maxItems"]
                    ),
                );
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, &schema["items"], &format!("{path}[{i}]"), report);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true},
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        }})
    }

    #[test]
    fn defaults_prune_and_validate_with_field_paths() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"size": 3, "bogus": 1, "extra": {"anything": [1]}, "port": "http"}, "top": true});
        let report = check(&mut obj, &schema());
        assert_eq!(report.causes, Vec::<Value>::new());
        let mut unknown = report.unknown.clone();
        unknown.sort();
        assert_eq!(unknown, ["spec.bogus", "top"]);
        assert_eq!(obj["spec"]["mode"], "slow");
        assert_eq!(obj["spec"]["extra"], json!({"anything": [1]}));
        assert!(obj.get("top").is_none() && obj["metadata"]["name"] == "a");

        let mut bad = json!({"spec": {"size": 11, "mode": "warp", "tags": ["a", "b", 3]}});
        let mut fields: Vec<String> = check(&mut bad, &schema())
            .causes
            .iter()
            .map(|c| c["field"].as_str().unwrap_or_default().to_owned())
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            ["spec.mode", "spec.size", "spec.tags", "spec.tags[2]"]
        );
        let mut missing = json!({"spec": {}});
        assert_eq!(
            check(&mut missing, &schema()).causes[0]["field"],
            "spec.size"
        );
    }
}
