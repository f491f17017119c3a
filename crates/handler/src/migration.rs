//! The handler's part in a live migration.
//!
//! - Target node (the VMI carries `kubevirt.io/migrationTargetNodeName=<this node>`): ask
//!   the target pod's launcher to get ready, publish where it listens in
//!   `status.migrationState` (`targetNodeAddress`, `targetDirectMigrationNodePorts`),
//!   and once the guest runs here take the VMI over: `status.nodeName`, the node label,
//!   `completed` and `endTimestamp`. A target that fails marks the migration failed.
//! - Source node: once the target's address is published, tell the launcher to migrate
//!   (or to cancel when `abortRequested` is set); the launcher's progress reaches the
//!   status through the session's reports ([`apply`]).
//!
//! The migration controller owns the phases, the target pod and the clean-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::v1::{
    VirtualMachineInstance, VirtualMachineInstanceMigrationState, VirtualMachineInstanceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use launcher_proto::{
    MigrationOptions, MigrationPhase, MigrationRole, MigrationStatus, Request, Response,
    TargetPorts,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{Ctx, NODE_LABEL};

/// The label naming the node a VMI is migrating to.
pub const TARGET_LABEL: &str = "kubevirt.io/migrationTargetNodeName";

/// Upstream's defaults (`pkg/virt-config/virt-config.go`).
pub const PROGRESS_TIMEOUT_SECONDS: u64 = 150;
pub const COMPLETION_TIMEOUT_PER_GIB_SECONDS: u64 = 150;
pub const MAX_DOWNTIME_MS: u64 = 900;

/// How long the target pod's launcher may take to open its socket.
const TARGET_APPEARS: Duration = Duration::from_secs(120);

/// The ports map of `status.migrationState`: each target port and the stream it takes.
pub fn ports_map(ports: &TargetPorts) -> BTreeMap<String, i32> {
    BTreeMap::from([
        (ports.memory.to_string(), 0),
        (ports.disks.to_string(), 10809),
        (ports.handover.to_string(), 1),
    ])
}

/// The ports back from `status.migrationState`.
pub fn ports_of(map: &BTreeMap<String, i32>) -> Option<TargetPorts> {
    let find = |stream: i32| {
        map.iter()
            .find(|(_, s)| **s == stream)
            .and_then(|(port, _)| port.parse().ok())
    };
    Some(TargetPorts {
        memory: find(0)?,
        disks: find(10809)?,
        handover: find(1)?,
    })
}

/// How `vmi`'s migration may go: its `migrationConfiguration` (upstream's defaults and
/// the MigrationPolicy's), else upstream's defaults.
pub fn options(vmi: &VirtualMachineInstance) -> MigrationOptions {
    let gib = reconcile::pod::guest_memory(vmi).div_ceil(1 << 30).max(1);
    let c = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|s| s.migration_configuration.clone())
        .unwrap_or_default();
    let seconds =
        |v: Option<i64>, default: u64| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
    MigrationOptions {
        progress_timeout_seconds: seconds(c.progress_timeout, PROGRESS_TIMEOUT_SECONDS),
        completion_timeout_seconds: seconds(
            c.completion_timeout_per_gib,
            COMPLETION_TIMEOUT_PER_GIB_SECONDS,
        )
        .saturating_mul(gib),
        max_downtime_ms: MAX_DOWNTIME_MS,
        bandwidth_bytes_per_second: c
            .bandwidth_per_migration
            .as_ref()
            .and_then(|q| api::quantity::to_units(q).ok())
            .unwrap_or(0),
        auto_converge: c.allow_auto_converge == Some(true),
        allow_post_copy: c.allow_post_copy == Some(true),
    }
}

/// The source launcher's report folded into `status.migrationState`: when the memory
/// started to move, and how it failed or was aborted.
pub fn apply(
    status: &mut VirtualMachineInstanceStatus,
    launcher: Option<&MigrationStatus>,
    now: Timestamp,
) {
    let (Some(m), Some(state)) = (launcher, status.migration_state.as_mut()) else {
        return;
    };
    if m.role != MigrationRole::Source
        || state.migration_uid.as_deref() != Some(m.uid.as_str())
        || state.completed == Some(true)
    {
        return;
    }
    // A cancel or a timeout also ends the target, which may report first: the source's
    // decision is still the reason (and an abort succeeded).
    if state.failed == Some(true) && !(m.phase == MigrationPhase::Failed && m.stopped_by_source) {
        return;
    }
    match m.phase {
        MigrationPhase::Running | MigrationPhase::Completed => {
            state.start_timestamp.get_or_insert(Time(now));
            state.mode = Some(if m.post_copy { "PostCopy" } else { "PreCopy" }.into());
        }
        MigrationPhase::Failed => {
            state.start_timestamp.get_or_insert(Time(now));
            state.end_timestamp = Some(Time(now));
            state.failed = Some(true);
            state.failure_reason = m.message.clone();
            if m.aborted {
                state.abort_status = Some("Succeeded".into());
            }
        }
        MigrationPhase::Preparing | MigrationPhase::Ready => {}
    }
}

/// The source's duty for `vmi` on this node: start or cancel its migration.
pub(crate) fn drive_source(ctx: &Arc<Ctx>, vmi: &VirtualMachineInstance) {
    let Some(state) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) else {
        return;
    };
    if state.source_node.as_deref() != Some(ctx.node.as_str()) || state.is_final() {
        return;
    }
    let Some(uid) = state.migration_uid.clone() else {
        return;
    };
    // Without the source pod known, the request waits for a later pass.
    let Some(socket) = ctx.socket(vmi) else {
        return;
    };
    let request = if state.abort_requested == Some(true) {
        Request::CancelMigration
    } else {
        let (Some(host), Some(ports)) = (
            state.target_node_address.clone(),
            ports_of(&state.target_direct_migration_node_ports),
        ) else {
            return;
        };
        Request::Migrate {
            migration_uid: uid.clone(),
            host,
            ports,
            options: options(vmi),
            tls: ctx.migration_tls.clone(),
        }
    };
    let key = format!(
        "{uid}/{}",
        if matches!(request, Request::CancelMigration) {
            "cancel"
        } else {
            "migrate"
        }
    );
    if !ctx
        .migration_requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key)
    {
        return;
    }
    let name = vmi.metadata.name.clone().unwrap_or_default();
    tokio::spawn(async move {
        match launcher_proto::call(&socket, &request, Duration::from_secs(10)).await {
            Ok(Response::Error { message, .. }) => {
                warn!(
                    vmi = name,
                    message, "the launcher refused the migration request"
                );
            }
            Ok(_) => info!(vmi = name, migration = uid, ?request, "asked the launcher"),
            Err(e) => warn!(vmi = name, error = %e, "asking the launcher to migrate"),
        }
    });
}

/// A target-side session; ends when dropped.
#[derive(Debug)]
pub struct TargetSession(JoinHandle<()>);

impl Drop for TargetSession {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TargetSession {
    pub(crate) fn start(
        ctx: Arc<Ctx>,
        vmi: &VirtualMachineInstance,
        migration_uid: String,
    ) -> Self {
        Self(tokio::spawn(follow_target(ctx, vmi.clone(), migration_uid)))
    }
}

/// What the target's handler writes on the VMI.
enum TargetEvent {
    /// The target listens at this address and these ports.
    Ready(String, TargetPorts),
    /// The guest runs on the target; `post_copy` when it arrived by post-copy.
    Running {
        post_copy: bool,
    },
    Failed(String),
}

async fn follow_target(ctx: Arc<Ctx>, vmi: VirtualMachineInstance, migration_uid: String) {
    let ns = vmi.metadata.namespace.clone().unwrap_or_default();
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let write = |event: TargetEvent| record(&ctx, &vmis, &name, &uid, &migration_uid, event);
    let deadline = tokio::time::Instant::now() + TARGET_APPEARS;
    let mut socket = ctx.socket(&vmi);
    let (socket, mut conn) = loop {
        if let Some(at) = &socket
            && let Ok(conn) = launcher_proto::watch(at).await
        {
            break (at.clone(), conn);
        }
        if socket.is_none() {
            // The target pod is not in the VMI's activePods yet: read it again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(current)) = vmis.get_opt(&name).await
                && current.metadata.uid.as_deref() == Some(uid.as_str())
            {
                socket = ctx.socket(&current);
            }
        }
        if tokio::time::Instant::now() > deadline {
            write(TargetEvent::Failed(format!(
                "the target's launcher did not appear within {}s",
                TARGET_APPEARS.as_secs()
            )))
            .await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let request = Request::MigrationTarget {
        vmi: Box::new(vmi.clone()),
        migration_uid: migration_uid.clone(),
        post_copy: options(&vmi).allow_post_copy,
        tls: ctx.migration_tls.clone(),
    };
    match launcher_proto::call(&socket, &request, Duration::from_secs(10)).await {
        Ok(Response::Status(_)) => {}
        Ok(other) => {
            write(TargetEvent::Failed(format!(
                "the target launcher refused: {other:?}"
            )))
            .await;
            return;
        }
        Err(e) => {
            write(TargetEvent::Failed(format!("the target launcher: {e}"))).await;
            return;
        }
    }
    let mut published = false;
    loop {
        let status = match conn.recv::<Response>().await {
            Ok(Some(Response::Status(status))) => status,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                write(TargetEvent::Failed(
                    "the target's launcher went away".into(),
                ))
                .await;
                return;
            }
        };
        let Some(m) = status.migration.as_ref().filter(|m| m.uid == migration_uid) else {
            continue;
        };
        match (m.phase, &status.state) {
            (MigrationPhase::Failed, _) => {
                let why = m
                    .message
                    .clone()
                    .unwrap_or_else(|| "the target failed".into());
                write(TargetEvent::Failed(why)).await;
                return;
            }
            (
                _,
                launcher_proto::DomainState::Exited { .. }
                | launcher_proto::DomainState::Failed { .. },
            ) => {
                write(TargetEvent::Failed("the target's QEMU ended".into())).await;
                return;
            }
            (MigrationPhase::Completed, launcher_proto::DomainState::Running) => {
                write(TargetEvent::Running {
                    post_copy: m.post_copy,
                })
                .await;
                return;
            }
            (MigrationPhase::Ready, _) if !published => {
                if let Some(ports) = m.ports {
                    let address = m
                        .address
                        .clone()
                        .unwrap_or_else(|| ctx.node_address.clone());
                    write(TargetEvent::Ready(address, ports)).await;
                    published = true;
                }
            }
            _ => {}
        }
    }
}

/// Writes `event` into the VMI, re-reading on conflicts; nothing when the VMI or its
/// migration has moved on.
async fn record(
    ctx: &Ctx,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    uid: &str,
    migration_uid: &str,
    event: TargetEvent,
) {
    for _ in 0..10 {
        let Ok(Some(mut vmi)) = vmis.get_opt(name).await else {
            return;
        };
        if vmi.metadata.uid.as_deref() != Some(uid) {
            return;
        }
        let now = Time(Timestamp::now());
        let status = vmi.status.get_or_insert_with(Default::default);
        let Some(state) = status
            .migration_state
            .as_mut()
            .filter(|s| s.migration_uid.as_deref() == Some(migration_uid) && !s.is_final())
        else {
            return;
        };
        match &event {
            TargetEvent::Ready(address, ports) => {
                state.target_node_address = Some(address.clone());
                state.target_direct_migration_node_ports = ports_map(ports);
            }
            TargetEvent::Failed(why) => fail(state, why, now),
            TargetEvent::Running { post_copy } => {
                if *post_copy {
                    state.mode = Some("PostCopy".into());
                }
                state.completed = Some(true);
                state.end_timestamp = Some(now.clone());
                state.target_node_domain_detected = Some(true);
                state.target_node_domain_ready_timestamp = Some(now);
                status.node_name = Some(ctx.node.clone());
                // An evacuation is over once the guest has left the node.
                status.evacuation_node_name = None;
                let labels = vmi.metadata.labels.get_or_insert_with(Default::default);
                labels.insert(NODE_LABEL.into(), ctx.node.clone());
                labels.remove(TARGET_LABEL);
            }
        }
        match vmis.replace(name, &PostParams::default(), &vmi).await {
            Ok(_) => {
                let what = match event {
                    TargetEvent::Ready(..) => "target ready",
                    TargetEvent::Running { .. } => "the guest runs on the target",
                    TargetEvent::Failed(_) => "target failed",
                };
                info!(vmi = name, migration = migration_uid, "{what}");
                return;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                warn!(vmi = name, error = %e, "writing the migration state");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn fail(state: &mut VirtualMachineInstanceMigrationState, why: &str, now: Time) {
    state.failed = Some(true);
    state.failure_reason = Some(why.to_owned());
    state.end_timestamp = Some(now);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn launcher(phase: MigrationPhase, aborted: bool) -> MigrationStatus {
        MigrationStatus {
            uid: "m1".into(),
            role: MigrationRole::Source,
            phase,
            message: Some("connection refused".into()),
            aborted,
            stopped_by_source: aborted,
            total_ms: None,
            downtime_ms: None,
            pause_ms: None,
            post_copy: false,
            ports: None,
            address: None,
        }
    }

    fn status() -> VirtualMachineInstanceStatus {
        VirtualMachineInstanceStatus {
            migration_state: Some(VirtualMachineInstanceMigrationState {
                migration_uid: Some("m1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        "2026-12-06T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn ports_survive_the_status() {
        let ports = TargetPorts {
            memory: 40001,
            disks: 40002,
            handover: 40003,
        };
        assert_eq!(ports_of(&ports_map(&ports)), Some(ports));
        assert_eq!(ports_of(&BTreeMap::from([("1".into(), 0)])), None);
    }

    #[test]
    fn the_source_reports_the_start_and_failures() {
        let mut s = status();
        apply(
            &mut s,
            Some(&launcher(MigrationPhase::Preparing, false)),
            now(),
        );
        assert_eq!(s, status());
        apply(
            &mut s,
            Some(&launcher(MigrationPhase::Running, false)),
            now(),
        );
        let state = s.migration_state.clone().unwrap();
        assert!(state.start_timestamp.is_some());
        assert_eq!(state.mode.as_deref(), Some("PreCopy"));
        let mut switched = s.clone();
        let mut post_copy = launcher(MigrationPhase::Running, false);
        post_copy.post_copy = true;
        apply(&mut switched, Some(&post_copy), now());
        let state = switched.migration_state.unwrap();
        assert_eq!(state.mode.as_deref(), Some("PostCopy"));
        apply(&mut s, Some(&launcher(MigrationPhase::Failed, true)), now());
        let state = s.migration_state.clone().unwrap();
        assert_eq!(
            (
                state.failed,
                state.failure_reason.as_deref(),
                state.abort_status.as_deref()
            ),
            (Some(true), Some("connection refused"), Some("Succeeded"))
        );
        // The target failing first (a cancel ends it too) does not hide the abort.
        let mut raced = status();
        let state = raced.migration_state.as_mut().unwrap();
        state.failed = Some(true);
        state.failure_reason = Some("the target's QEMU ended".into());
        apply(
            &mut raced,
            Some(&launcher(MigrationPhase::Failed, true)),
            now(),
        );
        let state = raced.migration_state.unwrap();
        assert_eq!(state.abort_status.as_deref(), Some("Succeeded"));
        assert_eq!(state.failure_reason.as_deref(), Some("connection refused"));
        // Another migration's report, or one after the end, changes nothing.
        let before = s.clone();
        apply(
            &mut s,
            Some(&launcher(MigrationPhase::Running, false)),
            now(),
        );
        assert_eq!(s, before);
        let mut other = status();
        let mut report = launcher(MigrationPhase::Failed, false);
        report.uid = "m0".into();
        apply(&mut other, Some(&report), now());
        assert_eq!(other, status());
    }

    #[test]
    fn the_completion_timeout_grows_with_the_guest() {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "m"},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "3Gi"}}}}))
        .unwrap();
        let o = options(&vmi);
        assert_eq!(
            (o.completion_timeout_seconds, o.max_downtime_ms),
            (450, 900)
        );
        assert_eq!((o.bandwidth_bytes_per_second, o.auto_converge), (0, false));
        let mut slow = vmi.clone();
        slow.status = Some(
            serde_json::from_value(serde_json::json!({"migrationState": {
            "migrationConfiguration": {"bandwidthPerMigration": "1Mi",
                "completionTimeoutPerGiB": 20, "allowAutoConverge": true}}}))
            .unwrap(),
        );
        let o = options(&slow);
        assert_eq!(o.bandwidth_bytes_per_second, 1 << 20);
        assert_eq!((o.completion_timeout_seconds, o.auto_converge), (60, true));
    }
}
