//! virt-handler: the node agent. It makes the VMIs scheduled to its node match their
//! objects.
//!
//! Owns: one session per VMI on this node ([`session`]): it waits for the VMI's launcher,
//! hands it the VMI (`Sync`), follows its reports and writes what they mean into the
//! VMI's status ([`status`]: Running, Paused, Succeeded, Failed, conditions, interfaces),
//! and on deletion asks the launcher to shut the guest down within its grace period.
//! Also the node's KubeVirt labels and heartbeat ([`node`]) and the endpoint virt-api
//! forwards pause, unpause, reset, soft reboot, guest OS info, console and VNC to
//! ([`endpoint`]).
//!
//! Does not own: the launcher pod (the controller renders it, the kubelet or pod runner
//! runs it) or QEMU (the launcher's). After a restart the handler re-attaches to the
//! launchers it finds; a launcher keeps its guest running while no handler watches.

pub mod endpoint;
pub mod migration;
pub mod node;
pub mod session;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use launcher_proto::{RunDir, RunPath};

use api::v1::{VirtualMachineInstance, VmiPhase};
use futures_util::StreamExt;
use kube::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tracing::{debug, warn};

/// The label the controller puts on a VMI scheduled to a node.
pub const NODE_LABEL: &str = "kubevirt.io/nodeName";

/// How the handler runs on its node.
#[derive(Debug)]
pub struct Config {
    pub node_name: String,
    /// Where the node's launchers keep their run directories (control sockets, consoles).
    pub launchers: Launchers,
    /// The node's address, where migration targets on it are reached.
    pub node_address: String,
    /// Set when guests are emulated (no usable KVM), with the reason: labels the node.
    pub software_emulation: Option<String>,
    /// The endpoint virt-api calls, if this handler serves one.
    pub endpoint: Option<endpoint::EndpointConfig>,
    /// The migration streams' mutual TLS, handed to both launchers of each migration;
    /// `None` leaves them plain TCP.
    pub migration_tls: Option<launcher_proto::MigrationTls>,
}

/// Where a node's launchers keep their run directories.
#[derive(Debug, Clone)]
pub enum Launchers {
    /// Host processes sharing one run directory (`launcher::paths::NodePaths::run`).
    Shared(PathBuf),
    /// Each in its pod, in the pod's `private` emptyDir, kept by the kubelet (or the pod
    /// runner) under this pods directory: `<pods>/<pod uid>/volumes/kubernetes.io~empty-dir/private`.
    /// The pod is the one the VMI's `status.activePods` places on this node.
    InPods(PathBuf),
}

impl Launchers {
    /// The run directory of the launcher in the pod `pod_uid` on this node.
    pub fn run_dir(&self, pod_uid: &str) -> Option<RunDir> {
        match self {
            Self::Shared(dir) => Some(RunDir::shared(dir)),
            Self::InPods(pods) => {
                // A pod uid names a directory: nothing but a plain name.
                api::validate::dns1123_label(pod_uid).ok()?;
                let dir = pods
                    .join(pod_uid)
                    .join("volumes/kubernetes.io~empty-dir")
                    .join(reconcile::pod::PRIVATE_VOLUME);
                dir.is_dir()
                    .then(|| RunDir::mounted(dir, reconcile::pod::PRIVATE_DIR.into()))
            }
        }
    }
}

struct Ctx {
    client: kube::Client,
    node: String,
    launchers: Launchers,
    node_address: String,
    sessions: Mutex<HashMap<String, session::Session>>,
    /// Migration targets on this node, by VMI uid: the migration's uid and its session.
    targets: Mutex<HashMap<String, (String, migration::TargetSession)>>,
    /// The migrate and cancel requests already sent (`<migration uid>/<what>`).
    migration_requests: Mutex<std::collections::HashSet<String>>,
    /// The console and VNC connections, one per socket ([`endpoint::Streams`]).
    streams: endpoint::Streams,
    migration_tls: Option<launcher_proto::MigrationTls>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// The run directory of the VMI's launcher on this node, once its pod is known.
    fn run_dir(&self, vmi: &VirtualMachineInstance) -> Option<RunDir> {
        if let Launchers::Shared(dir) = &self.launchers {
            return Some(RunDir::shared(dir));
        }
        let active = vmi.status.as_ref().map(|s| &s.active_pods);
        active
            .into_iter()
            .flatten()
            .filter(|(_, node)| **node == self.node)
            .find_map(|(uid, _)| self.launchers.run_dir(uid))
    }

    /// The control socket of the VMI's launcher on this node, once its pod is known.
    fn socket(&self, vmi: &VirtualMachineInstance) -> Option<RunPath> {
        let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
        Some(self.run_dir(vmi)?.socket(uid))
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {}

/// Runs the handler until the future is dropped.
pub async fn run(client: kube::Client, config: Config) -> anyhow::Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        node: config.node_name.clone(),
        launchers: config.launchers.clone(),
        node_address: config.node_address.clone(),
        sessions: Mutex::new(HashMap::new()),
        targets: Mutex::new(HashMap::new()),
        migration_requests: Mutex::new(std::collections::HashSet::new()),
        streams: endpoint::Streams::default(),
        migration_tls: config.migration_tls.clone(),
    });
    let advertise = config.endpoint.as_ref().map(|e| e.advertise.clone());
    let labels = node::Labels {
        software_emulation: config.software_emulation.is_some(),
        endpoint: advertise,
    };
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), ctx.node.clone(), labels));
    let server = config
        .endpoint
        .map(|e| tokio::spawn(endpoint::serve(e, ctx.clone())));
    let vmis: Api<VirtualMachineInstance> = Api::all(client);
    let selector = watcher::Config::default().labels(&format!("{NODE_LABEL}={}", ctx.node));
    let incoming =
        watcher::Config::default().labels(&format!("{}={}", migration::TARGET_LABEL, ctx.node));
    let _guard = Aborter(
        heartbeat.abort_handle(),
        server.as_ref().map(tokio::task::JoinHandle::abort_handle),
    );
    let log = |r: Result<_, _>| async move {
        if let Err(e) = r {
            debug!(error = %e, "reconcile");
        }
    };
    let local = Controller::new(vmis.clone(), selector)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(log);
    let targets = Controller::new(vmis, incoming)
        .run(reconcile_target, error_policy, ctx)
        .for_each(log);
    // The heartbeat and the endpoint are the handler too: if either ends, the handler
    // ends with it and says why (the server's supervisor takes it from there).
    let endpoint = async {
        match server {
            Some(s) => s.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = async { tokio::join!(local, targets); } => Ok(()),
        r = heartbeat => anyhow::bail!("the node heartbeat stopped: {}", ended(r)),
        r = endpoint => anyhow::bail!("the endpoint stopped: {}", ended(r)),
    }
}

/// How a background task ended, in words.
fn ended(r: Result<(), tokio::task::JoinError>) -> &'static str {
    match r {
        Ok(()) => "it returned",
        Err(e) if e.is_panic() => "it panicked",
        Err(_) => "it was cancelled",
    }
}

/// Aborts the background tasks when the handler's future is dropped.
struct Aborter(tokio::task::AbortHandle, Option<tokio::task::AbortHandle>);

impl Drop for Aborter {
    fn drop(&mut self) {
        self.0.abort();
        if let Some(t) = &self.1 {
            t.abort();
        }
    }
}

async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(uid) = vmi.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    let status = vmi.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let mine = status.node_name.as_deref() == Some(ctx.node.as_str());
    let mut sessions = ctx.sessions.lock().unwrap_or_else(|p| p.into_inner());
    if phase.is_final() || !mine || !matches!(phase, VmiPhase::Scheduled | VmiPhase::Running) {
        if let Some(s) = sessions.remove(&uid) {
            s.stop();
        }
        return Ok(Action::await_change());
    }
    let session = sessions
        .entry(uid.clone())
        .or_insert_with(|| session::Session::start(ctx.clone(), &vmi));
    if vmi.metadata.deletion_timestamp.is_some() && !session.shutdown_sent {
        let grace = vmi
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0)
            .unsigned_abs();
        // Without its pod known, the launcher is asked on a later pass.
        if let Some(socket) = ctx.socket(&vmi) {
            session.shutdown_sent = true;
            tokio::spawn(async move {
                let request = launcher_proto::Request::Shutdown {
                    grace_seconds: grace,
                };
                if let Err(e) =
                    launcher_proto::call(&socket, &request, Duration::from_secs(10)).await
                {
                    warn!(error = %e, "asking the launcher to shut down");
                }
            });
        }
    }
    drop(sessions);
    migration::drive_source(&ctx, &vmi);
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A VMI migrating to this node: follow the target until the migration ends.
async fn reconcile_target(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let Some(uid) = vmi.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    let state = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .filter(|s| s.target_node.as_deref() == Some(ctx.node.as_str()) && !s.is_final());
    let mut targets = ctx.targets.lock().unwrap_or_else(|p| p.into_inner());
    let Some(migration_uid) = state.and_then(|s| s.migration_uid.clone()) else {
        targets.remove(&uid);
        return Ok(Action::await_change());
    };
    if vmi.metadata.deletion_timestamp.is_some() {
        targets.remove(&uid);
        return Ok(Action::await_change());
    }
    if targets.get(&uid).is_none_or(|(m, _)| *m != migration_uid) {
        let session = migration::TargetSession::start(ctx.clone(), &vmi, migration_uid.clone());
        targets.insert(uid, (migration_uid, session));
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<VirtualMachineInstance>, _: &Error, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(5))
}
