//! VMI subresources forwarded to a stand-in handler over mutual TLS, including the
//! console websocket end to end (client -> API server -> virt-api -> handler).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Request};
use axum::response::IntoResponse;
use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Cluster, SUB, code, start};

fn tls_client(c: &Cluster, cert: &str, key: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(c.pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

/// A PUT straight to virt-api as `alice` in `system:masters` (so virt-api's own
/// SubjectAccessReview allows her), with the given client certificate.
pub async fn put_direct(c: &Cluster, cert: &str, key: &str, path: &str) -> u16 {
    tls_client(c, cert, key)
        .put(format!("https://127.0.0.1:{}{SUB}/{path}", c.virt_api_port))
        .header("x-remote-user", "alice")
        .header("x-remote-group", "system:masters")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A review posted straight to a virt-api webhook; its answer.
pub async fn post_direct(c: &Cluster, path: &str, review: &Value) -> Value {
    let (cert, key) = &c.pki.front_proxy;
    let answer = tls_client(c, cert, key)
        .post(format!("https://127.0.0.1:{}{path}", c.virt_api_port))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
}

/// The status of a review posted straight to a virt-api webhook with `cert` (or none).
pub async fn post_status(c: &Cluster, cert: Option<&(String, String)>, path: &str) -> u16 {
    let client = match cert {
        Some((cert, key)) => tls_client(c, cert, key),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(c.pki.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .build()
                .unwrap()
        }
    };
    client
        .post(format!("https://127.0.0.1:{}{path}", c.virt_api_port))
        .header("content-type", "application/json")
        .body(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The stand-in handler: records calls, answers guestosinfo, echoes the console.
async fn fake_handler(c: &Cluster) -> (u16, Arc<Mutex<Vec<String>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let record = calls.clone();
    let base = "/v1/namespaces/{ns}/virtualmachineinstances/{name}";
    let put = move |Path((_, name, op)): Path<(String, String, String)>, req: Request| {
        let record = record.clone();
        async move {
            if req
                .extensions()
                .get::<virt_api::PeerCertificate>()
                .is_none()
            {
                return (http::StatusCode::UNAUTHORIZED, "no client certificate").into_response();
            }
            let body = axum::body::to_bytes(req.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            let mut call = format!("{op} {name}");
            if !body.is_empty() && body.as_ref() != b"{}" {
                call.push_str(&format!(" {}", String::from_utf8_lossy(&body)));
            }
            record.lock().unwrap().push(call);
            if name == "refused" {
                return (
                    http::StatusCode::CONFLICT,
                    axum::Json(json!({"message": "guest says no"})),
                )
                    .into_response();
            }
            axum::Json(json!({})).into_response()
        }
    };
    let info = || async {
        axum::Json(
            json!({"guestAgentVersion": "5.2.0", "hostname": "vm1", "os": {"name": "Debian GNU/Linux"}}),
        )
    };
    let console = |ws: WebSocketUpgrade| async move {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if let Message::Binary(b) = msg
                    && socket.send(Message::Binary(b)).await.is_err()
                {
                    break;
                }
            }
        })
    };
    let app = Router::new()
        .route(&format!("{base}/guestosinfo"), axum::routing::get(info))
        .route(&format!("{base}/console"), axum::routing::get(console))
        .route(&format!("{base}/{{op}}"), axum::routing::put(put));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cert_pem, key_pem) = c.pki.handler.clone();
    let tls = virt_api::ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem: c.pki.ca_pem.clone(),
    };
    tokio::spawn(virt_api::serve(listener, tls, app));
    (port, calls)
}

async fn node(c: &Cluster, name: &str, endpoint: &str) {
    let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kubevirt.io/handler-endpoint": endpoint}}}))
    .unwrap();
    Api::<Node>::all(c.client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_reach_the_handler_of_the_vmi_node() {
    let c = start().await;
    let (port, calls) = fake_handler(&c).await;
    node(&c, "node1", &format!("https://127.0.0.1:{port}")).await;
    c.create_vmi("vm1", "Running", "node1").await;
    c.create_vmi("refused", "Running", "node1").await;
    c.create_vmi("pending", "Scheduling", "node1").await;

    for op in ["pause", "softreboot", "reset"] {
        c.put(&format!("virtualmachineinstances/vm1/{op}"), json!({}))
            .await
            .unwrap();
    }
    // A freeze's body (its unfreeze timeout) reaches the handler.
    c.put(
        "virtualmachineinstances/vm1/freeze",
        json!({"unfreezeTimeout": "5m0s"}),
    )
    .await
    .unwrap();
    // Unpause of a VMI without the Paused condition: refused before the handler.
    let e = c
        .put("virtualmachineinstances/vm1/unpause", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(e.to_string().contains("VMI is not paused"), "{e}");
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "pause vm1",
            "softreboot vm1",
            "reset vm1",
            r#"freeze vm1 {"unfreezeTimeout":"5m0s"}"#
        ]
    );
    // The handler's own 409 passes through with its message.
    let e = c
        .put("virtualmachineinstances/refused/pause", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(e.to_string().contains("guest says no"), "{e}");
    let e = c
        .put("virtualmachineinstances/pending/pause", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(e.to_string().contains("VMI is not running"), "{e}");
    let e = c
        .put("virtualmachineinstances/ghost/pause", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 404);

    // Guest agent queries need the agent: refused before the handler without it.
    let e = c
        .get("virtualmachineinstances/vm1/guestosinfo")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(
        e.to_string()
            .contains("VMI does not have guest agent connected"),
        "{e}"
    );
    c.create_vmi_with(
        "agent",
        json!({"phase": "Running", "nodeName": "node1",
               "conditions": [{"type": "AgentConnected", "status": "True"}]}),
    )
    .await;
    let info: Value = serde_json::from_str(
        &c.get("virtualmachineinstances/agent/guestosinfo")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["guestAgentVersion"], "5.2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_websocket_is_piped_end_to_end() {
    let c = start().await;
    let (port, _) = fake_handler(&c).await;
    node(&c, "node1", &format!("https://127.0.0.1:{port}")).await;
    c.create_vmi("vm1", "Running", "node1").await;
    let url = format!("ws://{}{SUB}/virtualmachineinstances/vm1/console", c.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "plain.kubevirt.io".parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "plain.kubevirt.io"
    );
    for text in ["hello\r", "second line\r"] {
        ws.send(tungstenite::Message::Binary(
            text.as_bytes().to_vec().into(),
        ))
        .await
        .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_data().as_ref(), text.as_bytes());
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_handler_is_a_503() {
    let c = start().await;
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    node(&c, "node1", &format!("https://127.0.0.1:{port}")).await;
    c.create_vmi("vm1", "Running", "node1").await;
    let e = c
        .put("virtualmachineinstances/vm1/pause", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 503);
    assert!(e.to_string().contains("unable to reach the handler"), "{e}");
}
