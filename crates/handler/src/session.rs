//! One VMI's session with its launcher: wait for the control socket, `Sync`, then follow
//! the launcher's reports into the VMI's status until the VMI ends.

use std::sync::Arc;
use std::time::Duration;

use api::v1::VirtualMachineInstance;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use launcher_proto::{DomainState, Request, Response, RunPath, Status};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::Ctx;

/// How long a launcher may take to open its socket once its VMI is Scheduled.
const LAUNCHER_APPEARS: Duration = Duration::from_secs(120);
/// How long a Running VMI's launcher may be unreachable before the VMI is Failed.
const LAUNCHER_LOST: Duration = Duration::from_secs(10);

/// A running session; stops when dropped or stopped.
#[derive(Debug)]
pub struct Session {
    task: JoinHandle<()>,
    pub shutdown_sent: bool,
}

impl Session {
    pub(crate) fn start(ctx: Arc<Ctx>, vmi: &VirtualMachineInstance) -> Self {
        let ns = vmi.metadata.namespace.clone().unwrap_or_default();
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let socket = ctx.socket(vmi);
        Self {
            task: tokio::spawn(follow(ctx, ns, name, uid, socket)),
            shutdown_sent: false,
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn finished(state: &DomainState) -> bool {
    matches!(
        state,
        DomainState::Exited { .. } | DomainState::Failed { .. }
    )
}

/// The final status a launcher left behind when it exited.
fn left_behind(socket: &RunPath) -> Option<Status> {
    let bytes = socket.with_extension("exit").read(1 << 20).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Follows the launcher at `socket`, or, while its pod is not known yet, at the socket
/// the VMI's `status.activePods` leads to.
async fn follow(ctx: Arc<Ctx>, ns: String, name: String, uid: String, mut socket: Option<RunPath>) {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let mut synced = false;
    let mut unreachable_since = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(last) = socket.as_ref().and_then(left_behind)
            && last.uid == uid
        {
            if matches!(
                last.state,
                DomainState::Exited {
                    exit: launcher_proto::Exit::Migrated
                }
            ) {
                // The guest migrated away: its new node reports it, and the word is stale.
                forget_exit(socket.as_ref());
                continue;
            }
            report(&ctx, &vmis, &name, &uid, &last).await;
            forget_exit(socket.as_ref());
            return;
        }
        let watched = match &socket {
            Some(at) => launcher_proto::watch(at).await.ok(),
            None => None,
        };
        let Some(mut conn) = watched else {
            let current = vmis.get_opt(&name).await.ok().flatten();
            if socket.is_none()
                && let Some(vmi) = current
                    .as_ref()
                    .filter(|v| v.metadata.uid.as_deref() == Some(uid.as_str()))
            {
                socket = ctx.socket(vmi);
            }
            let running = matches!(
                current.and_then(|v| v.status).and_then(|s| s.phase),
                Some(api::v1::VmiPhase::Running)
            );
            let limit = if running || synced {
                LAUNCHER_LOST
            } else {
                LAUNCHER_APPEARS
            };
            if unreachable_since.elapsed() > limit {
                let gone = Status {
                    uid: uid.clone(),
                    state: DomainState::Exited {
                        exit: launcher_proto::Exit::Crashed {
                            message: format!(
                                "the launcher has not answered for {}s",
                                limit.as_secs()
                            ),
                        },
                    },
                    qemu_pid: None,
                    software_emulation: None,
                    serial_socket: None,
                    vnc_socket: None,
                    agent_connected: false,
                    interfaces: Vec::new(),
                    guest_interfaces: Vec::new(),
                    guest_os_info: None,
                    fs_freeze_status: None,
                    migration: None,
                    readiness: None,
                };
                report(&ctx, &vmis, &name, &uid, &gone).await;
                return;
            }
            tokio::time::sleep(pause).await;
            // A unix connect costs microseconds: poll often, the VMI's start waits on it.
            pause = (pause * 2).min(Duration::from_millis(20));
            continue;
        };
        pause = Duration::from_millis(2);
        if !synced && let Some(at) = &socket {
            match vmis.get_opt(&name).await {
                Ok(Some(vmi)) if vmi.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    let request = Request::Sync { vmi: Box::new(vmi) };
                    match launcher_proto::call(at, &request, Duration::from_secs(10)).await {
                        Ok(Response::Status(_)) => synced = true,
                        Ok(other) => warn!(vmi = name, ?other, "the launcher refused Sync"),
                        Err(e) => warn!(vmi = name, error = %e, "Sync"),
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    debug!(error = %e, "reading the VMI");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        loop {
            match conn.recv::<Response>().await {
                Ok(Some(Response::Status(status))) => {
                    report(&ctx, &vmis, &name, &uid, &status).await;
                    if finished(&status.state) {
                        return;
                    }
                }
                Ok(Some(other)) => debug!(?other, "unexpected launcher message"),
                Ok(None) | Err(_) => break,
            }
        }
        // The launcher went away mid-watch: look for its last words, else reconnect.
        unreachable_since = tokio::time::Instant::now();
    }
}

fn forget_exit(socket: Option<&RunPath>) {
    if let Some(at) = socket {
        let _ = at.with_extension("exit").remove();
    }
}

/// The launcher pod's IP.
async fn pod_ip(ctx: &Ctx, ns: &str, uid: &str) -> Option<String> {
    let on_this_node =
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(ctx.node.as_str());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("kubevirt.io/created-by={uid}")))
        .await
        .ok()?;
    list.items
        .into_iter()
        .filter(|p| on_this_node(p) && p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status.and_then(|s| s.pod_ip))
}

/// Writes what `launcher` means into the VMI's status, re-reading on conflicts.
async fn report(
    ctx: &Ctx,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    uid: &str,
    launcher: &Status,
) {
    let mut ip: Option<Option<String>> = None;
    for _ in 0..10 {
        let Ok(Some(mut vmi)) = vmis.get_opt(name).await else {
            return;
        };
        if vmi.metadata.uid.as_deref() != Some(uid) {
            return;
        }
        // After a migration the VMI is the target node's to report.
        if vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) != Some(ctx.node.as_str()) {
            return;
        }
        if ip.is_none()
            && matches!(
                launcher.state,
                DomainState::Running | DomainState::Paused { .. }
            )
        {
            let ns = vmi.metadata.namespace.clone().unwrap_or_default();
            ip = Some(pod_ip(ctx, &ns, uid).await);
        }
        let next = crate::status::apply(
            &vmi,
            launcher,
            ip.clone().flatten().as_deref(),
            Timestamp::now(),
        );
        if vmi.status.as_ref() == Some(&next) {
            return;
        }
        let phase = next.phase;
        vmi.status = Some(next);
        match vmis.replace(name, &PostParams::default(), &vmi).await {
            Ok(_) => {
                info!(vmi = name, ?phase, state = ?launcher.state, "VMI status");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                warn!(vmi = name, error = %e, "writing the VMI status");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
