//! The VirtualMachineInstance controller: applies `reconcile::vmi::decide`.
//!
//! 1. Read the VMI's launcher pods from the cache, plus the ones this controller created
//!    or deleted that the cache has not reported yet.
//! 2. Decide, then create or delete pods (with events).
//! 3. Write status, labels and finalizer in one replace carrying the resourceVersion the
//!    decision was made on (the VMI CRD has no status subresource). On a conflict, read
//!    the VMI again, decide again and retry; only what the controller changed differs
//!    from the fresh object, so the handler's fields (Running, interfaces, guest info,
//!    its conditions) are never overwritten.

use std::sync::Arc;

use api::v1::VirtualMachineInstance;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use reconcile::vmi::{FINALIZER, Plan, PodAction};
use tracing::{debug, info};

use crate::context::{Context, RESYNC};
use crate::error::{Error, is_conflict, is_not_found};
use crate::events::{EventType, VM_COMPONENT};

/// How often a lost write race is retried within one reconcile.
const WRITE_ATTEMPTS: usize = 5;

fn name_of(vmi: &VirtualMachineInstance) -> (String, String, String) {
    (
        vmi.metadata.namespace.clone().unwrap_or_default(),
        vmi.metadata.name.clone().unwrap_or_default(),
        vmi.metadata.uid.clone().unwrap_or_default(),
    )
}

/// The VMI's pods as this controller last left them.
fn pods_view(ctx: &Context, vmi: &VirtualMachineInstance) -> Vec<Pod> {
    let (namespace, _, uid) = name_of(vmi);
    let cached = ctx.caches.pods_of(&namespace, &uid);
    ctx.pod_expectations.overlay(&uid, cached)
}

/// `vmi` with the plan's status, labels and finalizer.
pub fn apply(vmi: &VirtualMachineInstance, plan: &Plan) -> VirtualMachineInstance {
    let mut next = vmi.clone();
    if vmi.status.is_some() || plan.status != Default::default() {
        next.status = Some(plan.status.clone());
    }
    if !plan.labels.is_empty() {
        let labels = next.metadata.labels.get_or_insert_with(Default::default);
        for (k, v) in &plan.labels {
            labels.insert(k.clone(), v.clone());
        }
    }
    match plan.finalizer {
        Some(true) => next
            .metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(FINALIZER.into()),
        Some(false) => {
            if let Some(f) = &mut next.metadata.finalizers {
                f.retain(|x| x != FINALIZER);
            }
        }
        None => {}
    }
    next
}

pub(crate) async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let result = reconcile_vmi(&vmi, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(vmi.as_ref());
    }
    result
}

pub(crate) fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.failed(vmi.as_ref(), error)
}

async fn reconcile_vmi(cached: &VirtualMachineInstance, ctx: &Context) -> Result<Action, Error> {
    let (namespace, name, uid) = name_of(cached);
    let mut plan =
        reconcile::vmi::decide(cached, &pods_view(ctx, cached), &ctx.launcher, (ctx.now)());
    let mut fresh = None;
    if plan.pods.iter().any(|a| matches!(a, PodAction::Create(_))) {
        // A pod is only made for a VMI that has not got one; a cache that lags (a VMI
        // already Running shown as Scheduling) would make a second. Reads are cheap.
        let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
        let Some(current) =
            api.get_opt(&name)
                .await
                .map_err(Error::api("get", "VirtualMachineInstance", &name))?
        else {
            return Ok(Action::await_change());
        };
        if current.metadata.resource_version != cached.metadata.resource_version {
            plan = reconcile::vmi::decide(
                &current,
                &pods_view(ctx, &current),
                &ctx.launcher,
                (ctx.now)(),
            );
            fresh = Some(current);
        }
    }
    let vmi = fresh.as_ref().unwrap_or(cached);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for action in &plan.pods {
        match action {
            PodAction::Create(pod) => match pods.create(&PostParams::default(), pod).await {
                Ok(created) => {
                    let pod_name = created.metadata.name.clone().unwrap_or_default();
                    info!(vmi = %name, pod = %pod_name, "created the launcher pod");
                    ctx.pod_expectations.created(&uid, created);
                    ctx.recorder.record(
                        vmi,
                        VM_COMPONENT,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created launcher pod {pod_name}"),
                    );
                }
                Err(e) => {
                    ctx.recorder.record(
                        vmi,
                        VM_COMPONENT,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Creating the launcher pod failed: {e}"),
                    );
                    return Err(Error::api("create", "Pod", &format!("for {name}"))(e));
                }
            },
            PodAction::Delete { name: pod_name } => {
                let pod_uid = pods_view(ctx, vmi)
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(pod_name))
                    .and_then(|p| p.metadata.uid.clone());
                match pods.delete(pod_name, &DeleteParams::default()).await {
                    Ok(_) => {
                        if let Some(pod_uid) = pod_uid {
                            ctx.pod_expectations.deleted(&uid, &pod_uid);
                        }
                        ctx.recorder.record(
                            vmi,
                            VM_COMPONENT,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted launcher pod {pod_name}"),
                        );
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        ctx.recorder.record(
                            vmi,
                            VM_COMPONENT,
                            EventType::Warning,
                            "FailedDelete",
                            format!("Deleting launcher pod {pod_name} failed: {e}"),
                        );
                        return Err(Error::api("delete", "Pod", pod_name)(e));
                    }
                }
            }
        }
    }
    crate::migration::evacuate(vmi, ctx).await?;
    write(vmi.clone(), plan, ctx).await
}

/// Writes what `plan` changes on `current`, re-reading and re-deciding on conflicts.
async fn write(
    mut current: VirtualMachineInstance,
    mut plan: Plan,
    ctx: &Context,
) -> Result<Action, Error> {
    let (namespace, name, _) = name_of(&current);
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    for _ in 0..WRITE_ATTEMPTS {
        let next = apply(&current, &plan);
        if next.metadata == current.metadata && next.status == current.status {
            return Ok(Action::requeue(RESYNC));
        }
        match api.replace(&name, &PostParams::default(), &next).await {
            Ok(written) => {
                debug!(
                    vmi = %name,
                    phase = ?written.status.as_ref().and_then(|s| s.phase),
                    "wrote the VMI"
                );
                return Ok(Action::requeue(RESYNC));
            }
            Err(e) if is_conflict(&e) => {
                let Some(fresh) = api.get_opt(&name).await.map_err(Error::api(
                    "get",
                    "VirtualMachineInstance",
                    &name,
                ))?
                else {
                    return Ok(Action::await_change());
                };
                debug!(vmi = %name, "the VMI changed under the decision; deciding again");
                current = fresh;
                plan = reconcile::vmi::decide(
                    &current,
                    &pods_view(ctx, &current),
                    &ctx.launcher,
                    (ctx.now)(),
                );
                if !plan.pods.is_empty() {
                    // Pods to act on again: that is a new reconcile, not a retry.
                    return Ok(Action::requeue(std::time::Duration::ZERO));
                }
            }
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::api("update", "VirtualMachineInstance", &name)(e)),
        }
    }
    Ok(Action::requeue(std::time::Duration::from_millis(100)))
}
