//! The VirtualMachine controller's decisions: keep at most one VMI according to the run
//! strategy and the state-change requests, back off on crash loops, and report
//! `printableStatus`, `created`, `ready` and the Ready condition, as upstream does.
//!
//! Run strategies: `Always` keeps a VMI running (a finished one is deleted to be
//! recreated); `RerunOnFailure` recreates only a Failed one; `Once` starts one and leaves
//! it finished; `Manual` acts only on `status.stateChangeRequests`; `Halted` (and
//! `running: false`) removes the VMI. Requests are served in order: `Stop` (for the VMI
//! with its uid, or any) deletes the VMI and is consumed once it is gone; `Start` creates
//! one and is consumed with the creation.

use api::v1::{
    Condition, RunStrategy, StartFailure, StateChangeRequest, VirtualMachine,
    VirtualMachineInstance, VirtualMachineStatus, VmiPhase,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// What the controller should do to the VMI.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create this VMI (named after the VM, owned by it).
    Create(Box<VirtualMachineInstance>),
    /// Delete the VMI with this uid.
    Delete { uid: String },
}

/// The decision for one VM.
#[derive(Debug, Clone)]
pub struct Plan {
    pub action: Option<Action>,
    /// The VM's new status (write it when it differs).
    pub status: VirtualMachineStatus,
    /// Come back at this time even if nothing changes (a crash-loop backoff ends).
    pub requeue_at: Option<Timestamp>,
}

/// The run strategy in effect: `runStrategy`, else `running`, else Halted.
pub fn run_strategy(vm: &VirtualMachine) -> RunStrategy {
    match (vm.spec.run_strategy, vm.spec.running) {
        (Some(s), _) => s,
        (None, Some(true)) => RunStrategy::Always,
        _ => RunStrategy::Halted,
    }
}

/// How long a VM waits before its next start after `failures` consecutive failed
/// starts: 10 s × failures², at most 300 s (upstream's formula without its jitter).
pub fn backoff(failures: u32) -> SignedDuration {
    let secs = 10i64.saturating_mul(i64::from(failures).pow(2)).min(300);
    SignedDuration::from_secs(secs)
}

fn phase(vmi: &VirtualMachineInstance) -> VmiPhase {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

fn condition_true(vmi: &VirtualMachineInstance, ty: &str) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ty && c.status == "True")
    })
}

fn uid(vmi: &VirtualMachineInstance) -> String {
    vmi.metadata.uid.clone().unwrap_or_default()
}

/// The VMI a VM's template describes: same name and namespace, the template's labels and
/// annotations, owned by the VM.
pub fn vmi_for(vm: &VirtualMachine) -> VirtualMachineInstance {
    let template = &vm.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let owner = crate::controller_ref("VirtualMachine", &vm.metadata);
    VirtualMachineInstance {
        metadata: ObjectMeta {
            name: vm.metadata.name.clone(),
            namespace: vm.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone().unwrap_or_default(),
        status: None,
    }
}

/// Decides what `vm` needs, given its VMI (if any) and the time.
pub fn decide(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>, now: Timestamp) -> Plan {
    let mut status = vm.status.clone().unwrap_or_default();
    let strategy = run_strategy(vm);
    status.run_strategy = Some(strategy);
    status.observed_generation = vm.metadata.generation;
    status.desired_generation = vm.metadata.generation;
    let vm_deleting = vm.metadata.deletion_timestamp.is_some();
    let vmi_deleting = vmi.is_some_and(|v| v.metadata.deletion_timestamp.is_some());
    let live = vmi.filter(|_| !vmi_deleting);
    let final_phase = live.map(phase).filter(|p| p.is_final());

    track_failures(&mut status, live, now);
    let backing_off = status
        .start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .filter(|t| t.0 > now)
        .map(|t| t.0);

    let mut requeue_at = None;
    let action = if vm_deleting {
        live.map(|v| Action::Delete { uid: uid(v) })
    } else if let Some(request) = status.state_change_requests.first().cloned() {
        serve_request(&mut status, &request, vm, live, vmi_deleting)
    } else {
        let wants_new = match strategy {
            RunStrategy::Always => true,
            RunStrategy::RerunOnFailure => final_phase != Some(VmiPhase::Succeeded),
            RunStrategy::Once => status.created != Some(true) && vmi.is_none(),
            _ => false,
        };
        match (strategy, live, final_phase) {
            (RunStrategy::Halted, Some(v), _) => Some(Action::Delete { uid: uid(v) }),
            (RunStrategy::Always, Some(v), Some(_))
            | (RunStrategy::RerunOnFailure, Some(v), Some(VmiPhase::Failed)) => {
                Some(Action::Delete { uid: uid(v) })
            }
            (_, None, _) if wants_new && !vmi_deleting => match backing_off {
                Some(until) => {
                    requeue_at = Some(until);
                    None
                }
                None => Some(Action::Create(Box::new(vmi_for(vm)))),
            },
            _ => None,
        }
    };

    status.created = Some(live.is_some() || matches!(action, Some(Action::Create(_))));
    let ready = live.is_some_and(|v| condition_true(v, "Ready"));
    status.ready = Some(ready);
    set_ready_condition(&mut status.conditions, live, ready, now);
    let shown = match action {
        Some(Action::Create(_)) => "Starting",
        _ => printable(
            vm_deleting,
            vmi,
            vmi_deleting,
            backing_off.is_some(),
            final_phase,
        ),
    };
    status.printable_status = Some(shown.to_owned());
    Plan {
        action,
        status,
        requeue_at,
    }
}

/// Counts consecutive failed starts and sets the next allowed start; a running VMI
/// clears the count.
fn track_failures(
    status: &mut VirtualMachineStatus,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
) {
    let Some(vmi) = vmi else { return };
    match phase(vmi) {
        VmiPhase::Running => status.start_failure = None,
        VmiPhase::Failed => {
            let failed_uid = uid(vmi);
            let previous = status.start_failure.clone().unwrap_or_default();
            if previous.last_failed_vmi_uid.as_deref() == Some(failed_uid.as_str()) {
                return;
            }
            let count = previous.consecutive_fail_count.unwrap_or(0) + 1;
            let retry = now.checked_add(backoff(count)).unwrap_or(now);
            status.start_failure = Some(StartFailure {
                retry_after_timestamp: Some(Time(retry)),
                consecutive_fail_count: Some(count),
                last_failed_vmi_uid: Some(failed_uid),
            });
        }
        _ => {}
    }
}

fn serve_request(
    status: &mut VirtualMachineStatus,
    request: &StateChangeRequest,
    vm: &VirtualMachine,
    live: Option<&VirtualMachineInstance>,
    vmi_deleting: bool,
) -> Option<Action> {
    match request.action.as_str() {
        "Stop" => match live {
            Some(v) if request.uid.as_deref().is_none_or(|u| u == uid(v)) => {
                Some(Action::Delete { uid: uid(v) })
            }
            // The VMI it named is gone (or another one runs): the request is done.
            _ if !vmi_deleting => {
                status.state_change_requests.remove(0);
                None
            }
            _ => None,
        },
        "Start" => match live {
            None if !vmi_deleting => {
                status.state_change_requests.remove(0);
                Some(Action::Create(Box::new(vmi_for(vm))))
            }
            Some(v) if phase(v).is_final() => Some(Action::Delete { uid: uid(v) }),
            Some(_) => {
                status.state_change_requests.remove(0);
                None
            }
            None => None,
        },
        _ => {
            // Unknown actions are dropped, not retried forever.
            status.state_change_requests.remove(0);
            None
        }
    }
}

fn set_ready_condition(
    conditions: &mut Vec<Condition>,
    vmi: Option<&VirtualMachineInstance>,
    ready: bool,
    now: Timestamp,
) {
    let (status, reason) = match (vmi, ready) {
        (None, _) => ("False", Some("VMINotExists")),
        (Some(_), true) => ("True", None),
        (Some(_), false) => ("False", Some("VMINotReady")),
    };
    match conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == status && c.reason.as_deref() == reason => {}
        Some(c) => {
            c.status = status.into();
            c.reason = reason.map(str::to_owned);
            c.last_transition_time = Some(Time(now));
        }
        None => conditions.push(Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.map(str::to_owned),
            last_transition_time: Some(Time(now)),
            ..Condition::default()
        }),
    }
}

fn printable(
    vm_deleting: bool,
    vmi: Option<&VirtualMachineInstance>,
    vmi_deleting: bool,
    backing_off: bool,
    final_phase: Option<VmiPhase>,
) -> &'static str {
    if vm_deleting {
        return "Terminating";
    }
    if backing_off {
        return "CrashLoopBackOff";
    }
    let Some(vmi) = vmi else { return "Stopped" };
    if vmi_deleting {
        return "Stopping";
    }
    if final_phase.is_some() {
        return "Stopped";
    }
    match phase(vmi) {
        VmiPhase::Running if condition_true(vmi, "Paused") => "Paused",
        VmiPhase::Running => "Running",
        VmiPhase::Unknown => "Unknown",
        _ => "Starting",
    }
}

#[cfg(test)]
mod tests;
