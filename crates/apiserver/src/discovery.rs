//! `/version`, health, and legacy discovery (`/apis`, `/apis/{group}/{version}`).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::{ApiError, AppState};

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

pub async fn groups(State(state): State<AppState>) -> Json<Value> {
    let groups: Vec<Value> = state
        .registry
        .groups()
        .into_iter()
        .map(|(group, versions)| {
            let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
            json!({
                "name": group,
                "versions": versions.iter().map(gv).collect::<Vec<_>>(),
                "preferredVersion": gv(&versions[0]),
            })
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub async fn resources(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let mut list = Vec::new();
    for r in state
        .registry
        .resources()
        .iter()
        .filter(|r| r.group == group && r.versions.contains(&version))
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status_subresource {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    if list.is_empty() {
        return Err(ApiError::not_found(
            "groupversion",
            &format!("{group}/{version}"),
        ));
    }
    Ok(Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": list}),
    ))
}

/// The core group: served so clients' discovery works; its kinds come with the rest of
/// the embedded server.
pub async fn core_versions() -> Json<Value> {
    Json(
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
    )
}

pub async fn core_resources() -> Json<Value> {
    Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": []}),
    )
}
