//! `pods/{name}/binding`: a scheduler puts a pod on a node once; the pod then carries
//! `spec.nodeName` and the `PodScheduled` condition.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;

use common::send;

mod common;

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn a_pod_is_bound_once() {
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let app = apiserver::router(state);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let (code, created) = send(
        &app,
        "POST",
        PODS,
        "application/json",
        pod.to_string().into(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let binding = |node: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "uid": uid},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
        .to_string()
        .into_bytes()
    };
    let uid = created["metadata"]["uid"].as_str().unwrap();
    let url = format!("{PODS}/p/binding");

    let (code, body) = send(
        &app,
        "POST",
        &url,
        "application/json",
        binding("n1", "other"),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = send(&app, "POST", &url, "application/json", binding("", uid)).await;
    assert_eq!(code, 422, "{body}");

    let (code, body) = send(&app, "POST", &url, "application/json", binding("n1", uid)).await;
    assert_eq!((code, &body["status"]), (201, &json!("Success")), "{body}");
    let (_, pod) = send(&app, "GET", &format!("{PODS}/p"), "", vec![]).await;
    assert_eq!(pod["spec"]["nodeName"], "n1");
    let scheduled = &pod["status"]["conditions"][0];
    assert_eq!(
        (&scheduled["type"], &scheduled["status"]),
        (&json!("PodScheduled"), &json!("True"))
    );

    let (code, body) = send(&app, "POST", &url, "application/json", binding("n2", uid)).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already on node \"n1\""),
        "{body}"
    );
    let (code, _) = send(
        &app,
        "POST",
        &format!("{PODS}/absent/binding"),
        "application/json",
        binding("n1", ""),
    )
    .await;
    assert_eq!(code, 404);
}
