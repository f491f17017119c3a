//! The VMI subresources, forwarded to the handler on the VMI's node (see
//! `docs/control-plane.md`, "Handler endpoint").
//!
//! 1. Read the VMI (404 when missing) and check its state against the operation (409,
//!    or 400 for a console of a VMI that is not running, as upstream answers).
//! 2. Read `status.nodeName`'s Node and its `kubevirt.io/handler-endpoint` annotation.
//! 3. Call `https://IP:PORT/v1/namespaces/{ns}/virtualmachineinstances/{name}/{op}`
//!    with our client certificate, verifying the handler's against the configured CA;
//!    an unreachable handler is a 503, its 404 and 409 pass through.
//! 4. Console and VNC: dial the handler's websocket first (so failures are still plain
//!    HTTP errors), then accept the client's (subprotocol `plain.kubevirt.io`, or
//!    `base64.binary.k8s.io` whose text frames carry base64) and pipe messages both ways
//!    until either side closes.

use std::sync::Arc;
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VmiPhase};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::error::get_opt;
use crate::{AppState, Caller, Config, StatusError};

/// The Node annotation naming a handler's endpoint.
pub const HANDLER_ENDPOINT_ANNOTATION: &str = "kubevirt.io/handler-endpoint";
/// The console and VNC subprotocols accepted from clients, preferred first.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";
pub const BASE64_PROTOCOL: &str = "base64.binary.k8s.io";

const VMI: &str = "virtualmachineinstance";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type HandlerSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Calls handlers with virt-api's client certificate.
#[derive(Clone)]
pub struct HandlerClient {
    /// The TLS configuration, or why there is none.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    http: Result<reqwest::Client, String>,
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(config.handler_ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("handler CA: {e}"))?)
            .map_err(|e| format!("handler CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no handler CA configured".into());
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(config.handler_client_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("handler client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(config.handler_client_key_pem.as_bytes())
        .map_err(|e| format!("handler client key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("handler client certificate: {e}"))?;
    // Websockets need HTTP/1.1.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

impl HandlerClient {
    pub fn new(config: &Config) -> Self {
        let tls = tls_config(config).map(Arc::new);
        let http = tls.clone().and_then(|tls| {
            reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())
        });
        if let Err(e) = &tls {
            tracing::warn!(error = %e, "handler TLS is not usable; VMI subresources will answer 503");
        }
        Self { tls, http }
    }
}

/// The VMI's handler endpoint, `https://IP:PORT`, once the VMI's state allows `op`.
async fn target(
    state: &AppState,
    namespace: &str,
    name: &str,
    op: &str,
) -> Result<(VirtualMachineInstance, String), StatusError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), namespace);
    let vmi = get_opt(&vmis, name)
        .await?
        .ok_or_else(|| StatusError::not_found(VMI, name))?;
    check(&vmi, op)?;
    let node_name = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or_else(|| StatusError::conflict(VMI, name, "VMI is not scheduled to a node"))?;
    let nodes: Api<Node> = Api::all(state.client.clone());
    let node = get_opt(&nodes, &node_name).await?.ok_or_else(|| {
        StatusError::unavailable(format!("the node {node_name:?} of the VMI does not exist"))
    })?;
    let endpoint = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HANDLER_ENDPOINT_ANNOTATION))
        .ok_or_else(|| {
            StatusError::unavailable(format!(
                "no handler endpoint on node {node_name:?} (annotation {HANDLER_ENDPOINT_ANNOTATION})"
            ))
        })?;
    Ok((vmi, endpoint.trim_end_matches('/').to_owned()))
}

fn condition(vmi: &VirtualMachineInstance, ty: &str) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ty && c.status == "True")
    })
}

/// Whether the VMI's state allows `op`, with upstream's answers when not.
pub fn check(vmi: &VirtualMachineInstance, op: &str) -> Result<(), StatusError> {
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let phase = vmi
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default();
    let conflict = |why: &str| Err(StatusError::conflict(VMI, name, why));
    let running = phase == VmiPhase::Running;
    let paused = condition(vmi, "Paused");
    match op {
        "console" | "vnc" => {
            let devices = &vmi.spec.domain.devices;
            let attached = match op {
                "console" => devices.autoattach_serial_console,
                _ => devices.autoattach_graphics_device,
            };
            if attached == Some(false) {
                let what = if op == "console" {
                    "No serial consoles are present."
                } else {
                    "No graphics devices are present."
                };
                return Err(StatusError::bad_request(what));
            }
            if phase == VmiPhase::Failed {
                return conflict("VMI is in failed status");
            }
            if !running {
                return Err(StatusError::bad_request("VMI is not running"));
            }
            Ok(())
        }
        _ if !running => conflict("VMI is not running"),
        "pause" if paused => conflict("VMI is already paused"),
        "unpause" if !paused => conflict("VMI is not paused"),
        "softreboot" if paused => conflict("VMI is paused"),
        "guestosinfo" | "userlist" | "filesystemlist"
            if vmi
                .status
                .as_ref()
                .is_none_or(|s| !s.conditions.iter().any(|c| c.type_ == "AgentConnected")) =>
        {
            conflict("VMI does not have guest agent connected")
        }
        _ => Ok(()),
    }
}

fn handler_url(endpoint: &str, namespace: &str, name: &str, op: &str) -> String {
    format!("{endpoint}/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{op}")
}

fn unreachable(endpoint: &str, e: impl std::fmt::Display) -> StatusError {
    StatusError::unavailable(format!("unable to reach the handler at {endpoint}: {e}"))
}

/// A handler's error answer as ours.
fn handler_error(name: &str, code: u16, body: &[u8]) -> StatusError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    match code {
        404 => StatusError::not_found(VMI, name),
        409 => StatusError::conflict(VMI, name, &message),
        _ => StatusError::internal(format!("the handler answered {code}: {message}")),
    }
}

impl HandlerClient {
    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        url: String,
        name: &str,
    ) -> Result<Bytes, StatusError> {
        self.call_with(method, endpoint, url, name, Bytes::new())
            .await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        url: String,
        name: &str,
        body: Bytes,
    ) -> Result<Bytes, StatusError> {
        let http = self.http.as_ref().map_err(|e| unreachable(endpoint, e))?;
        let resp = http
            .request(method, url)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(endpoint, e))?;
        let code = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| unreachable(endpoint, e))?;
        if (200..300).contains(&code) {
            Ok(body)
        } else {
            Err(handler_error(name, code, &body))
        }
    }

    async fn websocket(
        &self,
        endpoint: &str,
        url: &str,
        name: &str,
    ) -> Result<HandlerSocket, StatusError> {
        let tls = self.tls.as_ref().map_err(|e| unreachable(endpoint, e))?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| unreachable(endpoint, format!("bad endpoint: {e}")))?;
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| unreachable(endpoint, e))?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
        )
        .await
        .map_err(|_| unreachable(endpoint, "connection timed out"))?
        .map_err(|e| unreachable(endpoint, e))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(endpoint, e))?;
        let ws_url = url.replacen("https://", "wss://", 1);
        match tokio_tungstenite::client_async(ws_url, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(resp)) => Err(handler_error(
                name,
                resp.status().as_u16(),
                resp.body().as_deref().unwrap_or_default(),
            )),
            Err(e) => Err(unreachable(endpoint, e)),
        }
    }
}

/// `PUT .../virtualmachineinstances/{name}/{pause|unpause|softreboot|reset|freeze|unfreeze}`
/// (the body, `freeze`'s `unfreezeTimeout`, goes on to the handler).
pub async fn operation(
    State(state): State<AppState>,
    Path((namespace, name, op)): Path<(String, String, String)>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, StatusError> {
    if !matches!(
        op.as_str(),
        "pause" | "unpause" | "softreboot" | "reset" | "freeze" | "unfreeze"
    ) {
        return Err(StatusError::not_found_path(&format!(
            "virtualmachineinstances/{name}/{op}"
        )));
    }
    let dry_run = serde_json::from_slice::<Value>(&body).is_ok_and(|b| {
        b["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"))
    });
    let (_, endpoint) = target(&state, &namespace, &name, &op).await?;
    tracing::info!(user = %caller.user, %namespace, %name, %op, dry_run, "VMI operation");
    if !dry_run {
        let url = handler_url(&endpoint, &namespace, &name, &op);
        state
            .handlers
            .call_with(reqwest::Method::PUT, &endpoint, url, &name, body)
            .await?;
    }
    Ok(http::StatusCode::OK.into_response())
}

/// `GET .../virtualmachineinstances/{name}/{guestosinfo|userlist|filesystemlist|console|vnc}`.
pub async fn get_subresource(
    State(state): State<AppState>,
    Path((namespace, name, op)): Path<(String, String, String)>,
    caller: Caller,
    req: Request,
) -> Result<Response, StatusError> {
    match op.as_str() {
        "guestosinfo" | "userlist" | "filesystemlist" => {
            let (_, endpoint) = target(&state, &namespace, &name, &op).await?;
            let url = handler_url(&endpoint, &namespace, &name, &op);
            let body = state
                .handlers
                .call(reqwest::Method::GET, &endpoint, url, &name)
                .await?;
            Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        "console" | "vnc" => stream(&state, &namespace, &name, &op, &op, &caller, req).await,
        _ => Err(StatusError::not_found_path(&format!(
            "virtualmachineinstances/{name}/{op}"
        ))),
    }
}

/// A websocket to the handler's `path` for VMI `name`, after the checks for `op`.
async fn stream(
    state: &AppState,
    namespace: &str,
    name: &str,
    op: &str,
    path: &str,
    caller: &Caller,
    req: Request,
) -> Result<Response, StatusError> {
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| StatusError::bad_request(e.body_text()))?;
    let (_, endpoint) = target(state, namespace, name, op).await?;
    let url = handler_url(&endpoint, namespace, name, path);
    let handler = state.handlers.websocket(&endpoint, &url, name).await?;
    tracing::info!(user = %caller.user, %namespace, %name, %path, "streaming");
    let upgrade = upgrade.protocols([PLAIN_PROTOCOL, BASE64_PROTOCOL]);
    let base64 = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == BASE64_PROTOCOL.as_bytes());
    Ok(upgrade.on_upgrade(move |client| pipe(client, handler, base64)))
}

/// `GET .../{virtualmachineinstances|virtualmachines}/{name}/portforward/{port}[/{protocol}]`:
/// a websocket to a TCP port of the guest (a VM's is its VMI's, of the same name).
pub async fn port_forward(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    caller: Caller,
    req: Request,
) -> Result<Response, StatusError> {
    let param = |key: &str| params.get(key).cloned().unwrap_or_default();
    let (namespace, name, port) = (param("namespace"), param("name"), param("port"));
    if port.parse::<u16>().is_err() {
        return Err(StatusError::bad_request(format!("bad port {port:?}")));
    }
    let protocol = match param("protocol").as_str() {
        "" | "tcp" => "tcp",
        other => {
            return Err(StatusError::bad_request(format!(
                "protocol {other:?} cannot be forwarded: only tcp"
            )));
        }
    };
    let path = format!("portforward/{port}/{protocol}");
    stream(
        &state,
        &namespace,
        &name,
        "portforward",
        &path,
        &caller,
        req,
    )
    .await
}

/// `GET .../virtualmachineinstances/{name}/vnc/screenshot`: the display as PNG.
pub async fn screenshot(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    caller: Caller,
) -> Result<Response, StatusError> {
    let (_, endpoint) = target(&state, &namespace, &name, "vnc").await?;
    tracing::info!(user = %caller.user, %namespace, %name, "screenshot");
    let url = handler_url(&endpoint, &namespace, &name, "vnc/screenshot");
    let png = state
        .handlers
        .call(reqwest::Method::GET, &endpoint, url, &name)
        .await?;
    Ok(([(http::header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// Moves messages between the client and the handler until either closes.
async fn pipe(client: WebSocket, handler: HandlerSocket, base64: bool) {
    let engine = base64::engine::general_purpose::STANDARD;
    let (mut client_tx, mut client_rx) = client.split();
    let (mut handler_tx, mut handler_rx) = handler.split();
    let upstream = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let data: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) if base64 => match engine.decode(t.as_str()) {
                    Ok(b) => b.into(),
                    Err(_) => break,
                },
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if handler_tx
                .send(tungstenite::Message::Binary(data))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = handler_tx.close().await;
    };
    let downstream = async {
        while let Some(Ok(msg)) = handler_rx.next().await {
            let out = match msg {
                tungstenite::Message::Binary(b) if base64 => {
                    Message::Text(engine.encode(&b).into())
                }
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Text(t) => {
                    Message::Binary(Bytes::copy_from_slice(t.as_str().as_bytes()))
                }
                // The handler's reason (another connection took over) reaches the client.
                tungstenite::Message::Close(frame) => {
                    let frame = frame.map(|f| axum::extract::ws::CloseFrame {
                        code: u16::from(f.code),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = client_tx.send(Message::Close(frame)).await;
                    break;
                }
                _ => continue,
            };
            if client_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = client_tx.close().await;
    };
    // Either direction ending ends the session.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
