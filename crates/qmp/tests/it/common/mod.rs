//! A scripted fake QMP peer: a unix listener in a temp dir plus helpers that
//! assert the expected requests in order, each step under a short timeout.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(5);

/// The peer side of one accepted connection.
#[derive(Debug)]
pub struct Peer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// A listening fake peer running its script in a background task.
#[derive(Debug)]
pub struct Server {
    pub path: PathBuf,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Binds a socket and runs `script` on the first connection.
pub fn serve<F, Fut>(script: F) -> Server
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let task = tokio::spawn(async move {
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("client did not connect")
            .expect("accept");
        let (read, writer) = stream.into_split();
        script(Peer {
            reader: BufReader::new(read),
            writer,
        })
        .await;
    });
    Server {
        path,
        task,
        _dir: dir,
    }
}

impl Server {
    /// Waits for the script to finish, re-raising its assertion failures.
    pub async fn finish(self) {
        match tokio::time::timeout(STEP, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("fake peer script did not finish"),
        }
    }
}

impl Peer {
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("peer write");
    }

    /// Sends one JSON line terminated like QEMU does (`\r\n`).
    pub async fn send(&mut self, value: Value) {
        let mut line = serde_json::to_vec(&value).expect("encode");
        line.extend_from_slice(b"\r\n");
        self.send_raw(&line).await;
    }

    pub async fn greet(&mut self) {
        self.send(json!({"QMP": {
            "version": {"qemu": {"micro": 1, "minor": 2, "major": 9}, "package": "v9.2.1"},
            "capabilities": ["oob"]
        }}))
        .await;
    }

    /// Reads the next request; panics on EOF, bad JSON or timeout.
    pub async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP, self.reader.read_line(&mut line))
            .await
            .expect("timed out waiting for a request")
            .expect("peer read");
        assert!(n > 0, "client closed the connection, expected a request");
        serde_json::from_str(&line).expect("request is JSON")
    }

    /// Reads the next request and asserts it runs `command`.
    pub async fn expect(&mut self, command: &str) -> Value {
        let request = self.recv().await;
        assert_eq!(request["execute"], command, "unexpected request {request}");
        assert!(
            request["id"].is_u64(),
            "request without numeric id: {request}"
        );
        request
    }

    /// Asserts the client closes its side without sending anything more.
    pub async fn expect_eof(&mut self) {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP, self.reader.read_line(&mut line))
            .await
            .expect("client did not close")
            .expect("peer read");
        assert_eq!(n, 0, "unexpected data {line:?}");
    }

    pub async fn reply(&mut self, request: &Value, ret: Value) {
        self.send(json!({"return": ret, "id": request["id"]})).await;
    }

    pub async fn event(&mut self, name: &str, data: Option<Value>) {
        let mut event =
            json!({"timestamp": {"seconds": 1700000000, "microseconds": 42}, "event": name});
        if let Some(data) = data {
            event["data"] = data;
        }
        self.send(event).await;
    }

    /// Greeting plus capabilities negotiation, asserting nothing is enabled.
    pub async fn handshake(&mut self) {
        self.greet().await;
        let request = self.expect("qmp_capabilities").await;
        assert!(
            request.get("arguments").is_none(),
            "capabilities enabled: {request}"
        );
        self.reply(&request, json!({})).await;
    }
}
