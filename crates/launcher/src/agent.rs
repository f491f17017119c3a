//! The guest agent (qemu-guest-agent) over its virtio-serial channel.
//!
//! QEMU serves the channel as a unix socket that takes one client at a time, and bytes a
//! previous client left unread may still be in it. So every exchange is its own
//! connection, serialised by [`Agent`], and starts with `guest-sync` carrying a fresh id:
//! replies are skipped until that id comes back, then the command is sent and its reply
//! read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent is not connected")]
    NotConnected,
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the guest agent refused {command}: {message}")]
    Refused { command: String, message: String },
    #[error("the guest agent sent {0}")]
    Malformed(String),
}

/// One guest's agent channel.
#[derive(Debug)]
pub struct Agent {
    socket: PathBuf,
    next_id: AtomicU64,
    busy: Mutex<()>,
}

impl Agent {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            next_id: AtomicU64::new(u64::from(std::process::id()) << 20),
            busy: Mutex::new(()),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `command` with `arguments`; its `return` value. `Ok(None)` when the command
    /// was sent but the agent stayed silent within `timeout`, as `guest-shutdown` does on
    /// success (`expect_reply` false).
    pub async fn call(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        expect_reply: bool,
    ) -> Result<Option<Value>, AgentError> {
        let _one_at_a_time = self.busy.lock().await;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|_| AgentError::NotConnected)?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let send = |v: Value| {
            let mut line = v.to_string();
            line.push('\n');
            line
        };
        write
            .write_all(send(json!({"execute": "guest-sync", "arguments": {"id": id}})).as_bytes())
            .await
            .map_err(|_| AgentError::NotConnected)?;
        loop {
            let line = next_line(&mut lines, timeout).await?;
            if serde_json::from_str::<Value>(&line)
                .ok()
                .is_some_and(|v| v["return"] == json!(id))
            {
                break;
            }
        }
        let mut request = json!({"execute": command});
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        write
            .write_all(send(request).as_bytes())
            .await
            .map_err(|_| AgentError::NotConnected)?;
        let line = match next_line(&mut lines, timeout).await {
            Err(AgentError::Timeout(_)) if !expect_reply => return Ok(None),
            other => other?,
        };
        let reply: Value =
            serde_json::from_str(&line).map_err(|_| AgentError::Malformed(line.clone()))?;
        if let Some(error) = reply.get("error") {
            return Err(AgentError::Refused {
                command: command.into(),
                message: error["desc"].as_str().unwrap_or("error").into(),
            });
        }
        reply
            .get("return")
            .cloned()
            .map(Some)
            .ok_or(AgentError::Malformed(line))
    }

    /// Whether the agent answers `guest-ping`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        self.call("guest-ping", None, timeout, true).await.is_ok()
    }

    /// `guest-get-osinfo` in upstream's `guestOSInfo` shape.
    pub async fn os_info(&self, timeout: Duration) -> Result<Value, AgentError> {
        let info = self
            .call("guest-get-osinfo", None, timeout, true)
            .await?
            .unwrap_or_default();
        Ok(os_info_from_agent(&info))
    }

    /// Asks the guest to reboot itself.
    pub async fn reboot(&self, timeout: Duration) -> Result<(), AgentError> {
        self.call(
            "guest-shutdown",
            Some(json!({"mode": "reboot"})),
            timeout,
            false,
        )
        .await
        .map(|_| ())
    }
}

type Lines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

async fn next_line(lines: &mut Lines, timeout: Duration) -> Result<String, AgentError> {
    match tokio::time::timeout(timeout, lines.next_line()).await {
        Err(_) => Err(AgentError::Timeout(timeout)),
        Ok(Err(_) | Ok(None)) => Err(AgentError::NotConnected),
        Ok(Ok(Some(line))) => Ok(line),
    }
}

/// The agent's `guest-get-osinfo` answer in upstream's field names.
pub fn os_info_from_agent(info: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (ours, theirs) in [
        ("id", "id"),
        ("name", "name"),
        ("prettyName", "pretty-name"),
        ("version", "version"),
        ("versionId", "version-id"),
        ("kernelRelease", "kernel-release"),
        ("kernelVersion", "kernel-version"),
        ("machine", "machine"),
    ] {
        if let Some(v) = info.get(theirs).and_then(Value::as_str) {
            out.insert(ours.into(), Value::String(v.into()));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::net::UnixListener;

    /// A scripted agent: answers guest-sync with its id (after a stale line), then `reply`.
    async fn fake(dir: &Path, reply: Option<&'static str>) -> PathBuf {
        let path = dir.join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let sync: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(sync["execute"], "guest-sync");
            let id = sync["arguments"]["id"].clone();
            write.write_all(b"{\"return\": 12345}\n").await.unwrap();
            write
                .write_all(format!("{{\"return\": {id}}}\n").as_bytes())
                .await
                .unwrap();
            let _command = lines.next_line().await.unwrap().unwrap();
            if let Some(r) = reply {
                write.write_all(r.as_bytes()).await.unwrap();
                write.write_all(b"\n").await.unwrap();
            }
            let _ = lines.next_line().await;
        });
        path
    }

    #[tokio::test]
    async fn os_info_reads_past_stale_lines_and_uses_upstreams_names() {
        let dir = tempfile::tempdir().unwrap();
        let reply = r#"{"return": {"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 13 (trixie)", "version-id": "13", "kernel-release": "6.12.0", "machine": "x86_64"}}"#;
        let agent = Agent::new(&fake(dir.path(), Some(reply)).await);
        let info = agent.os_info(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            info,
            json!({"id": "debian", "name": "Debian GNU/Linux", "prettyName": "Debian GNU/Linux 13 (trixie)",
                   "versionId": "13", "kernelRelease": "6.12.0", "machine": "x86_64"})
        );
    }

    #[tokio::test]
    async fn errors_say_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::new(&dir.path().join("none.sock"));
        assert!(!agent.ping(Duration::from_secs(1)).await);
        let err = agent.os_info(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.to_string(), "the guest agent is not connected");
        let refused = r#"{"error": {"class": "GenericError", "desc": "not allowed"}}"#;
        let agent = Agent::new(&fake(dir.path(), Some(refused)).await);
        let err = agent.os_info(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the guest agent refused guest-get-osinfo: not allowed"
        );
    }

    #[tokio::test]
    async fn a_silent_shutdown_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::new(&fake(dir.path(), None).await);
        agent.reboot(Duration::from_millis(300)).await.unwrap();
    }
}
