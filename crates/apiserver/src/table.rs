//! `meta.k8s.io/v1` Tables: what `kubectl get` prints, from a CRD's printer columns.
//!
//! kubectl asks with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`. Each row's
//! cells follow the columns: NAME first, then `additionalPrinterColumns` evaluated with
//! the JSONPath subset CRDs use (`.a.b`, `.a[0].b`, `.a[?(@.k=='v')].b`). Date cells are
//! made human here ("5m", "3d"), as the real server's table convertor does; kubectl would
//! otherwise print the raw timestamp.

use serde_json::{Value, json};

use crate::Resource;

/// Whether the client asked for a Table.
pub fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

/// A Table of `objects` (already in the client's version).
pub fn build(
    r: &Resource,
    objects: &[Value],
    metadata: Value,
    include_object: Option<&str>,
    now: i64,
) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."
    })];
    for c in &r.columns {
        columns.push(json!({
            "name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            for c in &r.columns {
                let path = c["jsonPath"].as_str().unwrap_or_default();
                let value = if path == NODE_STATUS {
                    Some(node_status(obj))
                } else {
                    eval(obj, path)
                };
                cells.push(match (c["type"].as_str(), value) {
                    (Some("date"), Some(Value::String(t))) => json!(age(&t, now)),
                    (_, Some(v)) => v,
                    (_, None) => Value::Null,
                });
            }
            let object = match include_object.unwrap_or("Metadata") {
                "None" => Value::Null,
                "Object" => obj.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}

/// The column path of a Node's STATUS, which no JSONPath expresses: `Ready` or
/// `NotReady` from the Ready condition, `,SchedulingDisabled` when cordoned, as kubectl
/// prints it for kube-apiserver.
pub const NODE_STATUS: &str = "<node status>";

fn node_status(node: &Value) -> Value {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let mut status = if ready { "Ready" } else { "NotReady" }.to_owned();
    if node["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

/// Evaluates a printer-column JSONPath; the first match.
pub fn eval(obj: &Value, path: &str) -> Option<Value> {
    let mut current = vec![obj];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (name, tail) = r.split_at(end);
            current = current.into_iter().filter_map(|v| v.get(name)).collect();
            rest = tail;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let (inner, tail) = (&r[..end], &r[end + 1..]);
            current = if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, value) = filter.split_once("==")?;
                let value = value.trim().trim_matches(['\'', '"']);
                current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| item.get(field.trim()).and_then(Value::as_str) == Some(value))
                    .collect()
            } else if inner == "*" {
                current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .collect()
            } else {
                let i: usize = inner.parse().ok()?;
                current.into_iter().filter_map(|v| v.get(i)).collect()
            };
            rest = tail;
        } else {
            return None;
        }
    }
    current.first().map(|v| (*v).clone())
}

/// Kubernetes' human duration of the time since an RFC 3339 timestamp.
pub fn age(timestamp: &str, now: i64) -> String {
    let Ok(t) = timestamp.parse::<k8s_openapi::jiff::Timestamp>() else {
        return timestamp.to_owned();
    };
    human_duration(now - t.as_second())
}

pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let (y, dy) = (d / 365, d % 365);
        if dy == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dy}d")
        }
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_reads_like_kubectl() {
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Whatever"}]}});
        assert_eq!(node_status(&ready), "Ready");
        let cordoned = json!({"spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(node_status(&cordoned), "NotReady,SchedulingDisabled");
    }

    #[test]
    fn jsonpath_subset() {
        let vmi = json!({"status": {"phase": "Running", "interfaces": [{"ipAddress": "10.0.2.2"}],
            "conditions": [{"type": "Paused", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(&vmi, ".status.phase"), Some(json!("Running")));
        assert_eq!(
            eval(&vmi, ".status.interfaces[0].ipAddress"),
            Some(json!("10.0.2.2"))
        );
        assert_eq!(
            eval(&vmi, ".status.conditions[?(@.type=='Ready')].status"),
            Some(json!("True"))
        );
        assert_eq!(eval(&vmi, ".status.nodeName"), None);
        assert_eq!(eval(&vmi, ".status.interfaces[3].ipAddress"), None);
    }

    #[test]
    fn durations_read_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn only_table_first_accepts_ask_for_tables() {
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
        assert!(!wanted(None));
    }
}
