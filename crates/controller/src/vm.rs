//! The VirtualMachine controller: applies `reconcile::vm::decide`.
//!
//! 1. Find the VM's VMI in the cache (same name, controlled by the VM or by nobody).
//! 2. Decide. A VMI to create is first expanded with the VM's instancetype and
//!    preference; a reference that does not resolve leaves no VMI, a `Failure` condition
//!    naming it, a Warning event, and a retry.
//! 3. Create or delete the VMI (with events), then write the status through the `status`
//!    subresource when it changed, carrying the read resourceVersion so a state-change
//!    request added meanwhile is never lost.

use std::sync::Arc;
use std::time::Duration;

use api::v1::{Condition, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use reconcile::vm::Action as VmAction;
use tracing::{info, warn};

use crate::context::{Context, RESYNC};
use crate::error::{Error, is_conflict, is_not_found, status_code};
use crate::events::{EventType, VM_COMPONENT};

/// How soon a VM whose instancetype or preference is missing looks again.
const MISSING_RETRY: Duration = Duration::from_secs(2);
/// How soon to look again after losing a race the cache has not caught up with.
const RACE_RETRY: Duration = Duration::from_millis(200);

pub(crate) async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_vm(&vm, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(vm.as_ref());
    }
    result
}

pub(crate) fn error_policy(vm: Arc<VirtualMachine>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.failed(vm.as_ref(), error)
}

/// The VM's VMI: the one with its name, unless another controller owns it.
fn vmi_of(ctx: &Context, vm: &VirtualMachine) -> Option<Arc<VirtualMachineInstance>> {
    let namespace = vm.metadata.namespace.as_deref().unwrap_or_default();
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    ctx.caches.vmi(namespace, name).filter(|v| {
        v.metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller == Some(true))
            .all(|o| o.uid == uid)
    })
}

/// Sets (`Some(message)`) or clears the `Failure` condition; true when a new failure was
/// set (worth an event).
pub fn set_failure(conditions: &mut Vec<Condition>, message: Option<&str>, now: Timestamp) -> bool {
    let Some(message) = message else {
        conditions.retain(|c| c.type_ != "Failure");
        return false;
    };
    if conditions.iter().any(|c| {
        c.type_ == "Failure" && c.status == "True" && c.message.as_deref() == Some(message)
    }) {
        return false;
    }
    conditions.retain(|c| c.type_ != "Failure");
    conditions.push(Condition {
        type_: "Failure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some(message.into()),
        last_transition_time: Some(Time(now)),
        ..Condition::default()
    });
    true
}

async fn reconcile_vm(vm: &VirtualMachine, ctx: &Context) -> Result<Action, Error> {
    if ctx.is_stale(vm) {
        // Our last status write is on its way; its event reconciles again.
        return Ok(Action::requeue(RACE_RETRY));
    }
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let name = vm.metadata.name.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = (ctx.now)();
    let vmi = vmi_of(ctx, vm);
    let plan = reconcile::vm::decide(vm, vmi.as_deref(), now);
    let mut status = plan.status;
    let mut requeue = plan.requeue_at.map(|at| {
        Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_millis(10)
    });
    match plan.action {
        Some(VmAction::Create(mut new)) => {
            match crate::instancetype::expand(&ctx.client, vm, &mut new).await? {
                Err(message) => {
                    // Nothing was started: the request stays, and the VM shows as stopped.
                    let before = vm.status.clone().unwrap_or_default();
                    status.state_change_requests = before.state_change_requests;
                    status.created = Some(false);
                    status.printable_status = Some("Stopped".into());
                    if set_failure(&mut status.conditions, Some(&message), now) {
                        warn!(vm = %name, %message, "cannot create the VMI");
                        ctx.recorder.record(
                            vm,
                            VM_COMPONENT,
                            EventType::Warning,
                            "FailedCreate",
                            message,
                        );
                    }
                    requeue = Some(MISSING_RETRY);
                }
                Ok(warnings) => {
                    for warning in warnings {
                        warn!(vm = %name, %warning, "instancetype expansion");
                    }
                    match vmis.create(&PostParams::default(), &new).await {
                        Ok(_) => {
                            info!(vm = %name, "created the VMI");
                            set_failure(&mut status.conditions, None, now);
                            ctx.recorder.record(
                                vm,
                                VM_COMPONENT,
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!("Started the VM: created VMI {name}"),
                            );
                        }
                        // The cache has not shown the VMI yet (or it is still going away).
                        Err(e) if status_code(&e) == Some(409) => {
                            return Ok(Action::requeue(RACE_RETRY));
                        }
                        Err(e) => {
                            ctx.recorder.record(
                                vm,
                                VM_COMPONENT,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Creating VMI {name} failed: {e}"),
                            );
                            return Err(Error::api("create", "VirtualMachineInstance", &name)(e));
                        }
                    }
                }
            }
        }
        Some(VmAction::Delete { uid }) => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match vmis.delete(&name, &params).await {
                Ok(_) => {
                    info!(vm = %name, "deleted the VMI");
                    ctx.recorder.record(
                        vm,
                        VM_COMPONENT,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Stopped the VM: deleted VMI {name}"),
                    );
                }
                Err(e) if is_not_found(&e) || is_conflict(&e) => {}
                Err(e) => {
                    ctx.recorder.record(
                        vm,
                        VM_COMPONENT,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Deleting VMI {name} failed: {e}"),
                    );
                    return Err(Error::api("delete", "VirtualMachineInstance", &name)(e));
                }
            }
        }
        None => {
            if vmi.is_some() {
                set_failure(&mut status.conditions, None, now);
            }
        }
    }
    if let Some(action) = write_status(vm, status, ctx).await? {
        return Ok(action);
    }
    Ok(Action::requeue(requeue.unwrap_or(RESYNC)))
}

/// Writes `status` when it differs; `Some(action)` when the write lost a race.
async fn write_status(
    vm: &VirtualMachine,
    status: VirtualMachineStatus,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    if vm.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let name = vm.metadata.name.clone().unwrap_or_default();
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut next = vm.clone();
    next.status = Some(status);
    match api
        .replace_status(&name, &PostParams::default(), &next)
        .await
    {
        // A write the server found to change nothing keeps the version: not superseded.
        Ok(written) if written.metadata.resource_version != vm.metadata.resource_version => {
            ctx.wrote_over(vm);
            Ok(None)
        }
        Ok(_) => Ok(None),
        // Decided on an old VM: its new version triggers another reconcile.
        Err(e) if is_conflict(&e) => Ok(Some(Action::requeue(RACE_RETRY))),
        Err(e) if is_not_found(&e) => Ok(Some(Action::await_change())),
        Err(e) => Err(Error::api("update status of", "VirtualMachine", &name)(e)),
    }
}
