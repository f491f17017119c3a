//! The VirtualMachineInstanceReplicaSet controller: applies `reconcile::replicaset::decide`.
//!
//! 1. Read the namespace's VMIs from the cache, plus the replicas this controller created
//!    or deleted that the cache has not reported yet (so a lagging cache never makes
//!    extra replicas).
//! 2. Decide; create and delete replicas (with events), adopt and release by patching the
//!    VMI's owner references under its resourceVersion.
//! 3. Write `status` (replicas, readyReplicas, labelSelector) through the subresource when
//!    it changed.
//!
//! A VMI change triggers the ReplicaSet that controls it and, for a VMI without a
//! controller, every ReplicaSet of its namespace whose selector matches it.

use std::sync::Arc;
use std::time::Duration;

use api::v1::{VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use reconcile::replicaset::Action as RsAction;
use serde_json::json;
use tracing::info;

use crate::context::{Context, RESYNC};
use crate::error::{Error, is_conflict, is_not_found};
use crate::events::{EventType, REPLICASET_COMPONENT};

const RACE_RETRY: Duration = Duration::from_millis(200);

/// The ReplicaSets a change of `vmi` concerns.
pub(crate) fn interested(
    replicasets: &Store<VirtualMachineInstanceReplicaSet>,
    vmi: &VirtualMachineInstance,
) -> Vec<ObjectRef<VirtualMachineInstanceReplicaSet>> {
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let controller = vmi
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = controller {
        if owner.kind == "VirtualMachineInstanceReplicaSet" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    let labels = vmi.metadata.labels.clone().unwrap_or_default();
    replicasets
        .state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|rs| api::preset::selector_matches(&rs.spec.selector, &labels).unwrap_or(false))
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

pub(crate) async fn reconcile(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let result = reconcile_rs(&rs, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(rs.as_ref());
    }
    result
}

pub(crate) fn error_policy(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.failed(rs.as_ref(), error)
}

fn view(ctx: &Context, rs: &VirtualMachineInstanceReplicaSet) -> Vec<VirtualMachineInstance> {
    let namespace = rs.metadata.namespace.as_deref().unwrap_or_default();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let cached = ctx
        .caches
        .vmis(namespace)
        .into_iter()
        .map(|v| (*v).clone())
        .collect();
    ctx.vmi_expectations.overlay(uid, cached)
}

async fn reconcile_rs(
    rs: &VirtualMachineInstanceReplicaSet,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let vmis_api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let vmis = view(ctx, rs);
    let plan = reconcile::replicaset::decide(rs, &vmis);
    let find = |n: &str| vmis.iter().find(|v| v.metadata.name.as_deref() == Some(n));
    let event = |type_, reason, message| {
        ctx.recorder
            .record(rs, REPLICASET_COMPONENT, type_, reason, message)
    };
    for action in plan.actions {
        match action {
            RsAction::Create(new) => match vmis_api.create(&PostParams::default(), &new).await {
                Ok(created) => {
                    let vmi = created.metadata.name.clone().unwrap_or_default();
                    info!(replicaset = %name, %vmi, "created a replica");
                    ctx.vmi_expectations.created(&uid, created);
                    event(
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created VMI {vmi}"),
                    );
                }
                Err(e) => {
                    event(
                        EventType::Warning,
                        "FailedCreate",
                        format!("Creating a VMI failed: {e}"),
                    );
                    return Err(Error::api(
                        "create",
                        "VirtualMachineInstance",
                        &format!("for {name}"),
                    )(e));
                }
            },
            RsAction::Delete { name: vmi } => {
                let vmi_uid = find(&vmi).and_then(|v| v.metadata.uid.clone());
                let params = DeleteParams {
                    preconditions: vmi_uid.clone().map(|u| Preconditions {
                        uid: Some(u),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match vmis_api.delete(&vmi, &params).await {
                    Ok(_) => {
                        info!(replicaset = %name, %vmi, "deleted a replica");
                        if let Some(u) = &vmi_uid {
                            ctx.vmi_expectations.deleted(&uid, u);
                        }
                        event(
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted VMI {vmi}"),
                        );
                    }
                    Err(e) if is_not_found(&e) || is_conflict(&e) => {}
                    Err(e) => {
                        event(
                            EventType::Warning,
                            "FailedDelete",
                            format!("Deleting VMI {vmi} failed: {e}"),
                        );
                        return Err(Error::api("delete", "VirtualMachineInstance", &vmi)(e));
                    }
                }
            }
            RsAction::Adopt { name: vmi } | RsAction::Release { name: vmi } => {
                let Some(current) = find(&vmi) else { continue };
                let mut refs = current
                    .metadata
                    .owner_references
                    .clone()
                    .unwrap_or_default();
                let adopt = !refs.iter().any(|o| o.uid == uid);
                if adopt {
                    refs.push(reconcile::controller_ref(
                        "VirtualMachineInstanceReplicaSet",
                        &rs.metadata,
                    ));
                } else {
                    refs.retain(|o| o.uid != uid);
                }
                let patch = json!({"metadata": {
                    "resourceVersion": current.metadata.resource_version,
                    "ownerReferences": refs,
                }});
                match vmis_api
                    .patch(&vmi, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => info!(replicaset = %name, %vmi, adopt, "changed the owner references"),
                    // Decided on an old VMI: its newer version triggers another reconcile.
                    Err(e) if is_conflict(&e) || is_not_found(&e) => {}
                    Err(e) => return Err(Error::api("patch", "VirtualMachineInstance", &vmi)(e)),
                }
            }
        }
    }
    if rs.status.as_ref() != Some(&plan.status) {
        let api: Api<VirtualMachineInstanceReplicaSet> =
            Api::namespaced(ctx.client.clone(), &namespace);
        let mut next = rs.clone();
        next.status = Some(plan.status);
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(RACE_RETRY)),
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(Error::api(
                    "update status of",
                    "VirtualMachineInstanceReplicaSet",
                    &name,
                )(e));
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}
