//! The serial console and the VNC proxy: bytes between this terminal (or a local TCP
//! port) and a websocket through the API server.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Conn, Error, Socket};

/// The byte of ^] (group separator): leaves the console, as upstream.
const ESCAPE: u8 = 0x1d;
/// A ping this often keeps idle consoles open through proxies and load balancers.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The terminal in raw mode while this lives (when stdin is a terminal).
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enable() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// How a console session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The user typed ^].
    Left,
    /// The other side closed: the VMI stopped, or another console took over.
    Closed,
}

/// Attaches this terminal to the serial console at `path` until ^] or the far end closes.
pub async fn console(conn: &Conn, path: &str, name: &str) -> Result<(), Error> {
    let socket = conn.websocket(path).await?;
    eprintln!("Successfully connected to {name} console. The escape sequence is ^]");
    let end = {
        let _raw = RawTerminal::enable();
        attach(socket).await?
    };
    if end == End::Closed {
        eprintln!(
            "\nThe console of {name} closed (the VMI stopped, or another console connected)."
        );
    } else {
        eprintln!();
    }
    Ok(())
}

async fn attach(socket: Socket) -> Result<End, Error> {
    let (mut tx, mut rx) = socket.split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 4096];
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let lost = |e: &dyn std::fmt::Display| Error::Connection(format!("console: {e}"));
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(text))) => {
                    stdout.write_all(text.as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Close(_))) | None => return Ok(End::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(&e)),
            },
            n = stdin.read(&mut buf), if stdin_open => match n {
                // Without input (a pipe that ended, /dev/null) the console still shows output.
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let typed = &buf[..n];
                    let (send, leave) = match typed.iter().position(|b| *b == ESCAPE) {
                        Some(at) => (&typed[..at], true),
                        None => (typed, false),
                    };
                    if !send.is_empty() {
                        tx.send(Message::Binary(send.to_vec().into())).await.map_err(|e| lost(&e))?;
                    }
                    if leave {
                        let _ = tx.send(Message::Close(None)).await;
                        return Ok(End::Left);
                    }
                }
            },
            _ = keepalive.tick() => {
                tx.send(Message::Ping(Vec::new().into())).await.map_err(|e| lost(&e))?;
            }
        }
    }
}

/// Serves the VNC stream at `path` on a local port: one viewer connection, then exits.
pub async fn vnc_proxy(
    conn: &Conn,
    path: &str,
    name: &str,
    port: u16,
    proxy_only: bool,
) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    if proxy_only {
        println!("{{\"port\":{port}}}");
    } else {
        eprintln!("The screen of {name} is on 127.0.0.1:{port}: point a VNC viewer there.");
    }
    let (tcp, _) = listener.accept().await?;
    let socket = conn.websocket(path).await?;
    let (mut tx, mut rx) = socket.split();
    let (mut rd, mut wr) = tcp.into_split();
    let lost = |e: &dyn std::fmt::Display| Error::Connection(format!("vnc: {e}"));
    let mut buf = vec![0u8; 64 * 1024];
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => wr.write_all(&bytes).await?,
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(&e)),
            },
            n = rd.read(&mut buf) => match n? {
                0 => {
                    let _ = tx.send(Message::Close(None)).await;
                    return Ok(());
                }
                n => tx.send(Message::Binary(buf[..n].to_vec().into())).await.map_err(|e| lost(&e))?,
            },
            _ = keepalive.tick() => {
                tx.send(Message::Ping(Vec::new().into())).await.map_err(|e| lost(&e))?;
            }
        }
    }
}
