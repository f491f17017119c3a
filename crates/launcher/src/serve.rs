//! Pod mode: `virt-launcher serve --uid UID ...`, the launcher as it runs in a VMI's pod.
//!
//! The launcher listens on its control socket ([`launcher_proto::socket_path`]) and waits
//! for the handler's `Sync`, which carries the VMI. It then prepares the disks and starts
//! QEMU (vCPUs held when `startStrategy: Paused`), and from then on answers the handler's
//! requests and reports every state change to its watchers. SIGTERM (the pod being
//! deleted) shuts the guest down within the grace period. When QEMU has ended, or the
//! VMI could not start, the launcher writes its final status next to the socket (so a
//! handler that was down at that moment still learns how it ended), gives watchers a
//! moment to read it, and exits: 0 when the guest stopped, 1 when it crashed or never
//! started.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use api::defaults::{DefaultsConfig, set_vmi_defaults};
use api::v1::{StartStrategy, VirtualMachineInstance};
use launcher_proto::{
    Conn, DomainInterface, DomainState, Exit, MigrationOptions, MigrationPhase, MigrationRole,
    MigrationStatus, Readiness, Request, Response, Status, TargetPorts,
};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::accel::{self, Accel};
use crate::agent::{Agent, AgentError};
use crate::domain;
use crate::migrate::{self, Incoming};
use crate::paths::NodePaths;
use crate::probe;
use crate::standalone::{LaunchConfig, Launched, RunError, launch_with};

/// Options of `virt-launcher serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub uid: String,
    pub grace: Duration,
    pub paths: NodePaths,
    pub qemu: PathBuf,
    pub tcg_tb_size_mib: u32,
    pub accel: Option<Accel>,
}

/// Guest agent timings: a request's answer, probing until it answers, then polling.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);
const AGENT_PROBE: Duration = Duration::from_secs(2);
const AGENT_POLL: Duration = Duration::from_secs(10);

/// How long a finished launcher waits for a watcher to read its final status.
const LINGER: Duration = Duration::from_secs(5);

struct Shared {
    status: watch::Sender<Status>,
    launched: Mutex<Option<Launched>>,
    config: LaunchConfig,
    grace: Duration,
    /// Set once a watcher has been sent a final state.
    final_seen: watch::Sender<bool>,
    /// The guest agent's channel, once QEMU runs.
    agent: OnceLock<Arc<Agent>>,
    /// The thaw due after a freeze with an unfreeze timeout.
    thaw_timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The disks a migration copies, once started.
    local_disks: OnceLock<Vec<String>>,
    /// The pod network's netdev and the guest's address on it, once started.
    pod_netdev: OnceLock<Option<(String, std::net::Ipv4Addr)>>,
    /// Guest port (and, for probes, which probe) -> the local address forwarding to it.
    /// Each probe has forwards of its own, so its connection is the only one on them.
    forwards: Mutex<std::collections::HashMap<(Option<probe::Role>, u16), std::net::SocketAddrV4>>,
    /// Why the guest was ended for failing its liveness probe.
    liveness_failed: OnceLock<String>,
    /// Set to abort the outgoing migration.
    cancel_migration: watch::Sender<bool>,
    /// The guest left for another node: QEMU's end is reported as [`Exit::Migrated`].
    migrated: AtomicBool,
    /// The outgoing migration is sending memory: the switch-over's pause is not the user's.
    migrating: AtomicBool,
}

impl Shared {
    /// The uid of the migration this launcher takes part in ("" when none).
    fn migration_uid(&self) -> String {
        self.status
            .borrow()
            .migration
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default()
    }

    fn set_migration(&self, f: impl FnOnce(&mut MigrationStatus)) {
        self.status.send_modify(|s| {
            if let Some(m) = s.migration.as_mut() {
                f(m);
            }
        });
    }
}

/// Serves until the VMI has ended; returns the process exit code.
pub async fn serve(opts: ServeOptions) -> Result<u8, RunError> {
    let accel = opts.accel.clone().unwrap_or_else(accel::detect);
    let software_emulation = match &accel {
        Accel::Tcg { reason } => Some(reason.clone()),
        Accel::Kvm => None,
    };
    let socket = launcher_proto::socket_path(&opts.paths.run, &opts.uid);
    let io = |source| RunError::RunDir {
        path: socket.display().to_string(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let _ = std::fs::remove_file(&socket);
    let exit_file = socket.with_extension("exit");
    let _ = std::fs::remove_file(&exit_file);
    let listener = UnixListener::bind(&socket).map_err(io)?;
    info!(socket = %socket.display(), "waiting for the handler");
    let shared = Arc::new(Shared {
        status: watch::Sender::new(Status {
            uid: opts.uid.clone(),
            state: DomainState::Waiting,
            qemu_pid: None,
            software_emulation,
            serial_socket: None,
            vnc_socket: None,
            agent_connected: false,
            interfaces: Vec::new(),
            guest_interfaces: Vec::new(),
            guest_os_info: None,
            fs_freeze_status: None,
            migration: None,
            readiness: None,
        }),
        launched: Mutex::new(None),
        config: LaunchConfig {
            // In a pod, host disks are allowed only where the node says.
            paths: NodePaths {
                host_disk_dirs: Some(opts.paths.host_disk_dirs.clone().unwrap_or_default()),
                ..opts.paths.clone()
            },
            qemu: opts.qemu.clone(),
            published: Default::default(),
            port_address: "127.0.0.1".into(),
            tcg_tb_size_mib: opts.tcg_tb_size_mib,
            accel,
            forward_ports: true,
        },
        grace: opts.grace,
        final_seen: watch::Sender::new(false),
        agent: OnceLock::new(),
        thaw_timer: Mutex::new(None),
        pod_netdev: OnceLock::new(),
        local_disks: OnceLock::new(),
        forwards: Mutex::new(std::collections::HashMap::new()),
        liveness_failed: OnceLock::new(),
        cancel_migration: watch::Sender::new(false),
        migrated: AtomicBool::new(false),
        migrating: AtomicBool::new(false),
    });
    let accept = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, shared.clone()));
            }
        })
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(io)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io)?;
    let mut status = shared.status.subscribe();
    let finished = |s: &Status| {
        matches!(
            s.state,
            DomainState::Exited { .. } | DomainState::Failed { .. }
        )
    };
    loop {
        tokio::select! {
            _ = status.wait_for(finished) => break,
            _ = sigterm.recv() => stop(&shared, "SIGTERM", shared.grace).await,
            _ = sigint.recv() => stop(&shared, "SIGINT", shared.grace).await,
        }
    }
    let last = shared.status.borrow().clone();
    if let Ok(json) = serde_json::to_vec(&last) {
        let _ = std::fs::write(&exit_file, json);
    }
    info!(state = ?last.state, "domain finished");
    let mut seen = shared.final_seen.subscribe();
    let _ = tokio::time::timeout(LINGER, seen.wait_for(|s| *s)).await;
    accept.abort();
    let _ = std::fs::remove_file(&socket);
    // Dropping the launched domain removes its runtime directory.
    drop(shared.launched.lock().await.take());
    Ok(match last.state {
        DomainState::Exited {
            exit: Exit::GuestShutdown | Exit::Stopped { .. } | Exit::Migrated,
        } => 0,
        _ => 1,
    })
}

/// A signal or a request asked the guest to end: shut it down within `grace`, or, when
/// nothing was started yet, finish at once.
async fn stop(shared: &Arc<Shared>, why: &str, grace: Duration) {
    info!(?grace, "{why}: shutting the guest down");
    if shared.launched.lock().await.is_none() {
        shared.status.send_modify(|s| {
            s.state = DomainState::Exited {
                exit: Exit::Stopped { forced: false },
            }
        });
        return;
    }
    // A migration target that never took over has no guest to shut down.
    let unused_target =
        shared.status.borrow().migration.as_ref().is_some_and(|m| {
            m.role == MigrationRole::Target && m.phase != MigrationPhase::Completed
        });
    let grace = if unused_target { Duration::ZERO } else { grace };
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Some(l) = shared.launched.lock().await.as_ref() {
            l.domain.shutdown(grace).await;
        }
    });
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) {
    let mut conn = Conn::new(stream);
    let request = match conn.recv::<Request>().await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let _ = conn
                .send(&Response::Error {
                    message: e.to_string(),
                    conflict: false,
                })
                .await;
            return;
        }
    };
    if let Request::Watch = request {
        let mut rx = shared.status.subscribe();
        loop {
            let status = rx.borrow_and_update().clone();
            let last = matches!(
                status.state,
                DomainState::Exited { .. } | DomainState::Failed { .. }
            );
            if conn
                .send(&Response::Status(Box::new(status)))
                .await
                .is_err()
            {
                return;
            }
            if last {
                shared.final_seen.send_replace(true);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
    let response = answer(request, &shared).await;
    let _ = conn.send(&response).await;
}

fn refused(message: impl Into<String>, conflict: bool) -> Response {
    Response::Error {
        message: message.into(),
        conflict,
    }
}

async fn answer(request: Request, shared: &Arc<Shared>) -> Response {
    let current = || Response::Status(Box::new(shared.status.borrow().clone()));
    match request {
        Request::Sync { vmi } => {
            if shared.status.borrow().state == DomainState::Waiting {
                shared
                    .status
                    .send_modify(|s| s.state = DomainState::Created);
                tokio::spawn(start(*vmi, shared.clone()));
            }
            current()
        }
        Request::Status | Request::Watch => current(),
        Request::MigrationTarget {
            vmi,
            migration_uid,
            post_copy,
            tls,
        } => {
            let state = shared.status.borrow().state.clone();
            let same = shared
                .status
                .borrow()
                .migration
                .as_ref()
                .is_some_and(|m| m.uid == migration_uid);
            if same {
                return current();
            }
            if state != DomainState::Waiting {
                return refused("this launcher already runs a domain", true);
            }
            shared.status.send_modify(|s| {
                s.state = DomainState::Created;
                s.migration = Some(migration_status(migration_uid, MigrationRole::Target));
            });
            tokio::spawn(start_target(*vmi, post_copy, tls, shared.clone()));
            current()
        }
        Request::Migrate {
            migration_uid,
            host,
            ports,
            options,
            tls,
        } => {
            let status = shared.status.borrow().clone();
            if status
                .migration
                .as_ref()
                .is_some_and(|m| m.uid == migration_uid && m.phase != MigrationPhase::Failed)
            {
                return current();
            }
            if !matches!(
                status.state,
                DomainState::Running | DomainState::Paused { .. }
            ) {
                return refused("the VMI is not running", true);
            }
            shared.cancel_migration.send_replace(false);
            shared.status.send_modify(|s| {
                s.migration = Some(migration_status(migration_uid, MigrationRole::Source));
            });
            tokio::spawn(start_source(shared.clone(), host, ports, options, tls));
            current()
        }
        Request::CancelMigration => {
            let running = shared.status.borrow().migration.as_ref().is_some_and(|m| {
                m.role == MigrationRole::Source
                    && matches!(m.phase, MigrationPhase::Preparing | MigrationPhase::Running)
            });
            if !running {
                return refused("no migration is running", true);
            }
            shared.cancel_migration.send_replace(true);
            Response::Ok
        }
        Request::Shutdown { grace_seconds } => {
            stop(
                shared,
                "shutdown request",
                Duration::from_secs(grace_seconds),
            )
            .await;
            Response::Ok
        }
        Request::SoftReboot
        | Request::GuestOsInfo
        | Request::UserList
        | Request::FilesystemList
        | Request::Freeze { .. }
        | Request::Unfreeze => {
            let Some(agent) = shared.agent.get().cloned() else {
                return refused(AgentError::NotConnected.to_string(), true);
            };
            let value = |v: Value| Response::Value { value: v };
            let result = match request {
                Request::SoftReboot => agent.reboot(AGENT_TIMEOUT).await.map(|()| Response::Ok),
                Request::GuestOsInfo => agent.guest_info(AGENT_TIMEOUT).await.map(value),
                Request::UserList => agent.user_list(AGENT_TIMEOUT).await.map(value),
                Request::FilesystemList => agent.filesystem_list(AGENT_TIMEOUT).await.map(value),
                Request::Freeze {
                    unfreeze_timeout_seconds,
                } => freeze(shared, agent, unfreeze_timeout_seconds).await,
                _ => thaw(shared, &agent).await,
            };
            result.unwrap_or_else(|e| refused(e.to_string(), matches!(e, AgentError::NotConnected)))
        }
        Request::PortForward { port } => match forward(shared, port, None).await {
            Ok(address) => Response::Value {
                value: serde_json::json!({"address": address.to_string()}),
            },
            Err(message) => refused(message, true),
        },
        Request::Screenshot => {
            let guard = shared.launched.lock().await;
            let Some(launched) = guard.as_ref() else {
                return refused("the domain has not started", true);
            };
            let file = launched.sockets.vnc.with_file_name("screenshot.png");
            let result = launched.domain.screenshot(&file).await;
            let png = result.map_err(|e| e.to_string()).and_then(|()| {
                std::fs::read(&file).map_err(|e| format!("reading the screenshot: {e}"))
            });
            let _ = std::fs::remove_file(&file);
            match png {
                Ok(png) => Response::Value {
                    value: serde_json::json!({
                        "png": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png)
                    }),
                },
                Err(message) => refused(message, false),
            }
        }
        op @ (Request::Pause | Request::Unpause | Request::Reset) => {
            let guard = shared.launched.lock().await;
            let Some(launched) = guard.as_ref() else {
                return refused("the domain has not started", true);
            };
            let state = shared.status.borrow().state.clone();
            let result = match (op, state) {
                (Request::Pause, DomainState::Running) => launched.domain.pause().await,
                (Request::Pause, _) => return refused("the VMI is not running", true),
                (Request::Unpause, DomainState::Paused { .. } | DomainState::Created) => {
                    launched.domain.unpause().await
                }
                (Request::Unpause, _) => return refused("the VMI is not paused", true),
                (_, DomainState::Running | DomainState::Paused { .. }) => {
                    launched.domain.reset().await
                }
                _ => return refused("the VMI is not running", true),
            };
            match result {
                Ok(()) => Response::Ok,
                Err(e) => refused(e.to_string(), false),
            }
        }
    }
}

/// Prepares and starts the VMI, then mirrors the domain's state into the status.
async fn start(mut vmi: VirtualMachineInstance, shared: Arc<Shared>) {
    let uid = vmi.metadata.uid.clone();
    set_vmi_defaults(&mut vmi.spec, uid.as_deref(), &DefaultsConfig::default());
    unready_until_probed(&vmi, &shared);
    let Some(launched) = launch_reported(&vmi, &shared, &shared.config, &[]).await else {
        return;
    };
    let state = launched.domain.state();
    let paused = vmi.spec.start_strategy == Some(StartStrategy::Paused);
    let started = if paused {
        Ok(())
    } else {
        launched.domain.start_vcpus().await
    };
    let agent = Arc::new(Agent::new(&launched.sockets.guest_agent));
    let _ = shared.agent.set(agent.clone());
    tokio::spawn(watch_agent(agent, shared.clone()));
    *shared.launched.lock().await = Some(launched);
    start_probes(&vmi, &shared);
    if let Err(e) = started {
        warn!(error = %e, "vCPUs did not start");
    }
    follow_domain(state, &shared, paused).await;
}

/// What a launched domain tells the status from the start.
fn record_launched(vmi: &VirtualMachineInstance, launched: &Launched, shared: &Arc<Shared>) {
    let pid = launched.domain.pid();
    let interfaces = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .filter(|i| i.state.as_deref() != Some("absent"))
        .map(|i| DomainInterface {
            name: i.name.clone(),
            mac: crate::argv::mac_address(vmi, i),
        })
        .collect();
    let _ = shared.pod_netdev.set(crate::argv::pod_netdev(vmi));
    let _ = shared.local_disks.set(migrate::local_disks(vmi));
    shared.status.send_modify(|s| {
        s.interfaces = interfaces;
        s.qemu_pid = pid;
        s.serial_socket = Some(launched.sockets.serial.clone());
        s.vnc_socket = Some(launched.sockets.vnc.clone());
    });
}

/// Launches the VMI, reporting a failure as the domain's state.
async fn launch_reported(
    vmi: &VirtualMachineInstance,
    shared: &Arc<Shared>,
    config: &LaunchConfig,
    extra: &[String],
) -> Option<Launched> {
    match launch_with(vmi, config, extra).await {
        Ok(l) => {
            record_launched(vmi, &l, shared);
            Some(l)
        }
        Err(e) => {
            let message = crate::error_chain(&e);
            warn!(message, "the VMI could not start");
            shared.set_migration(|m| {
                m.phase = MigrationPhase::Failed;
                m.message = Some(message.clone());
            });
            shared
                .status
                .send_modify(|s| s.state = DomainState::Failed { message });
            None
        }
    }
}

/// Mirrors the domain's state into the status until QEMU has exited.
async fn follow_domain(
    mut state: watch::Receiver<domain::DomainState>,
    shared: &Arc<Shared>,
    paused: bool,
) {
    loop {
        let mut mapped = map_state(&state.borrow_and_update(), paused);
        if let DomainState::Exited { exit } = &mut mapped {
            if shared.migrated.load(Ordering::SeqCst) {
                *exit = Exit::Migrated;
            } else if let Some(why) = shared.liveness_failed.get() {
                *exit = Exit::Crashed {
                    message: why.clone(),
                };
            }
        }
        if matches!(mapped, DomainState::Paused { .. }) && shared.migrating.load(Ordering::SeqCst) {
            // The switch-over: the guest is about to run on the target.
            mapped = DomainState::Running;
        }
        let done = matches!(mapped, DomainState::Exited { .. });
        shared.status.send_modify(|s| s.state = mapped);
        if done || state.changed().await.is_err() {
            return;
        }
    }
}

fn migration_status(uid: String, role: MigrationRole) -> MigrationStatus {
    MigrationStatus {
        uid,
        role,
        phase: MigrationPhase::Preparing,
        message: None,
        aborted: false,
        stopped_by_source: false,
        total_ms: None,
        downtime_ms: None,
        pause_ms: None,
        post_copy: false,
        ports: None,
        address: None,
    }
}

/// The target's side: QEMU waiting for the stream, then the hand-over, then running.
async fn start_target(
    mut vmi: VirtualMachineInstance,
    post_copy: bool,
    tls: Option<launcher_proto::MigrationTls>,
    shared: Arc<Shared>,
) {
    let uid = vmi.metadata.uid.clone();
    set_vmi_defaults(&mut vmi.spec, uid.as_deref(), &DefaultsConfig::default());
    // The source holds the forwarded host ports until the hand-over.
    let config = LaunchConfig {
        forward_ports: false,
        ..shared.config.clone()
    };
    unready_until_probed(&vmi, &shared);
    let Some(launched) = launch_reported(&vmi, &shared, &config, &migrate::target_args()).await
    else {
        return;
    };
    let forwards = crate::argv::forwards(&vmi, &config.published);
    let state = launched.domain.state();
    let qmp = launched.domain.qmp().clone();
    let serial_log = launched.sockets.serial_log.clone();
    let tls_dir = launched.dir.path().join("migration-tls");
    let agent = Arc::new(Agent::new(&launched.sockets.guest_agent));
    let _ = shared.agent.set(agent.clone());
    *shared.launched.lock().await = Some(launched);
    let migration_uid = shared.migration_uid();
    let tls = tls.as_ref().map(|creds| migrate::Tls {
        creds,
        dir: &tls_dir,
        migration: &migration_uid,
    });
    match Incoming::listen(&qmp, &migrate::local_disks(&vmi), post_copy, tls).await {
        Ok(incoming) => {
            let ports = incoming.ports;
            let address = incoming.address.to_string();
            shared.set_migration(|m| {
                m.phase = MigrationPhase::Ready;
                m.ports = Some(ports);
                m.address = Some(address);
            });
            let shared = shared.clone();
            tokio::spawn(async move {
                match incoming.finish(&qmp, &serial_log).await {
                    Ok(post_copy) => {
                        info!(post_copy, "migrated in: the guest runs here");
                        shared.set_migration(|m| {
                            m.phase = MigrationPhase::Completed;
                            m.post_copy = post_copy;
                        });
                        tokio::spawn(watch_agent(agent, shared.clone()));
                        start_probes(&vmi, &shared);
                        take_over_ports(&shared, forwards, &config.port_address).await;
                    }
                    Err(e) => fail_target(&shared, e.to_string()).await,
                }
            });
        }
        Err(e) => fail_target(&shared, e.to_string()).await,
    }
    follow_domain(state, &shared, false).await;
    let failed_before_handover = shared
        .status
        .borrow()
        .migration
        .as_ref()
        .is_some_and(|m| m.phase != MigrationPhase::Completed);
    if failed_before_handover {
        shared.set_migration(|m| {
            if m.phase != MigrationPhase::Failed {
                m.phase = MigrationPhase::Failed;
                m.message = Some("the target's QEMU ended before the hand-over".into());
            }
        });
    }
}

/// Forwards the guest's `ports` here once the source has let go of them (it quits right
/// after the hand-over): each is retried for up to 10 s.
async fn take_over_ports(shared: &Arc<Shared>, forwards: Vec<crate::argv::Forward>, address: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for f in forwards {
        let rule = format!("{}:{address}:{}-:{}", f.proto, f.host, f.guest);
        loop {
            let result = match shared.launched.lock().await.as_ref() {
                Some(l) => l.domain.hostfwd(&f.netdev, &rule).await,
                None => return,
            };
            match result {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    warn!(rule, error = %e, "a forwarded port could not be taken over");
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// The target gave up: report why and end QEMU (the source keeps the guest).
async fn fail_target(shared: &Arc<Shared>, message: String) {
    warn!(message, "the migration target failed");
    shared.set_migration(|m| {
        m.phase = MigrationPhase::Failed;
        m.message = Some(message);
    });
    if let Some(l) = shared.launched.lock().await.as_ref() {
        l.domain.kill();
    }
}

/// The source's side: copy disks and memory, hand over, then end QEMU here.
async fn start_source(
    shared: Arc<Shared>,
    host: String,
    ports: TargetPorts,
    options: MigrationOptions,
    tls: Option<launcher_proto::MigrationTls>,
) {
    let prepared = {
        let guard = shared.launched.lock().await;
        guard.as_ref().map(|l| {
            (
                l.domain.qmp().clone(),
                l.sockets.serial_log.clone(),
                l.dir.path().join("migration-tls"),
            )
        })
    };
    let Some((qmp, serial_log, tls_dir)) = prepared else {
        shared.set_migration(|m| {
            m.phase = MigrationPhase::Failed;
            m.message = Some("the domain has not started".into());
        });
        return;
    };
    let disks = shared.local_disks.get().cloned().unwrap_or_default();
    let migration_uid = shared.migration_uid();
    info!(%host, ?ports, ?disks, "migrating out");
    let running = || {
        shared.migrating.store(true, Ordering::SeqCst);
        shared.set_migration(|m| m.phase = MigrationPhase::Running);
    };
    let switched = || {
        info!("switched to post-copy: the guest runs on the target from now on");
        shared.set_migration(|m| m.post_copy = true);
    };
    let outgoing = migrate::Outgoing {
        host: &host,
        ports,
        options: &options,
        disks: &disks,
        serial_log: &serial_log,
        tls: tls.as_ref().map(|creds| migrate::Tls {
            creds,
            dir: &tls_dir,
            migration: &migration_uid,
        }),
    };
    let result = migrate::run_source(
        &qmp,
        outgoing,
        shared.cancel_migration.subscribe(),
        running,
        switched,
    )
    .await;
    match result {
        Ok(outcome) => {
            info!(?outcome, "migrated out: the guest runs on the target");
            shared.migrated.store(true, Ordering::SeqCst);
            shared.set_migration(|m| {
                m.phase = MigrationPhase::Completed;
                m.total_ms = outcome.total_ms;
                m.downtime_ms = outcome.downtime_ms;
                m.pause_ms = outcome.pause_ms;
            });
            if let Some(l) = shared.launched.lock().await.as_ref() {
                l.domain.shutdown(Duration::ZERO).await;
            }
        }
        Err(e) => {
            shared.migrating.store(false, Ordering::SeqCst);
            let aborted = *shared.cancel_migration.borrow();
            let stopped = matches!(e, migrate::MigrateError::Stopped(_));
            let message = e.to_string();
            warn!(
                message,
                aborted, "the migration failed; the guest stays here"
            );
            shared.set_migration(|m| {
                m.phase = MigrationPhase::Failed;
                m.message = Some(message);
                m.aborted = aborted;
                m.stopped_by_source = stopped;
            });
            // A switch-over that failed leaves the guest stopped: it must run on.
            if shared.status.borrow().state == DomainState::Running
                && let Ok(s) = qmp.query_status().await
                && s.status == "postmigrate"
            {
                let _ = qmp.cont().await;
            }
        }
    }
}

/// A local address forwarding to the guest's TCP `port` on the pod network (made once
/// per port for port-forwarding, and once per port for each probe).
async fn forward(
    shared: &Arc<Shared>,
    port: u16,
    probe: Option<probe::Role>,
) -> Result<std::net::SocketAddrV4, String> {
    let mut forwards = shared.forwards.lock().await;
    if let Some(address) = forwards.get(&(probe, port)) {
        return Ok(*address);
    }
    let Some(Some((netdev, guest_ip))) = shared.pod_netdev.get() else {
        return Err("the VMI has no interface on the pod network".into());
    };
    let guard = shared.launched.lock().await;
    let Some(launched) = guard.as_ref() else {
        return Err("the domain has not started".into());
    };
    // A free port: the kernel picks one, then QEMU binds it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free local port: {e}"))?;
    let host = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, free.port());
    let guest = std::net::SocketAddrV4::new(*guest_ip, port);
    launched
        .domain
        .forward_port(netdev, host, guest)
        .await
        .map_err(|e| e.to_string())?;
    info!(%host, %guest, ?probe, "forwarding a port to the guest");
    forwards.insert((probe, port), host);
    Ok(host)
}

/// Freezes the guest's filesystems, and thaws them after `timeout_seconds` (unless 0 or
/// thawed before).
async fn freeze(
    shared: &Arc<Shared>,
    agent: Arc<Agent>,
    timeout_seconds: u64,
) -> Result<Response, AgentError> {
    if !matches!(shared.status.borrow().state, DomainState::Running) {
        return Ok(refused("the VMI is not running", true));
    }
    agent.freeze(AGENT_TIMEOUT).await?;
    shared
        .status
        .send_modify(|s| s.fs_freeze_status = Some("frozen".into()));
    let mut timer = shared.thaw_timer.lock().await;
    if let Some(old) = timer.take() {
        old.abort();
    }
    if timeout_seconds > 0 {
        let shared = shared.clone();
        *timer = Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(timeout_seconds)).await;
            warn!(
                timeout_seconds,
                "no unfreeze within the unfreeze timeout: thawing"
            );
            match agent.thaw(AGENT_TIMEOUT).await {
                Ok(()) => shared.status.send_modify(|s| s.fs_freeze_status = None),
                Err(e) => warn!(error = %e, "the automatic thaw failed"),
            }
        }));
    }
    Ok(Response::Ok)
}

/// Thaws the guest's filesystems and cancels a pending automatic thaw.
async fn thaw(shared: &Arc<Shared>, agent: &Agent) -> Result<Response, AgentError> {
    if let Some(timer) = shared.thaw_timer.lock().await.take() {
        timer.abort();
    }
    agent.thaw(AGENT_TIMEOUT).await?;
    shared.status.send_modify(|s| s.fs_freeze_status = None);
    Ok(Response::Ok)
}

/// Follows whether the guest agent answers: every 2 s until it does, then every 10 s.
/// While it does, the guest's interfaces are read at each poll and its OS once.
async fn watch_agent(agent: Arc<Agent>, shared: Arc<Shared>) {
    let mut connected = false;
    loop {
        tokio::time::sleep(if connected { AGENT_POLL } else { AGENT_PROBE }).await;
        match shared.status.borrow().state {
            DomainState::Running => {}
            DomainState::Exited { .. } | DomainState::Failed { .. } => return,
            _ => continue,
        }
        let now = agent.ping(AGENT_TIMEOUT).await;
        if now != connected {
            connected = now;
            info!(connected, "guest agent");
            let os = if connected {
                agent.os_info(AGENT_TIMEOUT).await.ok()
            } else {
                None
            };
            shared.status.send_modify(|s| {
                s.agent_connected = connected;
                s.guest_os_info = os;
                if !connected {
                    s.guest_interfaces.clear();
                }
            });
        }
        if connected && let Ok(interfaces) = agent.interfaces(AGENT_TIMEOUT).await {
            shared.status.send_if_modified(|s| {
                let changed = s.guest_interfaces != interfaces;
                s.guest_interfaces = interfaces;
                changed
            });
        }
    }
}

/// A guest with a readiness probe is unready until the probe passes: said before the
/// guest is first reported running (here or, after a migration, on the target).
fn unready_until_probed(vmi: &VirtualMachineInstance, shared: &Arc<Shared>) {
    if vmi.spec.readiness_probe.is_some() {
        shared.status.send_modify(|s| {
            s.readiness = Some(Readiness {
                ready: false,
                message: "the readiness probe has not passed yet".into(),
            })
        });
    }
}

/// Starts the VMI's probes. A readiness probe makes the guest unready until it passes; a
/// failed liveness probe ends the guest ([`probe`]).
fn start_probes(vmi: &VirtualMachineInstance, shared: &Arc<Shared>) {
    let specs = [
        (probe::Role::Readiness, &vmi.spec.readiness_probe),
        (probe::Role::Liveness, &vmi.spec.liveness_probe),
    ];
    for (role, spec) in specs {
        let Some(spec) = spec else { continue };
        let p = match probe::Probe::from_spec(vmi, spec) {
            Ok(p) => p,
            Err(why) => {
                warn!(?role, why = %why, "the probe cannot run");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let guest = ProbedGuest(shared.clone());
            let report = |ready: bool, message: String| {
                shared
                    .status
                    .send_modify(|s| s.readiness = Some(Readiness { ready, message }))
            };
            if let Some(why) = probe::run(&guest, &p, role, report).await {
                warn!(why, "ending the guest");
                let _ = shared.liveness_failed.set(why);
                stop(&shared, "liveness probe failed", Duration::ZERO).await;
            }
        });
    }
}

/// The guest as the probes reach it.
struct ProbedGuest(Arc<Shared>);

impl probe::Guest for ProbedGuest {
    fn activity(&self) -> probe::Activity {
        match self.0.status.borrow().state {
            DomainState::Running => probe::Activity::Running,
            DomainState::Exited { .. } | DomainState::Failed { .. } => probe::Activity::Ended,
            _ => probe::Activity::Waiting,
        }
    }

    async fn started(&self) -> bool {
        let mut rx = self.0.status.subscribe();
        let state = rx
            .wait_for(|s| {
                matches!(
                    s.state,
                    DomainState::Running | DomainState::Exited { .. } | DomainState::Failed { .. }
                )
            })
            .await
            .map(|s| s.state.clone());
        matches!(state, Ok(DomainState::Running))
    }

    async fn forward(
        &self,
        role: probe::Role,
        port: u16,
    ) -> Result<std::net::SocketAddrV4, String> {
        forward(&self.0, port, Some(role)).await
    }

    async fn usernet(&self) -> Result<String, String> {
        let guard = self.0.launched.lock().await;
        let launched = guard.as_ref().ok_or("the domain has not started")?;
        launched.domain.usernet().await.map_err(|e| e.to_string())
    }

    async fn exec(&self, command: &[String]) -> Result<i64, String> {
        let agent = self
            .0
            .agent
            .get()
            .ok_or("the guest agent is not connected")?;
        agent
            .exec(command, AGENT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    async fn ping(&self, timeout: Duration) -> bool {
        match self.0.agent.get() {
            Some(agent) => agent.ping(timeout).await,
            None => false,
        }
    }
}

fn map_state(state: &domain::DomainState, start_paused: bool) -> DomainState {
    match state {
        domain::DomainState::Created if start_paused => DomainState::Paused {
            reason: "startStrategy".into(),
        },
        domain::DomainState::Created => DomainState::Created,
        domain::DomainState::Running => DomainState::Running,
        domain::DomainState::Paused { reason } => DomainState::Paused {
            reason: reason.clone(),
        },
        domain::DomainState::Exited(exit) => DomainState::Exited {
            exit: match exit {
                domain::Exit::GuestShutdown => Exit::GuestShutdown,
                domain::Exit::Stopped { forced } => Exit::Stopped { forced: *forced },
                domain::Exit::Crashed { message } => Exit::Crashed {
                    message: message.clone(),
                },
            },
        },
    }
}
