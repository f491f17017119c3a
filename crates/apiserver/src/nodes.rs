//! Reaching a node's agent, as the real server reaches the kubelet: `pods/log` is read
//! from `https://{node InternalIP}:{kubeletEndpoint port}/containerLogs/{ns}/{pod}/{container}`.
//! Like Kubernetes without `--kubelet-certificate-authority`, the agent's certificate is
//! not verified; the server presents its proxy identity as the client.

use axum::body::Body;
use axum::http::{Request, Response, header};
use serde_json::Value;

use crate::aggregation::{dial, tls_config};
use crate::{ApiError, AppState};

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
