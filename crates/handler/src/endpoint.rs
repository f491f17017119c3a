//! The endpoint virt-api forwards VMI operations to (docs/control-plane.md): pause,
//! unpause, soft reboot, reset, guest OS info, and the console and VNC streams as
//! websockets. HTTPS; the TLS configuration (given by whoever starts the handler) must
//! require a client certificate from the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use api::v1::VirtualMachineInstance;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::{SinkExt, StreamExt};
use kube::Api;
use launcher_proto::{Request, Response as Answer, Status};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

use crate::Ctx;

/// Where and how the endpoint listens.
#[derive(Debug)]
pub struct EndpointConfig {
    pub listener: TcpListener,
    /// The URL virt-api should use (`https://IP:PORT`), published on the node.
    pub advertise: String,
    pub tls: Arc<rustls::ServerConfig>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({"message": message.into()}))).into_response()
}

/// The routes, over the handler's context.
fn router(ctx: Arc<Ctx>) -> Router {
    let base = "/v1/namespaces/{ns}/virtualmachineinstances/{name}";
    Router::new()
        .route(&format!("{base}/guestosinfo"), get(agent_query))
        .route(&format!("{base}/userlist"), get(agent_query))
        .route(&format!("{base}/filesystemlist"), get(agent_query))
        .route(&format!("{base}/vnc/screenshot"), get(screenshot))
        .route(&format!("{base}/portforward/{{port}}"), get(port_forward))
        .route(
            &format!("{base}/portforward/{{port}}/{{proto}}"),
            get(port_forward),
        )
        .route(&format!("{base}/{{op}}"), put(operation).get(stream))
        .with_state(ctx)
}

/// The run directory and control socket of the launcher of a VMI that runs on this
/// node, or the error to answer.
async fn launcher_of(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<(launcher_proto::RunDir, launcher_proto::RunPath), Response> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), ns);
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("VMI {ns}/{name} not found")))?;
    let on_node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&ctx.node);
    if !on_node {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("VMI {ns}/{name} does not run on node {}", ctx.node),
        ));
    }
    let dir = ctx.run_dir(&vmi).ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            format!(
                "VMI {ns}/{name} has no launcher pod on node {} yet",
                ctx.node
            ),
        )
    })?;
    let socket = dir.socket(vmi.metadata.uid.as_deref().unwrap_or_default());
    Ok((dir, socket))
}

async fn ask(ctx: &Ctx, ns: &str, name: &str, request: Request) -> Result<Answer, Response> {
    let (_, socket) = launcher_of(ctx, ns, name).await?;
    ask_at(&socket, ns, name, request).await
}

async fn ask_at(
    socket: &launcher_proto::RunPath,
    ns: &str,
    name: &str,
    request: Request,
) -> Result<Answer, Response> {
    launcher_proto::call(socket, &request, Duration::from_secs(30))
        .await
        .map_err(|e| {
            error(
                StatusCode::CONFLICT,
                format!("VMI {ns}/{name} is not running: {e}"),
            )
        })
}

fn refusal(answer: Answer) -> Response {
    match answer {
        Answer::Error { message, conflict } => error(
            if conflict {
                StatusCode::CONFLICT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            message,
        ),
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected launcher answer {other:?}"),
        ),
    }
}

async fn operation(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name, op)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let request = match op.as_str() {
        "pause" => Request::Pause,
        "unpause" => Request::Unpause,
        "reset" => Request::Reset,
        "softreboot" => Request::SoftReboot,
        "unfreeze" => Request::Unfreeze,
        "freeze" => match unfreeze_timeout(&body) {
            Ok(seconds) => Request::Freeze {
                unfreeze_timeout_seconds: seconds,
            },
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        _ => return error(StatusCode::NOT_FOUND, format!("no operation {op}")),
    };
    match ask(&ctx, &ns, &name, request).await {
        Ok(Answer::Ok) => axum::Json(json!({})).into_response(),
        Ok(other) => refusal(other),
        Err(r) => r,
    }
}

/// The seconds of a freeze request's `unfreezeTimeout` (a Go duration: `5m0s`).
fn unfreeze_timeout(body: &[u8]) -> Result<u64, String> {
    let body: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("failed to unmarshal unfreeze timeout: {e}"))?;
    let text = body["unfreezeTimeout"]
        .as_str()
        .ok_or("Unfreeze timeout in freeze request is not set")?;
    let seconds = go_duration_seconds(text)
        .ok_or_else(|| format!("unfreezeTimeout {text:?} is not a duration like 5m0s"))?;
    Ok(seconds.ceil() as u64)
}

/// Seconds of a Go duration string: decimal numbers with units ns, us, µs, ms, s, m, h
/// (`1h2m3.5s`, `300ms`, `0`); None for anything else or a negative one.
pub(crate) fn go_duration_seconds(text: &str) -> Option<f64> {
    if text == "0" {
        return Some(0.0);
    }
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// `portforward/{port}[/{protocol}]`: a websocket to the guest's TCP port. Any number
/// of these may be open at once.
async fn port_forward(
    State(ctx): State<Arc<Ctx>>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let param = |key: &str| params.get(key).cloned().unwrap_or_default();
    let (ns, name) = (param("ns"), param("name"));
    let Ok(port) = param("port").parse::<u16>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad port {:?}", param("port")),
        );
    };
    if !matches!(param("proto").as_str(), "" | "tcp") {
        return error(StatusCode::BAD_REQUEST, "only TCP ports can be forwarded");
    }
    let address = match ask(&ctx, &ns, &name, Request::PortForward { port }).await {
        Ok(Answer::Value { value }) => value["address"].as_str().unwrap_or_default().to_owned(),
        Ok(other) => return refusal(other),
        Err(r) => return r,
    };
    upgrade
        .protocols(["plain.kubevirt.io"])
        .on_upgrade(move |mut ws| async move {
            match tokio::net::TcpStream::connect(&address).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    // Never replaced: the sender goes away at once.
                    let (_, never) = tokio::sync::watch::channel(0);
                    pipe(ws, tcp, never, 0, "port").await;
                }
                Err(e) => close(&mut ws, format!("port {port} of VMI {ns}/{name}: {e}")).await,
            }
        })
}

/// The display as a PNG image.
async fn screenshot(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match ask(&ctx, &ns, &name, Request::Screenshot).await {
        Ok(Answer::Value { value }) => {
            let png = value["png"].as_str().unwrap_or_default();
            match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png) {
                Ok(bytes) => {
                    ([(axum::http::header::CONTENT_TYPE, "image/png")], bytes).into_response()
                }
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the launcher's screenshot: {e}"),
                ),
            }
        }
        Ok(other) => refusal(other),
        Err(r) => r,
    }
}

/// `guestosinfo`, `userlist` or `filesystemlist`: the guest agent's answer as JSON.
async fn agent_query(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let request = match uri.path().rsplit('/').next() {
        Some("userlist") => Request::UserList,
        Some("filesystemlist") => Request::FilesystemList,
        _ => Request::GuestOsInfo,
    };
    match ask(&ctx, &ns, &name, request).await {
        Ok(Answer::Value { value }) => axum::Json(value).into_response(),
        Ok(other) => refusal(other),
        Err(r) => r,
    }
}

async fn stream_socket(
    ctx: Arc<Ctx>,
    ns: String,
    name: String,
    upgrade: WebSocketUpgrade,
    pick: fn(&Status) -> Option<std::path::PathBuf>,
    what: &'static str,
) -> Response {
    let (dir, socket) = match launcher_of(&ctx, &ns, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let status = match ask_at(&socket, &ns, &name, Request::Status).await {
        Ok(Answer::Status(s)) => s,
        Ok(other) => return refusal(other),
        Err(r) => return r,
    };
    let Some(reported) = pick(&status) else {
        return error(
            StatusCode::CONFLICT,
            format!("VMI {ns}/{name} has no {what} yet"),
        );
    };
    // The launcher names the socket as it sees it; only a path plainly inside its run
    // directory is followed, and that without links.
    let Some(path) = dir.reported(&reported) else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!(
                "the launcher of VMI {ns}/{name} reported its {what} outside its run directory"
            ),
        );
    };
    // This connection takes over from any other on the same socket: QEMU serves one
    // client at a time, and a second one would wait, silent, until the first left.
    let slot = ctx.streams.slot(&path);
    let mine = slot.next_turn();
    upgrade
        .protocols(["plain.kubevirt.io"])
        .on_upgrade(move |mut ws| async move {
            let _turn = slot.turn.lock().await;
            if *slot.latest.borrow() != mine {
                // An even newer connection came while this one waited.
                close(
                    &mut ws,
                    format!("another connection to the {what} took over"),
                )
                .await;
                return;
            }
            match path.connect().await {
                Ok(stream) => pipe(ws, stream, slot.latest.subscribe(), mine, what).await,
                Err(e) => close(&mut ws, format!("{what} of VMI {ns}/{name}: {e}")).await,
            }
        })
}

/// The console and VNC connections of this node, one slot per socket.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    by_socket: std::sync::Mutex<std::collections::HashMap<launcher_proto::RunPath, Arc<Slot>>>,
}

/// One socket's connections: the newest asks the one before to end, then waits its turn.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Held by the connection using the socket.
    turn: tokio::sync::Mutex<()>,
    /// The number of the newest connection.
    latest: tokio::sync::watch::Sender<u64>,
}

impl Slot {
    /// Takes the next number; the connection holding the socket sees it and ends.
    fn next_turn(&self) -> u64 {
        let mut mine = 0;
        self.latest.send_modify(|n| {
            *n += 1;
            mine = *n;
        });
        mine
    }
}

impl Streams {
    fn slot(&self, socket: &launcher_proto::RunPath) -> Arc<Slot> {
        let mut slots = self.by_socket.lock().unwrap_or_else(|p| p.into_inner());
        // Forget sockets nobody uses (their VMIs are gone): a connection holds its slot.
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        slots
            .entry(socket.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    turn: tokio::sync::Mutex::new(()),
                    latest: tokio::sync::watch::Sender::new(0),
                })
            })
            .clone()
    }
}

/// Ends the websocket with a normal close carrying `reason`.
async fn close(ws: &mut WebSocket, reason: String) {
    let frame = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: reason.into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// `console` (the serial console) or `vnc` (the VNC server) as a websocket.
async fn stream(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name, which)): Path<(String, String, String)>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (pick, what): (fn(&Status) -> Option<std::path::PathBuf>, &str) = match which.as_str() {
        "console" => (|s| s.serial_socket.clone(), "serial console"),
        "vnc" => (|s| s.vnc_socket.clone(), "VNC server"),
        _ => return error(StatusCode::NOT_FOUND, format!("no stream {which}")),
    };
    stream_socket(ctx, ns, name, upgrade, pick, what).await
}

/// Copies bytes between the websocket (binary messages) and the unix socket until either
/// side closes, or until a newer connection (`latest` past `mine`) takes over.
async fn pipe<S>(
    ws: WebSocket,
    stream: S,
    mut latest: tokio::sync::watch::Receiver<u64>,
    mine: u64,
    what: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upstream = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes().to_vec().into(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let replaced = async { latest.wait_for(|n| *n != mine).await.is_ok() };
    let taken_over = tokio::select! {
        _ = upstream => false,
        _ = downstream => false,
        true = replaced => true,
    };
    if taken_over && let Ok(mut ws) = ws_rx.reunite(ws_tx) {
        close(
            &mut ws,
            format!("another connection to the {what} took over"),
        )
        .await;
    }
}

/// Serves the endpoint until the task is aborted.
pub(crate) async fn serve(config: EndpointConfig, ctx: Arc<Ctx>) {
    let app = router(ctx);
    let acceptor = tokio_rustls::TlsAcceptor::from(config.tls);
    loop {
        let Ok((tcp, peer)) = config.listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    other => {
                        debug!(%peer, ?other, "handshake");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let _ = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_read_as_seconds() {
        for (text, seconds) in [
            ("5m0s", Some(300.0)),
            ("1h2m3.5s", Some(3723.5)),
            ("300ms", Some(0.3)),
            ("0", Some(0.0)),
            ("0s", Some(0.0)),
            ("", None),
            ("5", None),
            ("-1s", None),
            ("5 minutes", None),
        ] {
            assert_eq!(go_duration_seconds(text), seconds, "{text}");
        }
        assert_eq!(unfreeze_timeout(br#"{"unfreezeTimeout": "1m30s"}"#), Ok(90));
        assert_eq!(
            unfreeze_timeout(b"{}"),
            Err("Unfreeze timeout in freeze request is not set".to_owned())
        );
    }
}
