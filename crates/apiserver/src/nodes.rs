//! Reaching a node's agent, as the real server reaches the kubelet: `pods/log` is read
//! from `https://{node InternalIP}:{kubeletEndpoint port}/containerLogs/{ns}/{pod}/{container}`.
//! Like Kubernetes without `--kubelet-certificate-authority`, the agent's certificate is
//! not verified; the server presents its proxy identity as the client.
//!
//! Also `pods/{name}/binding`, through which a scheduler puts a pod on a node.

use axum::body::Body;
use axum::http::{Request, Response, header};
use serde_json::{Value, json};

use crate::aggregation::{dial, tls_config};
use crate::objects::Part;
use crate::{ApiError, AppState, Resource, ops};

/// `POST pods/{name}/binding`: sets `spec.nodeName` to the Binding's target, once (409
/// when the pod is bound already, is being deleted, or is not the `metadata.uid` the
/// Binding names), then records the `PodScheduled` condition. Answers with a success
/// Status (201), as Kubernetes does.
pub async fn bind(
    state: &AppState,
    r: &Resource,
    version: &str,
    key: &str,
    binding: &Value,
    how: ops::Write,
) -> Result<Value, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let target = &binding["target"];
    if target["kind"]
        .as_str()
        .is_some_and(|k| !k.is_empty() && k != "Node")
    {
        return Err(ApiError::unprocessable(
            "Binding",
            name,
            "target.kind",
            "Unsupported value: only a Node can be a binding target",
        ));
    }
    let node = target["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::unprocessable("Binding", name, "target.name", "Required value"))?;
    let uid = binding["metadata"]["uid"].as_str();
    let refused = |why: String| {
        let mut e = ApiError::conflict("pods", name);
        e.message = format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}");
        e
    };
    ops::update(
        state,
        r,
        version,
        key,
        Part::Main,
        how.clone(),
        |mut pod| {
            if uid.is_some_and(|u| Some(u) != pod["metadata"]["uid"].as_str()) {
                return Err(refused(
                    "the pod's uid differs from the binding's".to_owned(),
                ));
            }
            if pod["metadata"].get("deletionTimestamp").is_some() {
                return Err(refused("the pod is being deleted".to_owned()));
            }
            if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(refused(format!("the pod is already on node \"{bound}\"")));
            }
            pod["spec"]["nodeName"] = json!(node);
            if let Some(meta) = pod["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            Ok(pod)
        },
    )
    .await?;
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    ops::update(state, r, version, key, Part::Status, how, |mut pod| {
        let mut conditions: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != "PodScheduled");
        conditions
            .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
        pod["status"]["conditions"] = Value::Array(conditions);
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        Ok(pod)
    })
    .await?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// The agent address of the node `name`: its InternalIP and kubelet port.
fn agent(state: &AppState, name: &str) -> Result<(String, u16), ApiError> {
    let node: Value = state
        .store
        .get(&format!("/core/nodes/{name}"))?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .ok_or_else(|| ApiError::not_found("nodes", name))?;
    let status = &node["status"];
    let ip = status["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| {
            ApiError::bad_request(format!("node \"{name}\" has no InternalIP address"))
        })?;
    let port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| ApiError::bad_request(format!("node \"{name}\" has no kubelet endpoint")))?;
    Ok((ip.to_owned(), port))
}

/// `GET pods/{name}/log`: the container's log from the pod's node, streamed.
pub async fn pod_log(
    state: &AppState,
    pod: &Value,
    query: &std::collections::HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match query.get("container") {
        Some(c) if containers.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {containers:?}"
            )));
        }
    };
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} is not scheduled to a node yet"))
        })?;
    let (ip, port) = agent(state, node)?;
    let unavailable = |why: String| {
        ApiError::service_unavailable(format!("the node agent of {node} is unavailable: {why}"))
    };
    let config = tls_config(state, None, true).map_err(unavailable)?;
    let mut send = dial(&ip, port, node, config).await.map_err(unavailable)?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let passed: Vec<String> = [
        "follow",
        "tailLines",
        "timestamps",
        "previous",
        "sinceSeconds",
        "limitBytes",
    ]
    .iter()
    .filter_map(|k| query.get(*k).map(|v| format!("{k}={v}")))
    .collect();
    if !passed.is_empty() {
        path = format!("{path}?{}", passed.join("&"));
    }
    let req = Request::get(path)
        .header(header::HOST, node)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    parts.headers.remove(header::TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, Body::new(body)))
}
