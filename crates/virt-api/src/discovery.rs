//! Discovery documents of the aggregated group, `version` and `healthz`.
//!
//! The resource list names the subresources the way upstream's does (`virtualmachines/start`,
//! ...), so clients can tell the API is there and kubectl's discovery stays complete.

use axum::Json;
use serde_json::{Value, json};

use crate::{GROUP, VERSION};

/// The subresources served, with the verb each answers.
const SUBRESOURCES: [(&str, &str); 18] = [
    ("virtualmachines/start", "update"),
    ("virtualmachines/migrate", "update"),
    ("virtualmachines/stop", "update"),
    ("virtualmachines/restart", "update"),
    ("virtualmachineinstances/pause", "update"),
    ("virtualmachineinstances/unpause", "update"),
    ("virtualmachineinstances/softreboot", "update"),
    ("virtualmachineinstances/reset", "update"),
    ("virtualmachineinstances/freeze", "update"),
    ("virtualmachineinstances/unfreeze", "update"),
    ("virtualmachineinstances/guestosinfo", "get"),
    ("virtualmachineinstances/userlist", "get"),
    ("virtualmachineinstances/filesystemlist", "get"),
    ("virtualmachineinstances/console", "get"),
    ("virtualmachineinstances/vnc", "get"),
    ("virtualmachineinstances/vnc/screenshot", "get"),
    ("virtualmachineinstances/portforward", "get"),
    ("virtualmachines/portforward", "get"),
];

fn group_document() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [gv.clone()], "preferredVersion": gv,
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

pub async fn group_list() -> Json<Value> {
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_document()]}))
}

pub async fn group() -> Json<Value> {
    Json(group_document())
}

pub async fn resource_list() -> Json<Value> {
    let resources: Vec<Value> = SUBRESOURCES
        .iter()
        .map(|(name, verb)| {
            json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": [verb]})
        })
        .collect();
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"), "resources": resources,
    }))
}

pub async fn version() -> Json<Value> {
    Json(crate::version_info())
}

pub async fn healthz() -> &'static str {
    "ok"
}
