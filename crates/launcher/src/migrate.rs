//! Live migration between two launchers, the way libvirt does it for local disks.
//!
//! Target ([`Incoming`]): QEMU starts with `-incoming defer` and its vCPUs held; its
//! fresh disk overlays are exported read-write over NBD; QEMU listens for the memory
//! stream; the launcher listens for the hand-over.
//!
//! Source ([`run_source`]):
//! 1. Mirror every local writable disk into the target's export (`blockdev-mirror`,
//!    `sync: top`, so only what the guest wrote above the shared base image travels;
//!    `write-blocking`, so once in step the guest's writes reach both ends).
//! 2. `migrate` the memory, polling its progress against the progress and completion
//!    timeouts; the guest runs meanwhile and pauses only for the switch-over.
//! 3. Complete the mirrors (`block-job-cancel` on a ready mirror finishes it cleanly).
//! 4. Hand over: send the serial console's history; the target appends it to its own
//!    log, stops the NBD server and resumes the guest.
//!
//! With post-copy allowed, reaching the completion timeout in step 2 switches to
//! post-copy (`migrate-start-postcopy`): once QEMU has stopped the guest and sent its
//! devices, steps 3 and 4 follow at once and the guest runs on the target while the rest
//! of its memory streams in (pages it touches first are fetched on demand); the source
//! then waits for the stream to end.
//!
//! A failure anywhere before the hand-over leaves the guest running on the source: the
//! memory stream and the mirrors are cancelled and the NBD clients removed.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::v1::VirtualMachineInstance;
use launcher_proto::{MIGRATION_TLS_NAME, MigrationOptions, MigrationTls, TargetPorts};
use qmp::Qmp;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// The largest console history handed over (QEMU's log grows without bound).
const MAX_HISTORY: u64 = 4 << 20;
/// How long the mirrors may take to reach step with the guest.
const MIRROR_READY: Duration = Duration::from_secs(120);
/// How often the memory stream's progress is read (it ends the switch-over's pause).
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Qmp(#[from] qmp::QmpError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    /// This side stopped it: a cancel or a timeout.
    #[error("{0}")]
    Stopped(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Io { what, source }
}

/// The node names of the disks a migration copies: every writable disk whose data lives
/// on the node (container disks' overlays, empty and ephemeral disks, host disks).
/// Cloud-init and other generated volumes are made again, identically, on the target.
pub fn local_disks(vmi: &VirtualMachineInstance) -> Vec<String> {
    vmi.spec
        .domain
        .devices
        .disks
        .iter()
        .filter(|d| d.cdrom.is_none())
        .filter(|d| d.disk.as_ref().and_then(|t| t.readonly) != Some(true))
        .filter(|d| {
            vmi.spec.volumes.iter().any(|v| {
                v.name == d.name
                    && (v.container_disk.is_some()
                        || v.empty_disk.is_some()
                        || v.ephemeral.is_some()
                        || v.host_disk.is_some())
            })
        })
        .map(|d| format!("drive-ua-{}", d.name))
        .collect()
}

/// Where a migration target listens: the pod's address (`POD_IP`, which the launcher pod
/// sets from `status.podIP`), else loopback.
pub fn listen_address() -> Ipv4Addr {
    std::env::var("POD_IP")
        .ok()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// A free TCP port on `ip`, picked by the kernel.
fn free_port(ip: Ipv4Addr) -> Result<u16, MigrateError> {
    StdListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("picking a free port"))
}

/// How long the hand-over's connection and TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The credentials of a migration with TLS, and where QEMU reads them.
#[derive(Debug, Clone)]
pub struct Tls<'a> {
    pub creds: &'a MigrationTls,
    /// A directory of the VMI's own (its run directory's `migration-tls`).
    pub dir: &'a Path,
    /// The migration's uid: each migration's credentials are a QEMU object of their own
    /// (a guest that came in as a target may later leave as a source).
    pub migration: &'a str,
}

/// Which end a launcher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Server,
    Client,
}

impl Tls<'_> {
    /// QEMU's id of these credentials.
    fn id(&self) -> String {
        format!("tls-{}", self.migration)
    }

    /// Writes the credentials as QEMU's `tls-creds-x509` reads them (`ca-cert.pem`,
    /// `{server,client}-cert.pem`, `{server,client}-key.pem`, 0600 under the launcher's
    /// umask), creates the object, and sets it (and, for the source, the name to check) on
    /// the migration stream. Both ends verify the other against the migration CA.
    async fn setup(&self, qmp: &Qmp, end: End) -> Result<(), MigrateError> {
        let side = match end {
            End::Server => "server",
            End::Client => "client",
        };
        std::fs::create_dir_all(self.dir).map_err(io("creating the TLS directory"))?;
        for (file, pem) in [
            ("ca-cert.pem".to_owned(), &self.creds.ca_pem),
            (format!("{side}-cert.pem"), &self.creds.cert_pem),
            (format!("{side}-key.pem"), &self.creds.key_pem),
        ] {
            std::fs::write(self.dir.join(&file), pem).map_err(io(format!("writing {file}")))?;
        }
        let added = qmp
            .execute(
                "object-add",
                Some(json!({"qom-type": "tls-creds-x509", "id": self.id(),
                    "dir": self.dir.display().to_string(), "endpoint": side, "verify-peer": true})),
            )
            .await;
        // QEMU has read the key: it need not stay on disk.
        let _ = std::fs::remove_file(self.dir.join(format!("{side}-key.pem")));
        added?;
        let mut parameters = json!({"tls-creds": self.id()});
        if end == End::Client {
            parameters["tls-hostname"] = json!(MIGRATION_TLS_NAME);
        }
        qmp.execute("migrate-set-parameters", Some(parameters))
            .await?;
        Ok(())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, MigrateError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(&self.creds.ca_pem)? {
            roots.add(cert).map_err(tls_error)?;
        }
        Ok(roots)
    }

    fn identity(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        MigrateError,
    > {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.creds.key_pem.as_bytes())
            .map_err(tls_error)?;
        Ok((pem_certs(&self.creds.cert_pem)?, key))
    }

    /// The hand-over's server side: our certificate, the source's required.
    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, MigrateError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(tls_error)?;
        let (certs, key) = self.identity()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(tls_error)?;
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }

    /// The hand-over's client side: the target's certificate checked, ours presented.
    fn connector(&self) -> Result<tokio_rustls::TlsConnector, MigrateError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let (certs, key) = self.identity()?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(tls_error)?;
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }
}

fn pem_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, MigrateError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_error)
}

fn tls_error(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Failed(format!("migration TLS: {e}"))
}

/// A byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Runs `bind` with free ports until QEMU's bind does not find the port taken; the port.
async fn bind_retrying<F, Fut>(ip: Ipv4Addr, mut bind: F) -> Result<u16, MigrateError>
where
    F: FnMut(u16) -> Fut,
    Fut: std::future::Future<Output = Result<Value, qmp::QmpError>>,
{
    let mut attempts = 0;
    loop {
        let port = free_port(ip)?;
        match bind(port).await {
            Ok(_) => return Ok(port),
            Err(qmp::QmpError::Command { desc, .. }) if desc.contains("in use") && attempts < 5 => {
                attempts += 1;
                tracing::debug!(port, "port taken before QEMU bound it: another");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The extra QEMU arguments of a migration target.
pub fn target_args() -> Vec<String> {
    vec!["-incoming".into(), "defer".into()]
}

/// A target waiting for its source.
pub struct Incoming {
    /// The address the streams are expected on.
    pub address: Ipv4Addr,
    pub ports: TargetPorts,
    handover: TcpListener,
    /// With TLS: the hand-over's.
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("address", &self.address)
            .field("ports", &self.ports)
            .field("tls", &self.acceptor.is_some())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Exports `disks` and starts listening, on a QEMU started with [`target_args`];
    /// `post_copy` accepts a switch to post-copy.
    pub async fn listen(
        qmp: &Qmp,
        disks: &[String],
        post_copy: bool,
        tls: Option<Tls<'_>>,
    ) -> Result<Self, MigrateError> {
        let address = listen_address();
        let handover = TcpListener::bind((address, 0))
            .await
            .map_err(io("listening for the hand-over"))?;
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "events", "state": true},
                {"capability": "postcopy-ram", "state": post_copy},
            ]})),
        )
        .await?;
        if let Some(tls) = &tls {
            tls.setup(qmp, End::Server).await?;
        }
        let acceptor = tls.as_ref().map(Tls::acceptor).transpose()?;
        let nbd_tls = tls.as_ref().map_or(Value::Null, |t| json!(t.id()));
        // QEMU binds the ports itself. A port picked free may be taken before QEMU binds
        // it; QEMU's bind then fails (no port sharing), and another port is tried, so a
        // stream never goes to somebody else's listener.
        let disks_port = bind_retrying(address, |port| {
            let mut args = json!({"addr": {"type": "inet", "data": {
                "host": address.to_string(), "port": port.to_string()}}});
            if !nbd_tls.is_null() {
                args["tls-creds"] = nbd_tls.clone();
            }
            qmp.execute("nbd-server-start", Some(args))
        })
        .await?;
        for node in disks {
            qmp.execute(
                "block-export-add",
                Some(json!({"type": "nbd", "id": node, "node-name": node,
                    "name": node, "writable": true})),
            )
            .await?;
        }
        let memory_port = bind_retrying(address, |port| {
            qmp.execute(
                "migrate-incoming",
                Some(json!({"uri": format!("tcp:{address}:{port}")})),
            )
        })
        .await?;
        let ports = TargetPorts {
            memory: memory_port,
            disks: disks_port,
            handover: handover
                .local_addr()
                .map_err(io("hand-over address"))?
                .port(),
        };
        info!(%address, ?ports, "waiting for the migration source");
        Ok(Self {
            address,
            ports,
            handover,
            acceptor,
        })
    }

    /// Waits for the source's hand-over, appends the console history it brings to
    /// `serial_log`, stops the disk export and resumes the guest. True when the guest
    /// arrived by post-copy (the rest of its memory still streaming in).
    pub async fn finish(self, qmp: &Qmp, serial_log: &Path) -> Result<bool, MigrateError> {
        // With TLS only the source, holding a migration certificate, gets past here.
        // Each connection's handshake runs on its own, within HANDSHAKE; anyone else's
        // connection (failing, or stalling) is dropped and the wait goes on.
        let mut handshakes = tokio::task::JoinSet::new();
        let (stream, peer): (Box<dyn Stream>, _) = loop {
            tokio::select! {
                accepted = self.handover.accept() => {
                    let (tcp, peer) = accepted.map_err(io("accepting the hand-over"))?;
                    match &self.acceptor {
                        None => break (Box::new(tcp), peer),
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            handshakes.spawn(async move {
                                let tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await;
                                (tls, peer)
                            });
                        }
                    }
                }
                Some(Ok((tls, peer))) = handshakes.join_next() => match tls {
                    Ok(Ok(tls)) => break (Box::new(tls), peer),
                    Ok(Err(e)) => warn!(%peer, error = %e, "a hand-over without valid TLS: dropped"),
                    Err(_) => warn!(%peer, "a hand-over that did not finish its TLS handshake: dropped"),
                },
            }
        };
        handshakes.abort_all();
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .await
            .map_err(io("reading the hand-over"))?;
        let header: Value = serde_json::from_str(&header)
            .map_err(|e| MigrateError::Failed(format!("a malformed hand-over: {e}")))?;
        let length = header["history"].as_u64().unwrap_or(0).min(MAX_HISTORY);
        let post_copy = header["postCopy"].as_bool().unwrap_or(false);
        let mut history = Vec::new();
        (&mut reader)
            .take(length)
            .read_to_end(&mut history)
            .await
            .map_err(io("reading the console history"))?;
        info!(%peer, history = history.len(), "hand-over from the source");
        // The guest has not run here yet, so the log is empty: the history goes first.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(serial_log)
            .map_err(io(format!("opening {}", serial_log.display())))?;
        std::io::Write::write_all(&mut log, &history)
            .map_err(io(format!("writing {}", serial_log.display())))?;
        qmp.execute("nbd-server-stop", None).await?;
        qmp.cont().await?;
        let mut stream = reader.into_inner();
        stream
            .write_all(b"resumed\n")
            .await
            .map_err(io("answering the hand-over"))?;
        stream
            .flush()
            .await
            .map_err(io("answering the hand-over"))?;
        Ok(post_copy)
    }
}

/// What the migration did: QEMU's figures for the memory stream (`query-migrate`), and
/// the guest-visible pause: QEMU's downtime (from stopping the vCPUs here to the end of
/// the stream) plus the time from then until the target said it resumed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub total_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub pause_ms: Option<u64>,
}

impl Outcome {
    /// QEMU's figures from a completed `query-migrate`.
    fn of(info: &Value) -> Self {
        Self {
            total_ms: info["total-time"].as_u64(),
            downtime_ms: info["downtime"].as_u64(),
            pause_ms: None,
        }
    }
}

/// Where and how the source sends the guest.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub host: &'a str,
    pub ports: TargetPorts,
    pub options: &'a MigrationOptions,
    /// The node names of the disks to copy ([`local_disks`]).
    pub disks: &'a [String],
    pub serial_log: &'a Path,
    pub tls: Option<Tls<'a>>,
}

/// The source's side: steps 1 to 4 of the module's description. `cancel` aborts it
/// while the memory is still being sent; `on_running` is called once it is being sent,
/// `on_post_copy` once the guest runs on the target before all its memory is there.
pub async fn run_source(
    qmp: &Qmp,
    out: Outgoing<'_>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
    on_running: impl FnOnce(),
    on_post_copy: impl FnOnce(),
) -> Result<Outcome, MigrateError> {
    let Outgoing {
        host,
        ports,
        options,
        disks,
        serial_log,
        tls,
    } = out;
    if let Some(tls) = &tls {
        tls.setup(qmp, End::Client).await?;
    }
    let connector = tls.as_ref().map(Tls::connector).transpose()?;
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| MigrateError::Failed(format!("target address {host:?} is not IPv4")))?;
    let tls_id = tls.as_ref().map(Tls::id);
    let mirrored = match mirror(qmp, ip, ports.disks, disks, tls_id.as_deref()).await {
        Ok(()) => disks.to_vec(),
        Err(e) => {
            abandon_mirrors(qmp, disks).await;
            return Err(e);
        }
    };
    let sent = match memory(
        qmp,
        SocketAddrV4::new(ip, ports.memory),
        options,
        &mut cancel,
        on_running,
    )
    .await
    {
        Ok(sent) => sent,
        Err(e) => {
            abandon_mirrors(qmp, &mirrored).await;
            return Err(e);
        }
    };
    // The guest is paused for good here: finish the copies, then let the target run.
    let stopped = Instant::now();
    let post_copy = matches!(sent, Sent::PostCopy);
    if post_copy {
        on_post_copy();
    }
    complete_mirrors(qmp, &mirrored).await?;
    handover(
        SocketAddrV4::new(ip, ports.handover),
        serial_log,
        post_copy,
        connector.as_ref(),
    )
    .await?;
    let after = u64::try_from(stopped.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut outcome = match sent {
        Sent::Completed(outcome) => outcome,
        // The guest runs on the target and faults in what it lacks; the rest streams on.
        Sent::PostCopy => post_copy_completed(qmp).await?,
    };
    outcome.pause_ms = Some(outcome.downtime_ms.unwrap_or(0) + after);
    Ok(outcome)
}

/// How the memory stream ended for the source.
enum Sent {
    Completed(Outcome),
    /// Switched to post-copy: the source is stopped, pages still flow.
    PostCopy,
}

/// Waits for a post-copy migration to finish sending.
async fn post_copy_completed(qmp: &Qmp) -> Result<Outcome, MigrateError> {
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or_default() {
            "completed" => return Ok(Outcome::of(&info)),
            "failed" | "postcopy-paused" | "cancelled" => {
                let why = info["error-desc"]
                    .as_str()
                    .unwrap_or("the post-copy stream broke");
                return Err(MigrateError::Failed(format!(
                    "after the switch to post-copy: {why}"
                )));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn job(node: &str) -> String {
    format!("mirror-{node}")
}

fn nbd_node(node: &str) -> String {
    format!("migrate-{node}")
}

async fn mirror(
    qmp: &Qmp,
    ip: Ipv4Addr,
    port: u16,
    disks: &[String],
    tls: Option<&str>,
) -> Result<(), MigrateError> {
    for node in disks {
        let mut target = json!({"driver": "nbd", "node-name": nbd_node(node), "export": node,
            "server": {"type": "inet", "host": ip.to_string(), "port": port.to_string()}});
        if let Some(id) = tls {
            target["tls-creds"] = json!(id);
            target["tls-hostname"] = json!(MIGRATION_TLS_NAME);
        }
        qmp.execute("blockdev-add", Some(target)).await?;
        qmp.execute(
            "blockdev-mirror",
            Some(
                json!({"job-id": job(node), "device": node, "target": nbd_node(node),
                "sync": "top", "copy-mode": "write-blocking", "auto-dismiss": true}),
            ),
        )
        .await?;
    }
    let deadline = Instant::now() + MIRROR_READY;
    loop {
        let jobs = qmp.execute("query-block-jobs", None).await?;
        let jobs = jobs.as_array().cloned().unwrap_or_default();
        let ready = disks.iter().all(|node| {
            jobs.iter()
                .any(|j| j["device"] == job(node).as_str() && j["ready"] == true)
        });
        if ready {
            return Ok(());
        }
        if let Some(node) = disks
            .iter()
            .find(|node| !jobs.iter().any(|j| j["device"] == job(node).as_str()))
        {
            return Err(MigrateError::Failed(format!(
                "copying disk {node} to the target stopped"
            )));
        }
        if Instant::now() > deadline {
            return Err(MigrateError::Failed(format!(
                "the disks were not copied within {}s",
                MIRROR_READY.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the mirrors at once (the migration failed) and drops their NBD clients.
async fn abandon_mirrors(qmp: &Qmp, disks: &[String]) {
    for node in disks {
        let _ = qmp
            .execute(
                "block-job-cancel",
                Some(json!({"device": job(node), "force": true})),
            )
            .await;
    }
    for node in disks {
        // The job lets go of its target asynchronously: retry the removal briefly.
        for _ in 0..50 {
            match qmp
                .execute("blockdev-del", Some(json!({"node-name": nbd_node(node)})))
                .await
            {
                Ok(_) => break,
                Err(e)
                    if e.to_string().contains("not found")
                        || e.to_string().contains("Failed to find") =>
                {
                    break;
                }
                // Still in use by the ending job.
                Err(e) if e.class() == Some("GenericError") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => break,
            }
        }
    }
}

/// Finishes ready mirrors: the target then holds everything the guest wrote.
async fn complete_mirrors(qmp: &Qmp, disks: &[String]) -> Result<(), MigrateError> {
    for node in disks {
        qmp.execute("block-job-cancel", Some(json!({"device": job(node)})))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = qmp.execute("query-block-jobs", None).await?;
        let left = jobs.as_array().is_some_and(|j| {
            j.iter()
                .any(|j| disks.iter().any(|n| j["device"] == job(n).as_str()))
        });
        if !left {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(MigrateError::Failed(
                "the disk copies did not finish within 30s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn memory(
    qmp: &Qmp,
    target: SocketAddrV4,
    options: &MigrationOptions,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
    on_running: impl FnOnce(),
) -> Result<Sent, MigrateError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "auto-converge", "state": options.auto_converge},
            {"capability": "postcopy-ram", "state": options.allow_post_copy},
        ]})),
    )
    .await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({"downtime-limit": options.max_downtime_ms,
            "max-bandwidth": options.bandwidth_bytes_per_second})),
    )
    .await?;
    qmp.execute("migrate", Some(json!({"uri": format!("tcp:{target}")})))
        .await?;
    on_running();
    let started = Instant::now();
    let completion = Duration::from_secs(options.completion_timeout_seconds);
    let progress = Duration::from_secs(options.progress_timeout_seconds);
    let mut least_remaining = u64::MAX;
    let mut progressed = Instant::now();
    let mut abort: Option<String> = None;
    let mut switching = false;
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or_default() {
            "completed" => return Ok(Sent::Completed(Outcome::of(&info))),
            // The source has stopped the guest and sent its devices: the target may run.
            "postcopy-active" => return Ok(Sent::PostCopy),
            "failed" => {
                let why = info["error-desc"]
                    .as_str()
                    .unwrap_or("the memory stream failed");
                return Err(MigrateError::Failed(why.to_owned()));
            }
            "cancelled" => {
                return Err(MigrateError::Stopped(
                    abort.unwrap_or_else(|| "the migration was cancelled".into()),
                ));
            }
            _ => {}
        }
        if abort.is_none() {
            let remaining = info["ram"]["remaining"].as_u64().unwrap_or(u64::MAX);
            if remaining < least_remaining {
                least_remaining = remaining;
                progressed = Instant::now();
            }
            if *cancel.borrow() {
                abort = Some("the migration was cancelled".into());
            } else if started.elapsed() > completion && options.allow_post_copy {
                if !switching {
                    info!(
                        seconds = completion.as_secs(),
                        "not complete within the completion timeout: switching to post-copy"
                    );
                    qmp.execute("migrate-start-postcopy", None).await?;
                    switching = true;
                }
            } else if started.elapsed() > completion {
                abort = Some(format!(
                    "the migration did not complete within {}s",
                    completion.as_secs()
                ));
            } else if progressed.elapsed() > progress {
                abort = Some(format!(
                    "the migration made no progress for {}s",
                    progress.as_secs()
                ));
            }
            if let Some(why) = &abort {
                warn!(why, "cancelling the migration");
                qmp.execute("migrate_cancel", None).await?;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cancel.changed() => {}
        }
    }
}

async fn handover(
    target: SocketAddrV4,
    serial_log: &Path,
    post_copy: bool,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(), MigrateError> {
    let history = read_tail(serial_log, MAX_HISTORY);
    let late = || {
        MigrateError::Failed(format!(
            "the target at {target} did not take the hand-over within {HANDSHAKE:?}"
        ))
    };
    let tcp = tokio::time::timeout(HANDSHAKE, TcpStream::connect(target))
        .await
        .map_err(|_| late())?
        .map_err(io(format!("connecting to the target at {target}")))?;
    let mut stream: Box<dyn Stream> = match tls {
        Some(connector) => {
            let name =
                rustls::pki_types::ServerName::try_from(MIGRATION_TLS_NAME).map_err(tls_error)?;
            Box::new(
                tokio::time::timeout(HANDSHAKE, connector.connect(name, tcp))
                    .await
                    .map_err(|_| late())?
                    .map_err(io("the hand-over's TLS"))?,
            )
        }
        None => Box::new(tcp),
    };
    let header = format!(
        "{}\n",
        json!({"history": history.len(), "postCopy": post_copy})
    );
    stream
        .write_all(header.as_bytes())
        .await
        .map_err(io("sending the hand-over"))?;
    stream
        .write_all(&history)
        .await
        .map_err(io("sending the console history"))?;
    stream
        .flush()
        .await
        .map_err(io("sending the console history"))?;
    let mut answer = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await;
    match read {
        Ok(Ok(_)) if answer.trim() == "resumed" => Ok(()),
        Ok(Ok(_)) => Err(MigrateError::Failed(
            "the target did not resume the guest".into(),
        )),
        Ok(Err(e)) => Err(io("reading the target's answer")(e)),
        Err(_) => Err(MigrateError::Failed(
            "the target did not answer the hand-over within 30s".into(),
        )),
    }
}

/// The last `max` bytes of `path` (nothing when it cannot be read).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    bytes
}

/// The serial console's log of a launched VMI.
pub fn serial_log(serial_socket: &Path) -> PathBuf {
    serial_socket.with_file_name("virt-serial0.log")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_local_writable_disks_are_copied() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "m"},
            "spec": {"domain": {"devices": {"disks": [
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "scratch", "disk": {}},
                {"name": "ro", "disk": {"readonly": true}},
                {"name": "cloudinit", "disk": {}},
                {"name": "iso", "cdrom": {}}]}},
              "volumes": [
                {"name": "root", "containerDisk": {"image": "i"}},
                {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}},
                {"name": "ro", "containerDisk": {"image": "i"}},
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "x"}},
                {"name": "iso", "containerDisk": {"image": "i"}}]}
        }))
        .unwrap();
        assert_eq!(local_disks(&vmi), ["drive-ua-root", "drive-ua-scratch"]);
    }

    #[test]
    fn the_history_is_the_tail_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("virt-serial0.log");
        std::fs::write(&log, b"0123456789").unwrap();
        assert_eq!(read_tail(&log, 4), b"6789");
        assert_eq!(read_tail(&log, 100), b"0123456789");
        assert!(read_tail(&dir.path().join("none"), 4).is_empty());
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[tokio::test]
    async fn a_port_taken_before_qemu_binds_it_is_replaced() {
        let mut tried = Vec::new();
        let port = bind_retrying(Ipv4Addr::LOCALHOST, |port| {
            tried.push(port);
            let taken = tried.len() == 1;
            async move {
                if taken {
                    Err(qmp::QmpError::Command {
                        class: "GenericError".into(),
                        desc: "Failed to bind socket: Address already in use".into(),
                    })
                } else {
                    Ok(Value::Null)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(tried.len(), 2);
        assert_eq!(port, tried[1]);
        // Any other failure is the caller's.
        let err = bind_retrying(Ipv4Addr::LOCALHOST, |_| async {
            Err::<Value, _>(qmp::QmpError::Command {
                class: "GenericError".into(),
                desc: "no such export".into(),
            })
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no such export"), "{err}");
    }
}
