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

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

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
    #[error("the guest agent sent a line over {MAX_AGENT_LINE} bytes")]
    TooLong,
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
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_AGENT_LINE));
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

    /// Runs `command` and insists on an answer.
    async fn ask(&self, command: &str, timeout: Duration) -> Result<Value, AgentError> {
        Ok(self
            .call(command, None, timeout, true)
            .await?
            .unwrap_or_default())
    }

    /// The `guestosinfo` subresource's answer (upstream's
    /// `VirtualMachineInstanceGuestAgentInfo`): the agent's version and commands, host
    /// name, OS, time zone, the first ten users and filesystems, the freeze state. Parts
    /// an older agent does not know are left out.
    pub async fn guest_info(&self, timeout: Duration) -> Result<Value, AgentError> {
        let info = self.ask("guest-info", timeout).await?;
        let mut out = serde_json::Map::new();
        if let Some(v) = info["version"].as_str() {
            out.insert("guestAgentVersion".into(), json!(v));
        }
        let commands: Vec<Value> = info["supported_commands"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({"name": c["name"], "enabled": c["enabled"].as_bool().unwrap_or(false)}))
            .collect();
        if !commands.is_empty() {
            out.insert("supportedCommands".into(), json!(commands));
        }
        if let Ok(host) = self.ask("guest-get-host-name", timeout).await
            && let Some(name) = host["host-name"].as_str()
        {
            out.insert("hostname".into(), json!(name));
        }
        let os = self
            .ask("guest-get-osinfo", timeout)
            .await
            .unwrap_or_default();
        out.insert("os".into(), os_info_from_agent(&os));
        if let Ok(tz) = self.ask("guest-get-timezone", timeout).await {
            let zone = tz["zone"].as_str().unwrap_or_default();
            out.insert(
                "timezone".into(),
                json!(format!("{zone}, {}", tz["offset"].as_i64().unwrap_or(0))),
            );
        }
        if let Ok(users) = self.ask("guest-get-users", timeout).await {
            let users: Vec<Value> = users_from_agent(&users).into_iter().take(10).collect();
            if !users.is_empty() {
                out.insert("userList".into(), json!(users));
            }
        }
        let filesystems = match self.ask("guest-get-fsinfo", timeout).await {
            Ok(fs) => filesystems_from_agent(&fs).into_iter().take(10).collect(),
            Err(_) => Vec::new(),
        };
        out.insert("fsInfo".into(), json!({"disks": filesystems}));
        if let Ok(state) = self.ask("guest-fsfreeze-status", timeout).await
            && let Some(state) = state.as_str()
        {
            out.insert("fsFreezeStatus".into(), json!(state));
        }
        Ok(Value::Object(out))
    }

    /// The `userlist` subresource's answer: every logged-in user.
    pub async fn user_list(&self, timeout: Duration) -> Result<Value, AgentError> {
        let users = self.ask("guest-get-users", timeout).await?;
        Ok(json!({"metadata": {}, "items": users_from_agent(&users)}))
    }

    /// The `filesystemlist` subresource's answer: every mounted filesystem.
    pub async fn filesystem_list(&self, timeout: Duration) -> Result<Value, AgentError> {
        let fs = self.ask("guest-get-fsinfo", timeout).await?;
        Ok(json!({"metadata": {}, "items": filesystems_from_agent(&fs)}))
    }

    /// The guest's network interfaces, without the loopback.
    pub async fn interfaces(&self, timeout: Duration) -> Result<Vec<GuestInterface>, AgentError> {
        let list = self.ask("guest-network-get-interfaces", timeout).await?;
        Ok(interfaces_from_agent(&list))
    }

    /// `guest-fsfreeze-status`: `thawed` or `frozen`.
    pub async fn freeze_status(&self, timeout: Duration) -> Result<String, AgentError> {
        let state = self.ask("guest-fsfreeze-status", timeout).await?;
        state
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AgentError::Malformed(state.to_string()))
    }

    /// Freezes the guest's filesystems (nothing when they are frozen already).
    pub async fn freeze(&self, timeout: Duration) -> Result<(), AgentError> {
        if self.freeze_status(timeout).await? == "frozen" {
            return Ok(());
        }
        self.ask("guest-fsfreeze-freeze", timeout).await.map(|_| ())
    }

    /// Thaws the guest's filesystems (nothing when they are not frozen).
    pub async fn thaw(&self, timeout: Duration) -> Result<(), AgentError> {
        if self.freeze_status(timeout).await? == "thawed" {
            return Ok(());
        }
        self.ask("guest-fsfreeze-thaw", timeout).await.map(|_| ())
    }

    /// Runs `command` (a path and its arguments) in the guest (`guest-exec`, output not
    /// kept) and waits for it to end; its exit code. Each agent call gets `timeout`; the
    /// caller bounds the whole.
    pub async fn exec(&self, command: &[String], timeout: Duration) -> Result<i64, AgentError> {
        let (path, args) = command.split_first().ok_or(AgentError::Refused {
            command: "guest-exec".into(),
            message: "no command".into(),
        })?;
        let started = self
            .call(
                "guest-exec",
                Some(json!({"path": path, "arg": args})),
                timeout,
                true,
            )
            .await?
            .unwrap_or_default();
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| AgentError::Malformed(started.to_string()))?;
        loop {
            let status = self
                .call(
                    "guest-exec-status",
                    Some(json!({"pid": pid})),
                    timeout,
                    true,
                )
                .await?
                .unwrap_or_default();
            if status["exited"] == json!(true) {
                return Ok(status["exitcode"].as_i64().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// The longest line read from the guest agent. The guest is the tenant's: a line without
/// an end must not grow the launcher's memory, so it is cut while it is read.
const MAX_AGENT_LINE: usize = 4 << 20;

type Lines = FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>;

async fn next_line(lines: &mut Lines, timeout: Duration) -> Result<String, AgentError> {
    match tokio::time::timeout(timeout, lines.next()).await {
        Err(_) => Err(AgentError::Timeout(timeout)),
        Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => Err(AgentError::TooLong),
        Ok(Some(Err(_)) | None) => Err(AgentError::NotConnected),
        Ok(Some(Ok(line))) => Ok(line),
    }
}

pub use launcher_proto::GuestInterface;

/// `guest-network-get-interfaces` as [`GuestInterface`]s, the loopback left out.
pub fn interfaces_from_agent(list: &Value) -> Vec<GuestInterface> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["name"] != "lo")
        .filter_map(|i| {
            let mac = i["hardware-address"].as_str()?.to_lowercase();
            let addresses = i["ip-addresses"].as_array().cloned().unwrap_or_default();
            let of = |family: &str| {
                addresses
                    .iter()
                    .filter(|a| a["ip-address-type"] == family)
                    .filter_map(|a| a["ip-address"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            let mut ip_addresses = of("ipv4");
            ip_addresses.extend(of("ipv6"));
            Some(GuestInterface {
                name: i["name"].as_str().unwrap_or_default().to_owned(),
                mac,
                ip_addresses,
            })
        })
        .collect()
}

/// `guest-get-users` in upstream's `VirtualMachineInstanceGuestOSUser` shape.
pub fn users_from_agent(users: &Value) -> Vec<Value> {
    users
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let mut user = serde_json::Map::new();
            user.insert(
                "userName".into(),
                json!(u["user"].as_str().unwrap_or_default()),
            );
            if let Some(domain) = u["domain"].as_str() {
                user.insert("domain".into(), json!(domain));
            }
            if let Some(t) = u["login-time"].as_f64() {
                user.insert("loginTime".into(), json!(t));
            }
            Value::Object(user)
        })
        .collect()
}

/// `guest-get-fsinfo` in upstream's `VirtualMachineInstanceFileSystem` shape.
pub fn filesystems_from_agent(fs: &Value) -> Vec<Value> {
    fs.as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let disks: Vec<Value> = f["disk"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let mut disk = json!({"busType": d["bus-type"].as_str().unwrap_or_default()});
                    if let Some(serial) = d["serial"].as_str() {
                        disk["serial"] = json!(serial);
                    }
                    disk
                })
                .collect();
            let mut out = json!({
                "diskName": f["name"].as_str().unwrap_or_default(),
                "mountPoint": f["mountpoint"].as_str().unwrap_or_default(),
                "fileSystemType": f["type"].as_str().unwrap_or_default(),
                "usedBytes": f["used-bytes"].as_u64().unwrap_or(0),
                "totalBytes": f["total-bytes"].as_u64().unwrap_or(0),
            });
            if !disks.is_empty() {
                out["disk"] = json!(disks);
            }
            out
        })
        .collect()
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
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn an_endless_line_from_the_guest_is_cut_while_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let _sync = lines.next_line().await;
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..(MAX_AGENT_LINE / chunk.len() + 2) {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let agent = Agent::new(&path);
        let err = agent.os_info(Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, AgentError::TooLong), "{err}");
    }

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

    #[test]
    fn agent_lists_read_in_upstreams_shapes() {
        let users = json!([{"user": "debian", "login-time": 1764000000.25},
                           {"user": "Administrator", "domain": "CORP", "login-time": 1.5}]);
        assert_eq!(
            users_from_agent(&users),
            vec![
                json!({"userName": "debian", "loginTime": 1764000000.25}),
                json!({"userName": "Administrator", "domain": "CORP", "loginTime": 1.5})
            ]
        );
        let fs = json!([{"name": "vda1", "mountpoint": "/", "type": "ext4",
            "used-bytes": 1000, "total-bytes": 4000,
            "disk": [{"serial": "abc", "bus-type": "virtio", "bus": 0}]},
            {"name": "sr0", "mountpoint": "/mnt", "type": "iso9660", "disk": []}]);
        assert_eq!(
            filesystems_from_agent(&fs),
            vec![
                json!({"diskName": "vda1", "mountPoint": "/", "fileSystemType": "ext4",
                       "usedBytes": 1000, "totalBytes": 4000,
                       "disk": [{"serial": "abc", "busType": "virtio"}]}),
                json!({"diskName": "sr0", "mountPoint": "/mnt", "fileSystemType": "iso9660",
                       "usedBytes": 0, "totalBytes": 0})
            ]
        );
        let ifaces = json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
            {"name": "enp1s0", "hardware-address": "52:54:00:AB:CD:EF", "ip-addresses": [
                {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": "10.0.2.2", "ip-address-type": "ipv4", "prefix": 24}]}]);
        assert_eq!(
            interfaces_from_agent(&ifaces),
            vec![GuestInterface {
                name: "enp1s0".into(),
                mac: "52:54:00:ab:cd:ef".into(),
                ip_addresses: vec!["10.0.2.2".into(), "fe80::1".into()],
            }]
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
