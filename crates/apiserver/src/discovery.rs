//! `/version`, health, and discovery: legacy (`/api`, `/apis`, `/apis/{group}`,
//! `/api/v1`, `/apis/{group}/{version}`) and aggregated (`apidiscovery.k8s.io/v2`).

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::request::Request;
use crate::{ApiError, AppState, Resource, aggregation};

/// The Kubernetes version we speak (k8s-openapi's `v1_33`).
pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kubevirt-rs",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

pub async fn healthy() -> &'static str {
    "ok"
}

/// Answers a discovery request: legacy documents, or the aggregated v2 document when
/// the client asks for one (as kubectl does), which saves it one request per group.
pub async fn serve(
    state: &AppState,
    req: Request,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let aggregated = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"));
    match req {
        Request::CoreVersions if aggregated => Ok(aggregated_list(state, true).await),
        Request::Groups if aggregated => Ok(aggregated_list(state, false).await),
        Request::CoreVersions => Ok(Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }))
        .into_response()),
        Request::Groups => Ok(Json(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups(state).into_iter().map(|(g, v)| group_json(&g, &v)).collect::<Vec<_>>(),
        }))
        .into_response()),
        Request::Group(group) => {
            let (g, v) = groups(state)
                .into_iter()
                .find(|(g, _)| *g == group)
                .ok_or_else(|| ApiError::not_found_path(&format!("/apis/{group}")))?;
            let mut doc = group_json(&g, &v);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            Ok(Json(doc).into_response())
        }
        Request::Resources { group, version } => resources(state, &group, &version),
        Request::Target(_) => Err(ApiError::method_not_allowed()),
    }
}

/// The non-core groups with their versions, preferred first: served here or by an
/// aggregated server.
fn groups(state: &AppState) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = state
        .registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    for (group, version) in aggregation::aggregated(state) {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) if !versions.contains(&version) => versions.push(version),
            Some(_) => {}
            None => groups.push((group, vec![version])),
        }
    }
    groups
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    })
}

/// Every verb a stored resource answers (also the RBAC roles' read-write set).
pub(crate) const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resources(state: &AppState, group: &str, version: &str) -> Result<Response, ApiError> {
    let mut list = Vec::new();
    for r in state
        .registry
        .resources()
        .iter()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for (sub, kind, group, version) in subresources(r, version) {
            let verbs = if sub == "eviction" {
                json!(["create"])
            } else {
                json!(["get", "patch", "update"])
            };
            list.push(json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "group": group, "version": version, "kind": kind, "verbs": verbs}));
        }
    }
    if list.is_empty() {
        let path = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        return Err(ApiError::not_found_path(&path));
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(Json(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})).into_response())
}

/// A resource's subresources as (name, kind, group, version).
fn subresources(r: &Resource, version: &str) -> Vec<(&'static str, String, String, String)> {
    let mut subs = Vec::new();
    if r.status_subresource {
        subs.push((
            "status",
            r.kind.clone(),
            r.group.clone(),
            version.to_owned(),
        ));
    }
    if r.builtin && r.plural == "pods" {
        // What `kubectl drain` looks for before it evicts rather than deletes.
        subs.push((
            "eviction",
            "Eviction".to_owned(),
            "policy".to_owned(),
            "v1".to_owned(),
        ));
    }
    if r.scale.is_some() {
        subs.push((
            "scale",
            "Scale".to_owned(),
            "autoscaling".to_owned(),
            "v1".to_owned(),
        ));
    }
    subs
}

/// An aggregated server's APIResourceList as a v2 discovery version.
fn version_from_list(group: &str, version: &str, list: &Value) -> Value {
    let scope = |r: &Value| {
        if r["namespaced"] == json!(true) {
            "Namespaced"
        } else {
            "Cluster"
        }
    };
    let list_of = |r: &Value, key: &str| {
        r.get(key)
            .filter(|v| v.is_array())
            .cloned()
            .unwrap_or(json!([]))
    };
    let mut resources: Vec<Value> = Vec::new();
    for r in list["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        let kind = json!({"group": group, "version": version, "kind": r["kind"]});
        let Some((parent, sub)) = name.split_once('/') else {
            resources.push(json!({
                "resource": name, "responseKind": kind, "scope": scope(r),
                "singularResource": r["singularName"], "verbs": list_of(r, "verbs"),
                "shortNames": list_of(r, "shortNames"), "categories": list_of(r, "categories"), "subresources": [],
            }));
            continue;
        };
        let entry = json!({"subresource": sub, "responseKind": kind, "verbs": list_of(r, "verbs")});
        match resources.iter_mut().find(|p| p["resource"] == parent) {
            Some(p) => {
                if let Some(subs) = p["subresources"].as_array_mut() {
                    subs.push(entry);
                }
            }
            // A parent the server does not serve gets no responseKind, as kube-apiserver
            // does it: clients then list only its subresources, and their REST mappers
            // do not take `virtualmachines` for a resource of this group.
            None => resources.push(json!({
                "resource": parent, "scope": scope(r),
                "verbs": [], "subresources": [entry],
            })),
        }
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// `apidiscovery.k8s.io/v2` APIGroupDiscoveryList for `/api` (core) or `/apis`.
async fn aggregated_list(state: &AppState, core: bool) -> Response {
    let mut items = Vec::new();
    if !core {
        for (group, version) in aggregation::aggregated(state) {
            let doc = match aggregation::resources(state, &group, &version).await {
                Some(list) => version_from_list(&group, &version, &list),
                None => json!({"version": version, "resources": [], "freshness": "Stale"}),
            };
            items.push(json!({"metadata": {"name": group}, "versions": [doc]}));
        }
    }
    for (group, versions) in state.registry.groups() {
        if group.is_empty() != core {
            continue;
        }
        let versions: Vec<Value> =
            versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = state
                    .registry
                    .resources()
                    .iter()
                    .filter(|r| r.group == group && r.versions.contains(version))
                    .map(|r| {
                        let subs: Vec<Value> = subresources(r, version)
                            .into_iter()
                            .map(|(sub, kind, g, v)| json!({
                                "subresource": sub,
                                "responseKind": {"group": g, "version": v, "kind": kind},
                                "verbs": ["get", "patch", "update"],
                            }))
                            .collect();
                        json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": VERBS,
                            "shortNames": r.short_names,
                            "categories": r.categories,
                            "subresources": subs,
                        })
                    })
                    .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
        items.push(json!({"metadata": {"name": group}, "versions": versions}));
    }
    let doc = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )],
        Json(doc),
    )
        .into_response()
}
