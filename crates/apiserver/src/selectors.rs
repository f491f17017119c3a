//! Label and field selectors, as Kubernetes spells them in `labelSelector` and
//! `fieldSelector`.
//!
//! Labels: `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
//! `key notin (a,b)`, comma-separated, all of which must hold. Fields: `metadata.name`,
//! `metadata.namespace` and the fields the resource declares (`spec.nodeName` on pods,
//! `involvedObject.uid` on events ...) with `=`, `==` or `!=`; any other field is refused,
//! as the real server refuses fields a resource does not index. A missing field reads as
//! the empty string.

use serde_json::Value;

use crate::{ApiError, Resource};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector over an object's labels and fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    pub fn parse(
        r: &Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mut s = Self::default();
        if let Some(text) = labels.filter(|t| !t.trim().is_empty()) {
            for part in split_top_level(text) {
                s.labels.push(parse_label(part.trim())?);
            }
        }
        if let Some(text) = fields.filter(|t| !t.trim().is_empty()) {
            for part in text.split(',') {
                let part = part.trim();
                let Some((key, equal, value)) = split_equality(part) else {
                    return Err(ApiError::bad_request(format!(
                        "invalid field selector: {part:?}"
                    )));
                };
                let known = matches!(key.trim(), "metadata.name" | "metadata.namespace")
                    || r.fields.iter().any(|f| f == key.trim());
                if !known {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {}",
                        key.trim()
                    )));
                }
                s.fields
                    .push((key.trim().to_owned(), equal, value.trim().to_owned()));
            }
        }
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        let fields_ok = self.fields.iter().all(|(key, equal, value)| {
            let actual = key
                .split('.')
                .try_fold(obj, |at, part| at.get(part))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == *value) == *equal
        });
        labels_ok && fields_ok
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `key!=value`, `key==value` or `key=value` as (key, is equality, value).
fn split_equality(part: &str) -> Option<(&str, bool, &str)> {
    if let Some((k, v)) = part.split_once("!=") {
        Some((k, false, v))
    } else if let Some((k, v)) = part.split_once("==") {
        Some((k, true, v))
    } else {
        part.split_once('=').map(|(k, v)| (k, true, v))
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_label(part: &str) -> Result<Requirement, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {part:?}"));
    let set = |key: &str, rest: &str, word: &str| -> Result<(String, Vec<String>), ApiError> {
        let list = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        let values: Vec<String> = list.split(',').map(|v| v.trim().to_owned()).collect();
        if !valid_key(key) || values.iter().any(|v| v.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "invalid {word} requirement: {part:?}"
            )));
        }
        Ok((key.to_owned(), values))
    };
    if let Some(key) = part.strip_prefix('!') {
        return if valid_key(key.trim()) {
            Ok(Requirement::NotExists(key.trim().to_owned()))
        } else {
            Err(bad())
        };
    }
    if let Some((k, rest)) = part.split_once(" notin ") {
        let (k, v) = set(k.trim(), rest, "notin")?;
        return Ok(Requirement::NotIn(k, v));
    }
    if let Some((k, rest)) = part.split_once(" in ") {
        let (k, v) = set(k.trim(), rest, "in")?;
        return Ok(Requirement::In(k, v));
    }
    let Some((key, equal, value)) = split_equality(part) else {
        return if valid_key(part) {
            Ok(Requirement::Exists(part.to_owned()))
        } else {
            Err(bad())
        };
    };
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) || value.contains([' ', '(', ')', '=', '!']) {
        return Err(bad());
    }
    Ok(if equal {
        Requirement::Equals(key.into(), value.into())
    } else {
        Requirement::NotEquals(key.into(), value.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj() -> Value {
        json!({"metadata": {"name": "vm-a", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
               "involvedObject": {"kind": "VirtualMachine", "uid": "u1"}})
    }

    fn events() -> Resource {
        crate::registry::builtins()
            .into_iter()
            .find(|r| r.plural == "events")
            .unwrap()
    }

    #[test]
    fn label_requirements() {
        let m = |l: &str| {
            Selector::parse(&events(), Some(l), None)
                .unwrap()
                .matches(&obj())
        };
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(m("app in (db, web)"));
        assert!(m("app notin (db),!missing"));
        assert!(!m("app!=web"));
        assert!(!m("tier in (back)"));
        assert!(!m("missing"));
    }

    #[test]
    fn field_requirements() {
        let m = |f: &str| {
            Selector::parse(&events(), None, Some(f))
                .unwrap()
                .matches(&obj())
        };
        assert!(m("metadata.name=vm-a"));
        assert!(m("metadata.namespace==default,metadata.name!=vm-b"));
        assert!(!m("metadata.name=vm-b"));
        assert!(m(
            "involvedObject.kind=VirtualMachine,involvedObject.uid=u1"
        ));
        assert!(m("involvedObject.namespace="));
        assert!(!m("involvedObject.uid!=u1"));
    }

    #[test]
    fn bad_selectors_are_400s() {
        for (l, f) in [
            (Some("app in web"), None),
            (Some("a b"), None),
            (None, Some("spec.x=1")),
            (None, Some("metadata.name")),
        ] {
            let e = Selector::parse(&events(), l, f).unwrap_err();
            assert_eq!(e.code, 400, "{l:?} {f:?}");
        }
    }
}
