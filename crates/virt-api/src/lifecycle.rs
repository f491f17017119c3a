//! `start`, `stop`, `restart` and `migrate` of a VirtualMachine, as upstream's virt-api does
//! them.
//!
//! Each is decided by a pure function of the VM, its VMI and the options ([`plan`]):
//! - `Always`/`Once` and `Halted` are flipped through `spec.runStrategy` (or the
//!   deprecated `spec.running` when that is what the VM uses);
//! - `RerunOnFailure`/`Manual` (and a restart of anything that may run) append
//!   `status.stateChangeRequests` — `Stop` naming the VMI's uid, then `Start` — which
//!   the VM controller (crate `reconcile`, `vm::decide`) serves in order;
//! - a stop with `gracePeriod`, or a forced restart, first shortens the VMI's
//!   `terminationGracePeriodSeconds`.
//!
//! Every patch is a JSON patch whose `test` operations pin what the decision read, so a
//! concurrent change answers 409 instead of being overwritten.

use api::v1::{
    RunStrategy, StartStrategy, StateChangeRequest, VirtualMachine, VirtualMachineInstance,
    VmiPhase,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use http::StatusCode;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::get_opt;
use crate::{AppState, Caller, StatusError};

const VM: &str = "virtualmachine";

/// The request bodies; `apiVersion`/`kind` may come along and are ignored.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Options {
    /// `StartOptions.paused`.
    pub paused: bool,
    /// `StopOptions.gracePeriod`.
    pub grace_period: Option<i64>,
    /// `RestartOptions.gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    pub dry_run: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

/// The writes one request makes, in this order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Writes {
    /// A JSON patch of the VMI setting its grace period.
    pub vmi: Option<Value>,
    /// A JSON patch of the VM (its run strategy).
    pub vm: Option<Value>,
    /// A JSON patch of the VM's status subresource (its state-change requests).
    pub vm_status: Option<Value>,
}

fn phase(vmi: &VirtualMachineInstance) -> VmiPhase {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

fn strategy_name(s: RunStrategy) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Decides the writes for `action`, or why it cannot be done.
pub fn plan(
    action: Action,
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    options: &Options,
) -> Result<Writes, StatusError> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let conflict = |why: &str| StatusError::conflict(VM, name, why);
    let strategy = reconcile::vm::run_strategy(vm);
    let live = vmi.filter(|v| !phase(v).is_final());
    let mut writes = Writes::default();
    match action {
        Action::Start => {
            if live.is_some_and(|v| !matches!(phase(v), VmiPhase::Unknown | VmiPhase::Unset)) {
                return Err(conflict("VM is already running"));
            }
            let mut start = StateChangeRequest {
                action: "Start".into(),
                ..Default::default()
            };
            if options.paused {
                start.data.insert("paused".into(), "true".into());
            }
            match strategy {
                RunStrategy::Halted => {
                    let template_paused = vm
                        .spec
                        .template
                        .spec
                        .as_ref()
                        .is_some_and(|s| s.start_strategy == Some(StartStrategy::Paused));
                    if options.paused && !template_paused {
                        writes.vm_status = Some(change_requests(vm, vec![start])?);
                    } else {
                        writes.vm = Some(running_patch(vm, true));
                    }
                }
                RunStrategy::RerunOnFailure | RunStrategy::Manual => {
                    let vmi_phase = vmi.map(phase);
                    if strategy == RunStrategy::RerunOnFailure
                        && vmi_phase == Some(VmiPhase::Failed)
                    {
                        return Err(conflict(
                            "RerunOnFailure does not support starting VM from failed state",
                        ));
                    }
                    let finished = match strategy {
                        RunStrategy::Manual => vmi_phase.is_some_and(VmiPhase::is_final),
                        _ => vmi_phase == Some(VmiPhase::Succeeded),
                    };
                    let mut changes = Vec::new();
                    if finished && let Some(v) = vmi {
                        changes.push(stop_request(v));
                    }
                    changes.push(start);
                    writes.vm_status = Some(change_requests(vm, changes)?);
                }
                other => {
                    return Err(conflict(&format!(
                        "{} does not support manual start requests",
                        strategy_name(other)
                    )));
                }
            }
        }
        Action::Stop => {
            let old_grace = live.and_then(|v| v.spec.termination_grace_period_seconds);
            if let (Some(v), Some(grace)) = (live, options.grace_period) {
                writes.vmi = Some(grace_patch(v, grace));
            }
            match strategy {
                RunStrategy::Halted | RunStrategy::RerunOnFailure | RunStrategy::Manual => {
                    let Some(v) = live else {
                        return Err(conflict("VM is not running"));
                    };
                    if strategy == RunStrategy::Halted
                        && options
                            .grace_period
                            .is_none_or(|g| old_grace.is_some_and(|old| g >= old))
                    {
                        return Err(conflict(
                            "Halted only supports manual stop requests with a shorter graceperiod",
                        ));
                    }
                    writes.vm_status = Some(change_requests(vm, vec![stop_request(v)])?);
                }
                _ => writes.vm = Some(running_patch(vm, false)),
            }
        }
        Action::Restart => {
            match options.grace_period_seconds {
                Some(g) if g > 0 => {
                    return Err(StatusError::bad_request(
                        "For force restart, only gracePeriod=0 is supported for now",
                    ));
                }
                Some(g) if g < 0 => {
                    return Err(StatusError::bad_request(
                        "gracePeriod has to be greater or equal to 0",
                    ));
                }
                _ => {}
            }
            if matches!(strategy, RunStrategy::Halted | RunStrategy::Once) {
                return Err(conflict(&format!(
                    "RunStrategy {} does not support manual restart requests",
                    strategy_name(strategy)
                )));
            }
            let Some(v) = vmi else {
                return Err(conflict("VM is not running"));
            };
            if options.grace_period_seconds == Some(0) {
                writes.vmi = Some(grace_patch(v, 1));
            }
            let start = StateChangeRequest {
                action: "Start".into(),
                ..Default::default()
            };
            writes.vm_status = Some(change_requests(vm, vec![stop_request(v), start])?);
        }
    }
    Ok(writes)
}

fn stop_request(vmi: &VirtualMachineInstance) -> StateChangeRequest {
    StateChangeRequest {
        action: "Stop".into(),
        uid: vmi.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Appends `changes` to the VM's requests; refused while others are pending, except that
/// a stop replaces them.
fn change_requests(
    vm: &VirtualMachine,
    changes: Vec<StateChangeRequest>,
) -> Result<Value, StatusError> {
    let status = vm.status.clone().unwrap_or_default();
    let mut ops = Vec::new();
    if status == Default::default() {
        ops.push(
            json!({"op": "add", "path": "/status", "value": {"stateChangeRequests": changes}}),
        );
    } else if status.state_change_requests.is_empty() {
        ops.push(json!({"op": "add", "path": "/status/stateChangeRequests", "value": changes}));
    } else if changes.len() == 1 && changes[0].action == "Stop" {
        ops.push(json!({"op": "test", "path": "/status/stateChangeRequests", "value": status.state_change_requests}));
        ops.push(json!({"op": "replace", "path": "/status/stateChangeRequests", "value": changes}));
    } else {
        let name = vm.metadata.name.as_deref().unwrap_or_default();
        return Err(StatusError::conflict(
            VM,
            name,
            "unable to complete request: stop/start already underway",
        ));
    }
    if status.start_failure.is_some() {
        ops.push(json!({"op": "remove", "path": "/status/startFailure"}));
    }
    Ok(Value::Array(ops))
}

/// Sets the run strategy (or `running`, on a VM that uses it) to run or not.
fn running_patch(vm: &VirtualMachine, running: bool) -> Value {
    let wanted = if running {
        RunStrategy::Always
    } else {
        RunStrategy::Halted
    };
    match (vm.spec.run_strategy, vm.spec.running) {
        (Some(current), _) => json!([
            {"op": "test", "path": "/spec/runStrategy", "value": current},
            {"op": "replace", "path": "/spec/runStrategy", "value": wanted},
        ]),
        (None, Some(current)) => json!([
            {"op": "test", "path": "/spec/running", "value": current},
            {"op": "replace", "path": "/spec/running", "value": running},
        ]),
        (None, None) => json!([{"op": "add", "path": "/spec/runStrategy", "value": wanted}]),
    }
}

fn grace_patch(vmi: &VirtualMachineInstance, grace: i64) -> Value {
    match vmi.spec.termination_grace_period_seconds {
        Some(old) => json!([
            {"op": "test", "path": "/spec/terminationGracePeriodSeconds", "value": old},
            {"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": grace},
        ]),
        None => {
            json!([{"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": grace}])
        }
    }
}

fn parse_action(action: &str) -> Option<Action> {
    match action {
        "start" => Some(Action::Start),
        "stop" => Some(Action::Stop),
        "restart" => Some(Action::Restart),
        _ => None,
    }
}

/// `PUT .../virtualmachines/{name}/{start|stop|restart}`.
pub async fn handle(
    State(state): State<AppState>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    caller: Caller,
    body: Bytes,
) -> Result<StatusCode, StatusError> {
    if action == "migrate" {
        return migrate(&state, &namespace, &name, &caller, &body).await;
    }
    let Some(action) = parse_action(&action) else {
        return Err(StatusError::not_found_path(&format!(
            "virtualmachines/{name}/{action}"
        )));
    };
    let options: Options = if body.iter().all(u8::is_ascii_whitespace) {
        Options::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| StatusError::bad_request(format!("the request body is invalid: {e}")))?
    };
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), &namespace);
    let vm = get_opt(&vms, &name)
        .await?
        .ok_or_else(|| StatusError::not_found(VM, &name))?;
    let vmi = get_opt(&vmis, &name).await?;
    let writes = plan(action, &vm, vmi.as_ref(), &options)?;
    tracing::info!(user = %caller.user, %namespace, %name, ?action, ?writes, "VM state change");
    let params = PatchParams {
        dry_run: options.dry_run.iter().any(|d| d == "All"),
        ..PatchParams::default()
    };
    let patched = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 409 || s.code == 422 => {
            StatusError::conflict(VM, &name, &s.message)
        }
        other => StatusError::from_kube(other),
    };
    if let Some(p) = writes.vmi {
        vmis.patch(&name, &params, &Patch::Json::<()>(json_patch(p)?))
            .await
            .map_err(patched)?;
    }
    if let Some(p) = writes.vm {
        vms.patch(&name, &params, &Patch::Json::<()>(json_patch(p)?))
            .await
            .map_err(patched)?;
    }
    if let Some(p) = writes.vm_status {
        vms.patch_status(&name, &params, &Patch::Json::<()>(json_patch(p)?))
            .await
            .map_err(patched)?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// `MigrateOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MigrateOptions {
    added_node_selector: std::collections::BTreeMap<String, String>,
    dry_run: Vec<String>,
}

/// `PUT .../virtualmachines/{name}/migrate`: a VirtualMachineInstanceMigration for the
/// VM's running VMI, as upstream creates it.
async fn migrate(
    state: &AppState,
    namespace: &str,
    name: &str,
    caller: &Caller,
    body: &Bytes,
) -> Result<StatusCode, StatusError> {
    let options: MigrateOptions = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("the request body is invalid: {e}")))?
    };
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), namespace);
    get_opt(&vms, name)
        .await?
        .ok_or_else(|| StatusError::not_found(VM, name))?;
    let running = get_opt(&vmis, name)
        .await?
        .is_some_and(|v| phase(&v) == VmiPhase::Running);
    if !running {
        return Err(StatusError::conflict(VM, name, "VM is not running"));
    }
    let migrations: Api<api::v1::VirtualMachineInstanceMigration> =
        Api::namespaced(state.client.clone(), namespace);
    let migration = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": namespace},
        "spec": {"vmiName": name, "addedNodeSelector": options.added_node_selector},
    });
    let migration: api::v1::VirtualMachineInstanceMigration =
        serde_json::from_value(migration).map_err(StatusError::internal)?;
    let params = kube::api::PostParams {
        dry_run: options.dry_run.iter().any(|d| d == "All"),
        ..Default::default()
    };
    let created = migrations
        .create(&params, &migration)
        .await
        .map_err(StatusError::from_kube)?;
    tracing::info!(user = %caller.user, %namespace, %name,
        migration = created.metadata.name.as_deref().unwrap_or_default(), "VM migration");
    Ok(StatusCode::OK)
}

fn json_patch(ops: Value) -> Result<json_patch::Patch, StatusError> {
    serde_json::from_value(ops).map_err(StatusError::internal)
}

#[cfg(test)]
mod tests;
