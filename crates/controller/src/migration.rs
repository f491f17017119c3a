//! The VirtualMachineInstanceMigration controller: applies `reconcile::migration::decide`.
//!
//! 1. Read the migration's VMI and that VMI's pods (with this controller's own creations
//!    and deletions the cache has not reported yet) and every migration, from the caches.
//! 2. Create or delete the target pod (with events).
//! 3. Write the VMI (migration state and target label) under the resourceVersion the
//!    decision was made on; a conflict means decide again.
//! 4. Write the migration's status through its subresource, and its finalizer.
//!
//! A migration is triggered by its own changes, by its VMI's (matched by `spec.vmiName`)
//! and by its target pod's (matched by the `kubevirt.io/migrationJobUID` label).

use std::sync::Arc;

use api::v1::{VirtualMachineInstance, VirtualMachineInstanceMigration};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use reconcile::migration::{FINALIZER, JOB_LABEL};
use serde_json::json;
use tracing::info;

use crate::context::{Context, RESYNC};
use crate::error::{Error, is_conflict, is_not_found};
use crate::events::{EventType, VM_COMPONENT};

/// The migrations a change of `vmi` concerns: the unfinished ones naming it.
pub(crate) fn for_vmi(
    migrations: &Store<VirtualMachineInstanceMigration>,
    vmi: &VirtualMachineInstance,
) -> Vec<ObjectRef<VirtualMachineInstanceMigration>> {
    migrations
        .state()
        .iter()
        .filter(|m| {
            m.metadata.namespace == vmi.metadata.namespace && m.spec.vmi_name == vmi.metadata.name
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// The migration a target pod belongs to.
pub(crate) fn for_pod(
    migrations: &Store<VirtualMachineInstanceMigration>,
    pod: &Pod,
) -> Vec<ObjectRef<VirtualMachineInstanceMigration>> {
    let Some(uid) = pod.metadata.labels.as_ref().and_then(|l| l.get(JOB_LABEL)) else {
        return Vec::new();
    };
    migrations
        .state()
        .iter()
        .filter(|m| m.metadata.uid.as_ref() == Some(uid))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

pub(crate) async fn reconcile(
    m: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let result = reconcile_migration(&m, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(m.as_ref());
    }
    result
}

pub(crate) fn error_policy(
    m: Arc<VirtualMachineInstanceMigration>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.failed(m.as_ref(), error)
}

async fn reconcile_migration(
    m: &VirtualMachineInstanceMigration,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = m.metadata.namespace.clone().unwrap_or_default();
    let name = m.metadata.name.clone().unwrap_or_default();
    let vmi_name = m.spec.vmi_name.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    // The VMI is read fresh: the decision writes it under this resourceVersion.
    let vmi = vmis.get_opt(&vmi_name).await.map_err(Error::api(
        "get",
        "VirtualMachineInstance",
        &vmi_name,
    ))?;
    let vmi_uid = vmi
        .as_ref()
        .and_then(|v| v.metadata.uid.clone())
        .unwrap_or_default();
    let pods = ctx
        .pod_expectations
        .overlay(&vmi_uid, ctx.caches.pods_of(&namespace, &vmi_uid));
    let all: Vec<VirtualMachineInstanceMigration> = ctx
        .caches
        .migrations()
        .into_iter()
        .map(|m| (*m).clone())
        .collect();
    // The policy is resolved for the hand-off to the handlers, at the end of Scheduling.
    let scheduling =
        m.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(api::v1::phase::SCHEDULING);
    let settings = settings(ctx, vmi.as_ref().filter(|_| scheduling)).await?;
    let plan = reconcile::migration::decide(m, vmi.as_ref(), &pods, &all, &settings, (ctx.now)());

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if let (Some(pod), Some(v)) = (&plan.create_pod, vmi.as_ref()) {
        let created = pod_api
            .create(&PostParams::default(), pod)
            .await
            .map_err(Error::api(
                "create",
                "Pod",
                &format!("for migration {name}"),
            ))?;
        let pod_name = created.metadata.name.clone().unwrap_or_default();
        info!(migration = %name, pod = %pod_name, "created the target pod");
        ctx.pod_expectations.created(&vmi_uid, created);
        ctx.recorder.record(
            v,
            VM_COMPONENT,
            EventType::Normal,
            "SuccessfulCreate",
            format!("Created migration target pod {pod_name}"),
        );
    }
    for pod_name in &plan.delete_pods {
        let pod_uid = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod_name))
            .and_then(|p| p.metadata.uid.clone());
        match pod_api.delete(pod_name, &DeleteParams::default()).await {
            Err(e) if !is_not_found(&e) => return Err(Error::api("delete", "Pod", pod_name)(e)),
            _ => {
                if let Some(pod_uid) = pod_uid {
                    ctx.pod_expectations.deleted(&vmi_uid, &pod_uid);
                }
                info!(migration = %name, pod = %pod_name, "deleted the target pod");
            }
        }
    }
    if let Some(next) = &plan.vmi {
        match vmis.replace(&vmi_name, &PostParams::default(), next).await {
            Ok(_) => {}
            // The VMI moved on under the decision: decide again on the new one.
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(std::time::Duration::ZERO)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::api("update", "VirtualMachineInstance", &vmi_name)(e)),
        }
    }

    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &namespace);
    if m.status.as_ref() != Some(&plan.status) {
        let before = m.status.as_ref().and_then(|s| s.phase.clone());
        let patch = json!({"status": plan.status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if before != plan.status.phase {
                    info!(migration = %name, phase = ?plan.status.phase, "migration phase");
                    if let Some(v) = vmi.as_ref() {
                        record_phase(ctx, v, &name, plan.status.phase.as_deref());
                    }
                }
            }
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(Error::api(
                    "update status",
                    "VirtualMachineInstanceMigration",
                    &name,
                )(e));
            }
        }
    }
    if let Some(add) = plan.finalizer {
        let mut finalizers = m.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        if add {
            finalizers.push(FINALIZER.into());
        }
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": m.metadata.resource_version,
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(std::time::Duration::ZERO)),
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(Error::api(
                    "update",
                    "VirtualMachineInstanceMigration",
                    &name,
                )(e));
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// The launcher and the policy settings for `vmi`'s migration (upstream's defaults when
/// no VMI is given).
async fn settings(
    ctx: &Context,
    vmi: Option<&VirtualMachineInstance>,
) -> Result<reconcile::migration::Settings, Error> {
    use api::migrations::MigrationPolicy;
    use k8s_openapi::api::core::v1::Namespace;
    let mut settings = reconcile::migration::Settings {
        launcher: ctx.launcher.clone(),
        policy: None,
        configuration: cluster_configuration(ctx),
    };
    let Some(vmi) = vmi else {
        return Ok(settings);
    };
    let policies: Api<MigrationPolicy> = Api::all(ctx.client.clone());
    let policies = match policies.list(&Default::default()).await {
        Ok(list) => list.items,
        // Installed with the other CRDs; an API without it has no policies.
        Err(e) if is_not_found(&e) => Vec::new(),
        Err(e) => return Err(Error::api("list", "MigrationPolicy", "")(e)),
    };
    if policies.is_empty() {
        return Ok(settings);
    }
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace_labels = namespaces
        .get_opt(&namespace)
        .await
        .map_err(Error::api("get", "Namespace", &namespace))?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    let vmi_labels = vmi.metadata.labels.clone().unwrap_or_default();
    if let Some(p) = api::migrations::matching(&policies, &vmi_labels, &namespace_labels) {
        settings.policy = p.metadata.name.clone();
        settings.configuration = settings.configuration.with_policy(&p.spec);
    }
    Ok(settings)
}

/// The cluster's migration settings: those of the oldest KubeVirt CR (from the cache),
/// else upstream's defaults.
fn cluster_configuration(ctx: &Context) -> api::migrations::MigrationConfiguration {
    let installs = ctx.caches.kubevirts();
    api::kubevirt::installation(installs.iter().map(AsRef::as_ref))
        .map(api::kubevirt::KubeVirt::migration_configuration)
        .unwrap_or_default()
}

/// The annotation on a migration a node drain started, naming the node.
pub const EVACUATION: &str = "kubevirt.io/evacuationMigration";

/// A VMI marked for evacuation from the node it runs on (`status.evacuationNodeName`, set
/// by virt-api when a drain tried to evict its launcher) gets a migration, unless one is
/// under way. The name is fixed per attempt, so a cache that lags cannot make two.
pub(crate) async fn evacuate(vmi: &VirtualMachineInstance, ctx: &Context) -> Result<(), Error> {
    let Some(status) = vmi.status.as_ref() else {
        return Ok(());
    };
    let (Some(from), Some(node)) = (
        status.evacuation_node_name.as_deref(),
        status.node_name.as_deref(),
    ) else {
        return Ok(());
    };
    if from != node || status.phase != Some(api::v1::VmiPhase::Running) {
        return Ok(());
    }
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let theirs: Vec<_> = ctx
        .caches
        .migrations()
        .into_iter()
        .filter(|m| {
            m.metadata.namespace == vmi.metadata.namespace && m.spec.vmi_name == vmi.metadata.name
        })
        .collect();
    let active = theirs
        .iter()
        .any(|m| !api::v1::phase::is_final(m.status.as_ref().and_then(|s| s.phase.as_deref())));
    if active {
        return Ok(());
    }
    let attempt = 1 + theirs
        .iter()
        .filter(|m| {
            m.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EVACUATION))
                .is_some_and(|n| n == node)
        })
        .count();
    let migration: VirtualMachineInstanceMigration = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": format!("kubevirt-evacuation-{name}-{attempt}"), "namespace": namespace,
            "annotations": {EVACUATION: node}},
        "spec": {"vmiName": name},
    }))
    .map_err(|e| Error::api("create", "VirtualMachineInstanceMigration", &name)(kube::Error::SerdeError(e)))?;
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &migration).await {
        Ok(_) => {
            info!(vmi = %name, %node, "evacuating: created a migration");
            ctx.recorder.record(
                vmi,
                VM_COMPONENT,
                EventType::Normal,
                "EvacuationStarted",
                format!("Migrating off node {node}, which is being drained"),
            );
            Ok(())
        }
        // 409: this attempt's migration exists already.
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(Error::api(
            "create",
            "VirtualMachineInstanceMigration",
            &name,
        )(e)),
    }
}

/// Events on the VMI for the migration's milestones, as upstream records them.
fn record_phase(ctx: &Context, vmi: &VirtualMachineInstance, migration: &str, phase: Option<&str>) {
    use api::v1::phase::{FAILED, SCHEDULING, SUCCEEDED};
    let (kind, reason, message) = match phase {
        Some(SCHEDULING) => (
            EventType::Normal,
            "PreparingTarget",
            format!("Migration {migration}: creating the target pod"),
        ),
        Some(SUCCEEDED) => (
            EventType::Normal,
            "Migrated",
            format!("Migration {migration} succeeded"),
        ),
        Some(FAILED) => (
            EventType::Warning,
            "MigrationFailed",
            format!("Migration {migration} failed"),
        ),
        _ => return,
    };
    ctx.recorder
        .record(vmi, VM_COMPONENT, kind, reason, message);
}
