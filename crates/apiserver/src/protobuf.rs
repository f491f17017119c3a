//! Protobuf request bodies, for the built-in kinds kubectl's typed clients send that way
//! (`kubectl create namespace|configmap|secret|serviceaccount`). kubectl v1.32 sends them
//! as `application/vnd.kubernetes.protobuf` and does not fall back to JSON, so the server
//! reads them: the `k8s\0` envelope, then the kind's message (k8s-pb's types), turned
//! into the JSON the rest of the server works on. Other kinds get 415.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
}

/// The JSON form of a protobuf body.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s envelope"))?;
    let unknown = Unknown::decode(inner).map_err(bad)?;
    let tm = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
    );
    let raw = unknown.raw.unwrap_or_default();
    let raw = raw.as_slice();
    use k8s_pb::api::core::v1 as core;
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw).map_err(bad)?;
            let mut o = with_meta(ns.metadata);
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                o.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            o
        }
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(raw).map_err(bad)?;
            let mut o = with_meta(cm.metadata);
            put_map(&mut o, "data", &cm.data);
            let binary: BTreeMap<String, String> = cm
                .binary_data
                .iter()
                .map(|(k, v)| (k.clone(), b64(v)))
                .collect();
            put_map(&mut o, "binaryData", &binary);
            if let Some(i) = cm.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "Secret") => {
            let s = core::Secret::decode(raw).map_err(bad)?;
            let mut o = with_meta(s.metadata);
            let data: BTreeMap<String, String> =
                s.data.iter().map(|(k, v)| (k.clone(), b64(v))).collect();
            put_map(&mut o, "data", &data);
            put_map(&mut o, "stringData", &s.string_data);
            if let Some(t) = s.r#type {
                o.insert("type".into(), json!(t));
            }
            if let Some(i) = s.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "ServiceAccount") => {
            let sa = core::ServiceAccount::decode(raw).map_err(bad)?;
            let mut o = with_meta(sa.metadata);
            if let Some(a) = sa.automount_service_account_token {
                o.insert("automountServiceAccountToken".into(), json!(a));
            }
            o
        }
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => {
            use k8s_pb::api::rbac::v1 as rbac;
            let (meta, rules, aggregation) = if kind == "Role" {
                let r = rbac::Role::decode(raw).map_err(bad)?;
                (r.metadata, r.rules, None)
            } else {
                let r = rbac::ClusterRole::decode(raw).map_err(bad)?;
                (r.metadata, r.rules, r.aggregation_rule)
            };
            let mut o = with_meta(meta);
            let rules: Vec<Value> = rules
                .into_iter()
                .map(|r| {
                    let mut rule = Map::new();
                    for (key, list) in [
                        ("verbs", r.verbs),
                        ("apiGroups", r.api_groups),
                        ("resources", r.resources),
                        ("resourceNames", r.resource_names),
                        ("nonResourceURLs", r.non_resource_ur_ls),
                    ] {
                        if key == "verbs" || !list.is_empty() {
                            rule.insert(key.into(), json!(list));
                        }
                    }
                    Value::Object(rule)
                })
                .collect();
            o.insert("rules".into(), json!(rules));
            if let Some(a) = aggregation {
                let selectors: Vec<Value> = a
                    .cluster_role_selectors
                    .into_iter()
                    .map(|s| json!({"matchLabels": s.match_labels}))
                    .collect();
                o.insert(
                    "aggregationRule".into(),
                    json!({"clusterRoleSelectors": selectors}),
                );
            }
            o
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => {
            use k8s_pb::api::rbac::v1 as rbac;
            let (meta, subjects, role_ref) = if kind == "RoleBinding" {
                let b = rbac::RoleBinding::decode(raw).map_err(bad)?;
                (b.metadata, b.subjects, b.role_ref)
            } else {
                let b = rbac::ClusterRoleBinding::decode(raw).map_err(bad)?;
                (b.metadata, b.subjects, b.role_ref)
            };
            let mut o = with_meta(meta);
            let subjects: Vec<Value> = subjects
                .into_iter()
                .map(|s| {
                    Value::Object(strings([
                        ("kind", s.kind),
                        ("apiGroup", s.api_group),
                        ("name", s.name),
                        ("namespace", s.namespace),
                    ]))
                })
                .collect();
            o.insert("subjects".into(), json!(subjects));
            let r = role_ref.unwrap_or_default();
            o.insert(
                "roleRef".into(),
                json!({"apiGroup": r.api_group.unwrap_or_default(),
                       "kind": r.kind.unwrap_or_default(), "name": r.name.unwrap_or_default()}),
            );
            o
        }
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview",
        ) => {
            use k8s_pb::api::authorization::v1 as authz;
            let (meta, resource, non_resource, user, groups) = if kind == "SelfSubjectAccessReview"
            {
                let r = authz::SelfSubjectAccessReview::decode(raw).map_err(bad)?;
                let spec = r.spec.unwrap_or_default();
                (
                    r.metadata,
                    spec.resource_attributes,
                    spec.non_resource_attributes,
                    None,
                    Vec::new(),
                )
            } else {
                let r = if kind == "SubjectAccessReview" {
                    authz::SubjectAccessReview::decode(raw).map_err(bad)?
                } else {
                    let l = authz::LocalSubjectAccessReview::decode(raw).map_err(bad)?;
                    authz::SubjectAccessReview {
                        metadata: l.metadata,
                        spec: l.spec,
                        status: l.status,
                    }
                };
                let spec = r.spec.unwrap_or_default();
                (
                    r.metadata,
                    spec.resource_attributes,
                    spec.non_resource_attributes,
                    spec.user,
                    spec.groups,
                )
            };
            let mut o = with_meta(meta);
            let mut spec = Map::new();
            if let Some(a) = resource {
                let attrs = strings([
                    ("namespace", a.namespace),
                    ("verb", a.verb),
                    ("group", a.group),
                    ("version", a.version),
                    ("resource", a.resource),
                    ("subresource", a.subresource),
                    ("name", a.name),
                ]);
                spec.insert("resourceAttributes".into(), Value::Object(attrs));
            }
            if let Some(a) = non_resource {
                spec.insert(
                    "nonResourceAttributes".into(),
                    json!({"path": a.path.unwrap_or_default(), "verb": a.verb.unwrap_or_default()}),
                );
            }
            if let Some(user) = user.filter(|u| !u.is_empty()) {
                spec.insert("user".into(), json!(user));
            }
            if !groups.is_empty() {
                spec.insert("groups".into(), json!(groups));
            }
            o.insert("spec".into(), Value::Object(spec));
            o
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf ({api_version}, {kind})"
            )));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn put_map(o: &mut Map<String, Value>, key: &str, map: &BTreeMap<String, String>) {
    if !map.is_empty() {
        o.insert(key.into(), json!(map));
    }
}

/// The non-empty strings of `fields` as a JSON object (proto2 leaves unset ones `None`).
fn strings<const N: usize>(fields: [(&str, Option<String>); N]) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), json!(v.filter(|v| !v.is_empty())?))))
        .collect()
}

/// An object with its metadata: the fields a client may set on create.
fn with_meta(meta: Option<ObjectMeta>) -> Map<String, Value> {
    let meta = meta.unwrap_or_default();
    let mut m = strings([
        ("name", meta.name),
        ("generateName", meta.generate_name),
        ("namespace", meta.namespace),
        ("resourceVersion", meta.resource_version),
    ]);
    put_map(&mut m, "labels", &meta.labels);
    put_map(&mut m, "annotations", &meta.annotations);
    if !meta.finalizers.is_empty() {
        m.insert("finalizers".into(), json!(meta.finalizers));
    }
    if !meta.owner_references.is_empty() {
        let refs: Vec<Value> = meta
            .owner_references
            .iter()
            .map(|r| {
                json!({
                    "apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid,
                    "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion,
                })
            })
            .collect();
        m.insert("ownerReferences".into(), json!(refs));
    }
    let mut o = Map::new();
    o.insert("metadata".into(), Value::Object(m));
    o
}

#[cfg(test)]
mod tests {
    use k8s_pb::api::core::v1::ConfigMap;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    #[test]
    fn a_configmap_reads_as_its_json() {
        let cm = ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("settings".into()),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
            data: [("a".to_owned(), "1".to_owned())].into(),
            binary_data: [("b".to_owned(), vec![0u8, 1])].into(),
            ..Default::default()
        };
        let obj = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings", "labels": {"app": "web"}},
                   "data": {"a": "1"}, "binaryData": {"b": "AAE="}})
        );
        assert_eq!(
            decode(&envelope("apps/v1", "Deployment", vec![]))
                .unwrap_err()
                .code,
            415
        );
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\xff\xff").unwrap_err().code, 400);
    }
}
