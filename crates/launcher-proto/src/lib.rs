//! The messages between virt-handler and virt-launcher, and how they travel.
//!
//! A launcher listens on a unix socket (`<run dir>/sockets/<vmi uid>.sock`). Each
//! exchange is one connection: the handler writes one [`Request`] as a line of JSON, the
//! launcher answers with one [`Response`] line, except for [`Request::Watch`], after which
//! the launcher writes a [`Response::Status`] line now and on every change until either
//! side closes. Every message carries `"version"`; a launcher refuses a request of
//! another version with [`Response::Error`] naming both, so a handler and a launcher of
//! different releases fail loudly instead of misreading each other.
//!
//! Owns: the message types, the version check, and the line codec on both sides. Does not
//! own: what the launcher does with a request or what the handler writes to the API.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod rundir;
pub use rundir::{RunDir, RunPath};

use api::v1::VirtualMachineInstance;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The longest line either side accepts (a VMI with many disks is a few KiB).
const MAX_LINE: usize = 4 << 20;

/// What the handler asks of a launcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Start the VMI if it is not started yet (idempotent); answers with the status.
    Sync {
        vmi: Box<VirtualMachineInstance>,
    },
    /// The current status.
    Status,
    /// The status now and after every change.
    Watch,
    Pause,
    Unpause,
    /// A hard reset, like pressing the reset button.
    Reset,
    /// A reboot the guest performs itself (through the guest agent).
    SoftReboot,
    /// ACPI power-off, then a kill after `grace_seconds`.
    #[serde(rename_all = "camelCase")]
    Shutdown {
        grace_seconds: u64,
    },
    /// What the guest agent knows, in upstream's `VirtualMachineInstanceGuestAgentInfo`
    /// shape (the `guestosinfo` subresource).
    GuestOsInfo,
    /// The logged-in users (the `userlist` subresource).
    UserList,
    /// The mounted filesystems (the `filesystemlist` subresource).
    FilesystemList,
    /// Freezes the guest's filesystems through the agent; they thaw by themselves after
    /// `unfreeze_timeout_seconds` unless that is 0.
    #[serde(rename_all = "camelCase")]
    Freeze {
        unfreeze_timeout_seconds: u64,
    },
    /// Thaws the guest's filesystems.
    Unfreeze,
    /// The display as PNG, answered as `{"png": "<base64>"}`.
    Screenshot,
    /// A TCP port of the guest made reachable from this node, answered as
    /// `{"address": "127.0.0.1:<port>"}` (the same address for the same port).
    PortForward {
        port: u16,
    },
    /// Become the target of migration `migration_uid`: prepare the disks, start QEMU
    /// waiting for the incoming stream with the disks exported for copying, and listen for
    /// the hand-over. Answered at once; the ports appear in [`MigrationStatus::ports`]
    /// when the target is ready (asking twice changes nothing).
    #[serde(rename_all = "camelCase")]
    MigrationTarget {
        vmi: Box<VirtualMachineInstance>,
        migration_uid: String,
        /// Accept a switch to post-copy (the source's [`MigrationOptions::allow_post_copy`]).
        #[serde(default)]
        post_copy: bool,
        /// The streams' TLS credentials; without them the streams are plain TCP.
        #[serde(default)]
        tls: Option<MigrationTls>,
    },
    /// Live-migrate the guest to the target at `host` (idempotent per migration). The
    /// progress is reported in [`Status::migration`]; on success the launcher exits with
    /// [`Exit::Migrated`].
    #[serde(rename_all = "camelCase")]
    Migrate {
        migration_uid: String,
        host: String,
        ports: TargetPorts,
        options: MigrationOptions,
        /// The streams' TLS credentials; without them the streams are plain TCP.
        #[serde(default)]
        tls: Option<MigrationTls>,
    },
    /// Abort the running migration; the guest keeps running here.
    CancelMigration,
}

/// The name every migration certificate carries, and the one each side checks.
pub const MIGRATION_TLS_NAME: &str = "kubevirt-migration";

/// Mutual TLS for a migration's streams (memory, disks, hand-over): the migration CA,
/// and a certificate it signed for [`MIGRATION_TLS_NAME`] with its key, which the
/// target serves and the source presents. PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for MigrationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationTls").finish_non_exhaustive()
    }
}

/// Where a migration target listens, on its node's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPorts {
    /// QEMU's incoming migration stream.
    pub memory: u16,
    /// The NBD server the source copies the local disks to.
    pub disks: u16,
    /// The launcher's hand-over: the console history, then the word to resume.
    pub handover: u16,
}

/// How a migration may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationOptions {
    /// Abort when the remaining memory has not shrunk for this long.
    pub progress_timeout_seconds: u64,
    /// Abort when the whole migration takes longer than this.
    pub completion_timeout_seconds: u64,
    /// The longest pause of the guest the switch-over may cost.
    pub max_downtime_ms: u64,
    /// Bytes per second, 0 for no limit.
    pub bandwidth_bytes_per_second: u64,
    /// Let QEMU slow the vCPUs down when the guest dirties memory faster than it moves.
    #[serde(default)]
    pub auto_converge: bool,
    /// At the completion timeout, switch to post-copy instead of giving up: the guest
    /// runs on the target at once and the rest of its memory follows on demand.
    #[serde(default)]
    pub allow_post_copy: bool,
}

/// Which end of a migration a launcher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MigrationRole {
    Source,
    Target,
}

/// How far a migration has come, from one launcher's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MigrationPhase {
    /// Target: preparing disks and QEMU. Source: copying the disks.
    Preparing,
    /// Target: listening for the source.
    Ready,
    /// The memory is being sent.
    Running,
    /// The guest runs on the target.
    Completed,
    Failed,
}

/// A launcher's part in a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub uid: String,
    pub role: MigrationRole,
    pub phase: MigrationPhase,
    /// Why it failed.
    pub message: Option<String>,
    /// Set when it failed because it was cancelled.
    #[serde(default)]
    pub aborted: bool,
    /// Set when the source stopped it (a cancel or a timeout): its message is the reason,
    /// whatever the target said about its own end.
    #[serde(default)]
    pub stopped_by_source: bool,
    /// Source, once completed: QEMU's total time and downtime for the memory stream, and
    /// the guest-visible pause (the downtime plus the hand-over until the target resumed).
    pub total_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    #[serde(default)]
    pub pause_ms: Option<u64>,
    /// Source: set once the migration switched to post-copy.
    #[serde(default)]
    pub post_copy: bool,
    /// Target: where it listens, once ready: its address and ports.
    pub ports: Option<TargetPorts>,
    #[serde(default)]
    pub address: Option<String>,
}

/// An interface inside the guest, as the guest agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestInterface {
    /// The guest's name for it (`eth0`, `enp1s0`).
    pub name: String,
    pub mac: String,
    /// IPv4 addresses first, then IPv6.
    pub ip_addresses: Vec<String>,
}

/// An interface of the domain: the spec's name and the MAC the launcher gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainInterface {
    pub name: String,
    pub mac: String,
}

/// What the domain is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum DomainState {
    /// Waiting for the handler's Sync: nothing started yet.
    Waiting,
    /// Disks prepared and QEMU started, vCPUs not running yet.
    Created,
    Running,
    Paused {
        reason: String,
    },
    /// QEMU has ended; the launcher exits soon after.
    Exited {
        exit: Exit,
    },
    /// The VMI could not be started (bad image, bad disk, QEMU refused its arguments).
    Failed {
        message: String,
    },
}

/// How QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "camelCase")]
pub enum Exit {
    /// The guest powered itself off.
    GuestShutdown,
    /// Stopped on request; `forced` when it had to be killed.
    Stopped { forced: bool },
    /// QEMU died or the guest panicked.
    Crashed { message: String },
    /// The guest moved to another node by live migration.
    Migrated,
}

/// A launcher's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The VMI this launcher runs.
    pub uid: String,
    #[serde(flatten)]
    pub state: DomainState,
    pub qemu_pid: Option<u32>,
    /// Set when the CPU is emulated (no usable KVM), with the reason.
    pub software_emulation: Option<String>,
    /// The serial console's unix socket (one client at a time).
    pub serial_socket: Option<PathBuf>,
    /// The VNC server's unix socket.
    pub vnc_socket: Option<PathBuf>,
    /// Whether the guest agent answers.
    #[serde(default)]
    pub agent_connected: bool,
    /// The domain's network interfaces, in spec order.
    #[serde(default)]
    pub interfaces: Vec<DomainInterface>,
    /// The guest's interfaces, from the agent (empty without one).
    #[serde(default)]
    pub guest_interfaces: Vec<GuestInterface>,
    /// The agent's OS information, in upstream's `guestOSInfo` shape.
    #[serde(default)]
    pub guest_os_info: Option<serde_json::Value>,
    /// `frozen` while the guest's filesystems are frozen on request.
    #[serde(default)]
    pub fs_freeze_status: Option<String>,
    /// The migration this launcher takes part in, if any.
    #[serde(default)]
    pub migration: Option<MigrationStatus>,
    /// The readiness probe's verdict; `None` when the VMI has no readiness probe.
    #[serde(default)]
    pub readiness: Option<Readiness>,
}

/// Whether the guest passes its readiness probe, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    /// The last failure, while not ready.
    #[serde(default)]
    pub message: String,
}

/// A launcher's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Ok,
    Status(Box<Status>),
    /// The guest agent's answer, as JSON.
    Value {
        value: serde_json::Value,
    },
    /// The request was refused; `conflict` when it does not fit the state (pausing a
    /// paused guest), so the handler can answer 409 rather than 500.
    #[serde(rename_all = "camelCase")]
    Error {
        message: String,
        conflict: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("launcher socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("launcher connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("launcher closed the connection")]
    Closed,
    #[error("a message over {MAX_LINE} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol version {theirs} spoken, {VERSION} expected")]
    Version { theirs: u32 },
    #[error("launcher did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where the launcher of VMI `uid` listens, under its run directory (as the launcher
/// sees it; components reach it through [`RunDir::socket`]).
pub fn socket_path(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join("sockets").join(format!("{uid}.sock"))
}

/// One side of a connection: reads and writes versioned lines.
#[derive(Debug)]
pub struct Conn<S> {
    /// Lines are cut at [`MAX_LINE`] while they are read, so a peer cannot make the
    /// reader buffer without end.
    lines: FramedRead<tokio::io::ReadHalf<S>, LinesCodec>,
    writer: tokio::io::WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            lines: FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE)),
            writer: w,
        }
    }

    /// Writes one message.
    pub async fn send<T: Serialize>(&mut self, body: &T) -> Result<(), ProtoError> {
        let mut line = serde_json::to_vec(&Envelope {
            version: VERSION,
            body,
        })
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Reads one message; `Ok(None)` at a clean end of stream.
    pub async fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, ProtoError> {
        match self.lines.next().await {
            None => Ok(None),
            Some(Ok(line)) => decode(&line).map(Some),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Err(ProtoError::TooLong),
            Some(Err(LinesCodecError::Io(e))) => Err(ProtoError::Io(e)),
        }
    }
}

/// Decodes one line, checking its version before its shape.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, ProtoError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let theirs = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ProtoError::Malformed("no version".into()))?;
    if theirs != u64::from(VERSION) {
        return Err(ProtoError::Version {
            theirs: u32::try_from(theirs).unwrap_or(u32::MAX),
        });
    }
    let envelope: Envelope<T> =
        serde_json::from_value(value).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok(envelope.body)
}

/// Connects to the launcher at `socket`.
pub async fn connect(socket: &RunPath) -> Result<Conn<UnixStream>, ProtoError> {
    let stream = socket
        .connect()
        .await
        .map_err(|source| ProtoError::Connect {
            path: socket.to_string(),
            source,
        })?;
    Ok(Conn::new(stream))
}

/// One request and its answer, within `timeout`.
pub async fn call(
    socket: &RunPath,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ProtoError> {
    let exchange = async {
        let mut conn = connect(socket).await?;
        conn.send(request).await?;
        conn.recv::<Response>().await?.ok_or(ProtoError::Closed)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProtoError::Timeout(timeout))?
}

/// Starts a watch: the returned connection yields a [`Response::Status`] per change.
pub async fn watch(socket: &RunPath) -> Result<Conn<UnixStream>, ProtoError> {
    let mut conn = connect(socket).await?;
    conn.send(&Request::Watch).await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_line_without_end_is_cut_while_it_is_read() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            // Past the limit, never a newline: the reader must give up, not buffer it all.
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..(MAX_LINE / chunk.len() + 2) {
                if theirs.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            theirs
        });
        let mut conn = Conn::new(ours);
        let err = conn.recv::<Request>().await.unwrap_err();
        assert!(matches!(err, ProtoError::TooLong), "{err}");
        drop(conn);
        let _ = writer.await;
    }

    #[test]
    fn messages_carry_the_version_and_read_back() {
        let line = serde_json::to_string(&Envelope {
            version: VERSION,
            body: &Request::Shutdown { grace_seconds: 30 },
        })
        .unwrap();
        assert_eq!(line, r#"{"version":1,"op":"shutdown","graceSeconds":30}"#);
        assert!(matches!(
            decode::<Request>(&line).unwrap(),
            Request::Shutdown { grace_seconds: 30 }
        ));
        let status = Response::Status(Box::new(Status {
            uid: "u".into(),
            state: DomainState::Exited {
                exit: Exit::Stopped { forced: true },
            },
            qemu_pid: Some(7),
            software_emulation: Some("no KVM".into()),
            serial_socket: None,
            vnc_socket: None,
            agent_connected: false,
            interfaces: Vec::new(),
            guest_interfaces: Vec::new(),
            guest_os_info: None,
            fs_freeze_status: None,
            migration: None,
            readiness: None,
        }));
        let line = serde_json::to_string(&Envelope {
            version: VERSION,
            body: &status,
        })
        .unwrap();
        assert!(line.contains(r#""result":"status""#), "{line}");
        assert!(line.contains(r#""state":"exited""#), "{line}");
        assert_eq!(decode::<Response>(&line).unwrap(), status);
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let err = decode::<Request>(r#"{"version":2,"op":"status"}"#).unwrap_err();
        assert_eq!(err.to_string(), "protocol version 2 spoken, 1 expected");
        assert!(matches!(
            decode::<Request>(r#"{"op":"status"}"#),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(r#"{"version":1,"op":"fly"}"#),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_call_over_a_socket_gets_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "abc");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Conn::new(stream);
            let req: Request = conn.recv().await.unwrap().unwrap();
            assert!(matches!(req, Request::Pause));
            conn.send(&Response::Error {
                message: "already paused".into(),
                conflict: true,
            })
            .await
            .unwrap();
        });
        let run = RunDir::shared(dir.path());
        let answer = call(&run.socket("abc"), &Request::Pause, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Response::Error {
                message: "already paused".into(),
                conflict: true
            }
        );
        let gone = call(
            &run.socket("none"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(gone.to_string().starts_with("launcher socket "), "{gone}");
    }
}
