//! `virtctl vnc NAME --web`: the VMI's display in a browser, with no VNC viewer installed.
//!
//! A local HTTP server on 127.0.0.1 serves a page with an RFB client (`web/vnc.html`,
//! written for this project) at `/`, and at `/websockify` a websocket carrying the VMI's
//! VNC stream in binary messages, through the API server with the kubeconfig's
//! credentials. The websocket speaks what noVNC expects too (binary frames, the `binary`
//! subprotocol when offered), so noVNC's own page can be pointed at it. Every websocket
//! opens its own VNC connection: the newest takes the display over, as with the console.
//!
//! Other web pages the user has open must not drive the VM: everything is served under a
//! random path (`/<token>/`, 128 bits, new at each start) that only the printed URL
//! names, and a websocket whose `Origin` is not this server's own page is refused (a
//! page elsewhere cannot read the token, and DNS rebinding brings a foreign origin).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{Ctx, Error};

const PAGE: &str = include_str!("web/vnc.html");
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Serves until interrupted.
pub async fn serve(ctx: &Ctx, name: &str, port: u16) -> Result<(), Error> {
    // A VMI that is not there is a one-line error now, not a broken page later.
    let vmis: kube::Api<api::v1::VirtualMachineInstance> =
        kube::Api::namespaced(ctx.client.clone(), &ctx.namespace);
    vmis.get(name).await.map_err(Error::kube(format!(
        "getting VirtualMachineInstance {name}"
    )))?;
    let (listener, port) = crate::stream::listen_locally(port).await?;
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| Error::Usage(format!("no random token: {e}")))?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let url = format!("http://127.0.0.1:{port}/{token}/");
    println!("{}", json!({"port": port, "url": url}));
    eprintln!("Open {url} in a browser to see {name}'s display (Ctrl-C ends).");
    loop {
        let (tcp, _) = listener
            .accept()
            .await
            .map_err(Error::io("accepting a browser"))?;
        let (ctx, name, token) = (ctx.clone(), name.to_owned(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(&ctx, &name, &token, port, tcp).await {
                eprintln!("{e}");
            }
        });
    }
}

/// The request head, left unread in the socket (the websocket handshake reads it again).
async fn peek_head(tcp: &TcpStream) -> Result<String, Error> {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tcp
            .peek(&mut buf)
            .await
            .map_err(Error::io("reading a request"))?;
        if n == 0 || buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Usage("a browser sent an incomplete request".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of header `name` in a request head, if present.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether a websocket may open: browsers always send `Origin`, and only this server's
/// own page has this one. Clients that are not browsers send none and hold the token.
fn origin_allowed(origin: Option<&str>, port: u16) -> bool {
    match origin {
        None => true,
        Some(o) => [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ]
        .iter()
        .any(|own| o.eq_ignore_ascii_case(own)),
    }
}

async fn connection(
    ctx: &Ctx,
    name: &str,
    token: &str,
    port: u16,
    mut tcp: TcpStream,
) -> Result<(), Error> {
    let head = peek_head(&tcp).await?;
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // Everything lives under the secret path; the query string does not count.
    let path = path.split('?').next().unwrap_or_default();
    let inner = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(token))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let origin_ok = origin_allowed(header(&head, "origin"), port);
    if inner == Some("/websockify") && upgrade && origin_ok {
        return bridge(ctx, name, tcp).await;
    }
    // Consume the head, then answer: the page, 403 for a foreign page's websocket, or 404.
    let mut sink = vec![0u8; head.len()];
    tcp.read_exact(&mut sink)
        .await
        .map_err(Error::io("reading a request"))?;
    let (status, kind, body) = match (method, inner) {
        ("GET", Some("/websockify")) if !origin_ok => (
            "403 Forbidden",
            "text/plain",
            "websocket refused: it comes from another web page\n",
        ),
        ("GET", Some("/" | "/index.html" | "/vnc.html")) => {
            ("200 OK", "text/html; charset=utf-8", PAGE)
        }
        _ => ("404 Not Found", "text/plain", "not found\n"),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(answer.as_bytes())
        .await
        .map_err(Error::io("answering a browser"))?;
    let _ = tcp.shutdown().await;
    Ok(())
}

/// Answers the `binary` subprotocol when the browser offers it (noVNC does).
#[allow(clippy::result_large_err)] // the handshake's callback type
fn choose_protocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "binary");
    if offered {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    }
    Ok(response)
}

/// A browser's websocket joined to the VMI's VNC websocket.
async fn bridge(ctx: &Ctx, name: &str, tcp: TcpStream) -> Result<(), Error> {
    let browser = tokio_tungstenite::accept_hdr_async(tcp, choose_protocol)
        .await
        .map_err(|e| Error::WebSocket(e.to_string()))?;
    let vmi = crate::stream::open_vnc(ctx, name).await?;
    let (mut to_browser, mut from_browser) = browser.split();
    let (mut to_vmi, mut from_vmi) = vmi.split();
    let up = async {
        while let Some(Ok(m)) = from_browser.next().await {
            match m {
                Message::Binary(b) if to_vmi.send(Message::Binary(b.clone())).await.is_err() => {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_vmi.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(m)) = from_vmi.next().await {
            match m {
                Message::Binary(b)
                    if to_browser.send(Message::Binary(b.clone())).await.is_err() =>
                {
                    break;
                }
                Message::Close(frame) => {
                    let _ = to_browser.send(Message::Close(frame)).await;
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_servers_page_may_open_the_websocket() {
        assert!(origin_allowed(None, 5900));
        assert!(origin_allowed(Some("http://127.0.0.1:5900"), 5900));
        assert!(origin_allowed(Some("http://localhost:5900"), 5900));
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:5901",
            "http://evil.example:5900",
            "null",
        ] {
            assert!(!origin_allowed(Some(foreign), 5900), "{foreign}");
        }
        let head = "GET /t/websockify HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\r\n";
        assert_eq!(header(head, "origin"), Some("http://evil.example"));
        assert_eq!(header(head, "upgrade"), None);
    }
}
