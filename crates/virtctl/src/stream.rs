//! The console and VNC streams.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nix::sys::termios;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Socket;
use crate::{Ctx, Error};

/// Keeps idle sessions alive through proxies and load balancers.
const PING_EVERY: Duration = Duration::from_secs(10);
/// `^]`, which leaves the console.
const ESCAPE: u8 = 0x1d;

/// The terminal's settings, restored when dropped.
struct RawMode(termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &self.0);
    }
}

/// Opens the VMI's stream, retrying while the VMI is missing or not running yet.
async fn open(ctx: &Ctx, name: &str, sub: &str, timeout: Duration) -> Result<Socket, Error> {
    let path = ctx.path("virtualmachineinstances", name, sub);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match ctx.websocket(&path).await {
            Ok(socket) => return Ok(socket),
            Err(Error::Api { code, .. })
                if matches!(code, 400 | 404 | 409 | 503)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `virtctl console NAME`.
pub async fn console(ctx: &Ctx, name: &str, timeout_minutes: u64) -> Result<(), Error> {
    let timeout = Duration::from_secs(timeout_minutes.saturating_mul(60));
    let socket = open(ctx, name, "console", timeout).await?;
    eprintln!("Successfully connected to {name} console. The escape sequence is ^]");
    let raw = RawMode::enter();
    let tty = raw.is_some();
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    // A thread, not a task: a blocked read of stdin must not hold the runtime.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || input_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let result = loop {
        tokio::select! {
            data = input.recv(), if stdin_open => match data {
                // Without a terminal, stdin ending does not end the session.
                None if tty => break Ok(()),
                None => stdin_open = false,
                Some(data) => {
                    let (data, leave) = match data.iter().position(|b| *b == ESCAPE) {
                        Some(at) if tty => (data[..at].to_vec(), true),
                        _ => (data, false),
                    };
                    if !data.is_empty() && tx.send(Message::Binary(data.into())).await.is_err() {
                        break Err(Error::WebSocket("the console closed".into()));
                    }
                    if leave {
                        break Ok(());
                    }
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(t))) => {
                    let _ = stdout.write_all(t.as_bytes());
                    let _ = stdout.flush();
                }
                // Closed with a reason: another console connection took over.
                Some(Ok(Message::Close(Some(frame)))) if !frame.reason.is_empty() => {
                    break Err(Error::WebSocket(frame.reason.to_string()));
                }
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Err(e)) => break Err(Error::WebSocket(e.to_string())),
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if tx.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break Err(Error::WebSocket("the console closed".into()));
                }
            }
        }
    };
    let _ = tx.send(Message::Close(None)).await;
    drop(raw);
    if tty {
        eprintln!();
    }
    result
}

/// A websocket to the VMI's VNC display.
pub(crate) async fn open_vnc(ctx: &Ctx, name: &str) -> Result<Socket, Error> {
    open(ctx, name, "vnc", Duration::ZERO).await
}

/// A listener on 127.0.0.1:`port` (0: any free one), and the port it got.
pub(crate) async fn listen_locally(port: u16) -> Result<(tokio::net::TcpListener, u16), Error> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(Error::io(format!("listening on 127.0.0.1:{port}")))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("the local port"))?
        .port();
    Ok((listener, port))
}

/// `virtctl vnc NAME`: a local port whose first connection is piped to the VMI's VNC.
pub async fn vnc(ctx: &Ctx, name: &str, proxy_only: bool, port: u16) -> Result<(), Error> {
    let (listener, port) = listen_locally(port).await?;
    println!("{}", json!({"port": port}));
    let _ = std::io::stdout().flush();
    if !proxy_only {
        eprintln!("Connect a VNC viewer to 127.0.0.1:{port} (this build starts none).");
    }
    // One viewer, as upstream: the proxy ends with it.
    let (tcp, _) = listener
        .accept()
        .await
        .map_err(Error::io("accepting a VNC client"))?;
    let socket = open(ctx, name, "vnc", Duration::ZERO).await?;
    let (rd, wr) = tcp.into_split();
    pipe_halves(rd, wr, socket).await;
    Ok(())
}

/// Copies bytes between a local reader and writer (a TCP connection's halves, or stdin
/// and stdout) and the websocket until either side ends.
pub(crate) async fn pipe_halves<R, W>(mut tcp_rx: R, mut tcp_tx: W, socket: Socket)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = tcp_rx.read(&mut buf).await {
            if n == 0
                || tx
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(b)
                    if tcp_tx.write_all(&b).await.is_err() || tcp_tx.flush().await.is_err() =>
                {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
