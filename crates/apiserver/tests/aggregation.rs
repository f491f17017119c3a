//! API aggregation: an APIService hands a group-version to a test server over HTTPS; the
//! caller's identity goes along, upgrades pass through, and discovery shows the group.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// The aggregated server: a discovery document, `whoami`, and an echoing upgrade.
fn backend() -> Router {
    let discovery = || async {
        axum::Json(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "echo.example.com/v1",
            "resources": [
                {"name": "things", "singularName": "thing", "namespaced": true, "kind": "Thing", "verbs": ["get", "list"]},
                {"name": "things/console", "singularName": "", "namespaced": true, "kind": "Thing", "verbs": ["get"]},
            ]}),
        )
    };
    let whoami = |headers: HeaderMap| async move {
        let all = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        axum::Json(
            json!({"user": all("x-remote-user"), "groups": all("x-remote-group"),
                          "authorization": headers.contains_key("authorization")}),
        )
    };
    let console = |mut req: axum::extract::Request| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [("connection", "upgrade"), ("upgrade", "echo")],
        )
            .into_response()
    };
    Router::new()
        .route("/apis/echo.example.com/v1", axum::routing::get(discovery))
        .route(
            "/apis/echo.example.com/v1/namespaces/default/things/x/whoami",
            axum::routing::get(whoami),
        )
        .route(
            "/apis/echo.example.com/v1/namespaces/default/things/x/console",
            axum::routing::get(console),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiservice_proxies_its_group_version() {
    let (port, ca) = common::https(backend(), &["echo.default.svc"]).await;
    let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, apiserver::router(state)).await });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let post = |path: &str, body: serde_json::Value| {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
            .unwrap();
        client.request_text(req)
    };
    post(
        "/api/v1/namespaces/default/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": port}]}}),
    )
    .await
    .unwrap();
    post("/apis/apiregistration.k8s.io/v1/apiservices", json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1.echo.example.com"},
        "spec": {"group": "echo.example.com", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "service": {"namespace": "default", "name": "echo", "port": port},
                 "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca)}})).await.unwrap();

    let who: serde_json::Value = serde_json::from_str(
        &client
            .request_text(
                http::Request::get("/apis/echo.example.com/v1/namespaces/default/things/x/whoami")
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        who,
        json!({"user": ["system:unsecured"], "groups": ["system:masters", "system:authenticated"], "authorization": false})
    );

    // Discovery, aggregated and legacy, shows the group (what kubectl api-resources reads).
    let discovery = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let group = discovery
        .groups()
        .find(|g| g.name() == "echo.example.com")
        .expect("the aggregated group");
    assert!(
        group
            .recommended_resources()
            .iter()
            .any(|(r, _)| r.plural == "things")
    );
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "echo.example.com"));

    // An upgrade passes bytes both ways.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /apis/echo.example.com/v1/namespaces/default/things/x/console HTTP/1.1\r\nHost: k\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // A backend that is gone: 503 ServiceUnavailable, and the rest of the server serves.
    post(
        "/api/v1/namespaces/default/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gone"},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": 9}]}}),
    )
    .await
    .unwrap();
    post("/apis/apiregistration.k8s.io/v1/apiservices", json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1.gone.example.com"},
        "spec": {"group": "gone.example.com", "version": "v1", "service": {"namespace": "default", "name": "gone", "port": 9}}})).await.unwrap();
    // (Raw HTTP: kube-rs would retry a 503 with backoff for minutes.)
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /apis/gone.example.com/v1/things HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""reason":"ServiceUnavailable""#),
        "{answer}"
    );
    client.list_api_groups().await.unwrap();
}
