#![allow(clippy::unwrap_used)]

use api::v1::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;

fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

fn later(secs: i64) -> Timestamp {
    now().checked_add(SignedDuration::from_secs(secs)).unwrap()
}

fn vm(spec: Value, status: Value) -> VirtualMachine {
    let mut spec = spec;
    spec["template"] = json!({"metadata": {"labels": {"kubevirt.io/vm": "web"}},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}});
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": "default", "uid": "vm-uid", "generation": 2},
        "spec": spec, "status": status}),
    )
    .unwrap()
}

fn vmi(uid: &str, phase: &str, conditions: Value) -> VirtualMachineInstance {
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "web", "namespace": "default", "uid": uid},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": phase, "conditions": conditions}}),
    )
    .unwrap()
}

fn ready() -> Value {
    json!([{"type": "Ready", "status": "True"}])
}

fn shown(plan: &Plan) -> &str {
    plan.status.printable_status.as_deref().unwrap()
}

fn creates(plan: &Plan) -> bool {
    matches!(plan.action, Some(Action::Create(_)))
}

fn deletes(plan: &Plan) -> Option<&str> {
    match &plan.action {
        Some(Action::Delete { uid }) => Some(uid),
        _ => None,
    }
}

#[test]
fn always_starts_a_vmi_owned_by_the_vm() {
    let plan = decide(
        &vm(json!({"runStrategy": "Always"}), json!({})),
        None,
        now(),
    );
    let Some(Action::Create(vmi)) = &plan.action else {
        panic!("{plan:?}")
    };
    assert_eq!(vmi.metadata.name.as_deref(), Some("web"));
    assert_eq!(
        vmi.metadata.labels.as_ref().unwrap()["kubevirt.io/vm"],
        "web"
    );
    let owner = &vmi.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("vm-uid", Some(true))
    );
    assert_eq!(
        (shown(&plan), plan.status.created),
        ("Starting", Some(true))
    );
    // `running: true` is the deprecated spelling of Always.
    assert!(creates(&decide(
        &vm(json!({"running": true}), json!({})),
        None,
        now()
    )));
}

#[test]
fn running_ready_and_paused_show_as_upstream() {
    let v = vm(json!({"runStrategy": "Always"}), json!({}));
    let plan = decide(&v, Some(&vmi("i1", "Running", ready())), now());
    assert!(plan.action.is_none());
    assert_eq!((shown(&plan), plan.status.ready), ("Running", Some(true)));
    assert_eq!(plan.status.conditions[0].status, "True");
    let paused =
        json!([{"type": "Ready", "status": "False"}, {"type": "Paused", "status": "True"}]);
    let plan = decide(&v, Some(&vmi("i1", "Running", paused)), now());
    assert_eq!((shown(&plan), plan.status.ready), ("Paused", Some(false)));
    let plan = decide(&v, Some(&vmi("i1", "Scheduling", json!([]))), now());
    assert_eq!(shown(&plan), "Starting");
}

#[test]
fn halted_stops_and_shows_stopped() {
    let v = vm(json!({"runStrategy": "Halted"}), json!({}));
    let plan = decide(&v, Some(&vmi("i1", "Running", ready())), now());
    assert_eq!(deletes(&plan), Some("i1"));
    let mut going = vmi("i1", "Running", ready());
    going.metadata.deletion_timestamp = Some(Time(now()));
    assert_eq!(shown(&decide(&v, Some(&going), now())), "Stopping");
    let plan = decide(&v, None, now());
    assert!(plan.action.is_none());
    assert_eq!(shown(&plan), "Stopped");
    assert_eq!(
        plan.status.conditions[0].reason.as_deref(),
        Some("VMINotExists")
    );
    // So does `running: false`, and no strategy at all.
    assert_eq!(
        run_strategy(&vm(json!({"running": false}), json!({}))),
        RunStrategy::Halted
    );
    assert_eq!(run_strategy(&vm(json!({}), json!({}))), RunStrategy::Halted);
}

#[test]
fn failures_back_off_then_start_again() {
    let v = vm(json!({"runStrategy": "Always"}), json!({}));
    let plan = decide(&v, Some(&vmi("i1", "Failed", json!([]))), now());
    assert_eq!(deletes(&plan), Some("i1"));
    let failure = plan.status.start_failure.clone().unwrap();
    assert_eq!(failure.consecutive_fail_count, Some(1));
    assert_eq!(failure.retry_after_timestamp.unwrap().0, later(10));

    // Gone, but inside the backoff: wait, and say so.
    let v = vm(
        json!({"runStrategy": "Always"}),
        serde_json::to_value(&plan.status).unwrap(),
    );
    let waiting = decide(&v, None, later(5));
    assert!(waiting.action.is_none());
    assert_eq!(shown(&waiting), "CrashLoopBackOff");
    assert_eq!(waiting.requeue_at, Some(later(10)));
    // After it: start again; a second failure waits four times as long.
    assert!(creates(&decide(&v, None, later(11))));
    let again = decide(&v, Some(&vmi("i2", "Failed", json!([]))), later(20));
    let failure = again.status.start_failure.unwrap();
    assert_eq!(failure.consecutive_fail_count, Some(2));
    assert_eq!(failure.retry_after_timestamp.unwrap().0, later(60));
    // Running clears the count.
    let v = vm(
        json!({"runStrategy": "Always"}),
        serde_json::to_value(&waiting.status).unwrap(),
    );
    assert_eq!(
        decide(&v, Some(&vmi("i3", "Running", ready())), later(30))
            .status
            .start_failure,
        None
    );
    assert_eq!(
        [1, 2, 5, 6, 100].map(|n| backoff(n).as_secs()),
        [10, 40, 250, 300, 300]
    );
}

#[test]
fn rerun_on_failure_and_once_leave_finished_vmis() {
    let rerun = vm(json!({"runStrategy": "RerunOnFailure"}), json!({}));
    let plan = decide(&rerun, Some(&vmi("i1", "Succeeded", json!([]))), now());
    assert!(plan.action.is_none());
    assert_eq!(shown(&plan), "Stopped");
    assert_eq!(
        deletes(&decide(
            &rerun,
            Some(&vmi("i1", "Failed", json!([]))),
            now()
        )),
        Some("i1")
    );
    assert!(creates(&decide(&rerun, None, now())));

    let once = vm(json!({"runStrategy": "Once"}), json!({}));
    assert!(creates(&decide(&once, None, now())));
    assert!(
        decide(&once, Some(&vmi("i1", "Failed", json!([]))), now())
            .action
            .is_none()
    );
    let ran = vm(json!({"runStrategy": "Once"}), json!({"created": true}));
    assert!(decide(&ran, None, now()).action.is_none());
}

#[test]
fn manual_follows_state_change_requests_in_order() {
    let idle = vm(json!({"runStrategy": "Manual"}), json!({}));
    assert!(decide(&idle, None, now()).action.is_none());

    let start = vm(
        json!({"runStrategy": "Manual"}),
        json!({"stateChangeRequests": [{"action": "Start"}]}),
    );
    let plan = decide(&start, None, now());
    assert!(creates(&plan));
    assert!(plan.status.state_change_requests.is_empty());

    // Restart = Stop(uid) then Start: the Stop stays until that VMI is gone.
    let restart = vm(
        json!({"runStrategy": "Manual"}),
        json!({"stateChangeRequests": [{"action": "Stop", "uid": "i1"}, {"action": "Start"}]}),
    );
    let plan = decide(&restart, Some(&vmi("i1", "Running", ready())), now());
    assert_eq!(deletes(&plan), Some("i1"));
    assert_eq!(plan.status.state_change_requests.len(), 2);
    let plan = decide(&restart, None, now());
    assert!(plan.action.is_none());
    assert_eq!(plan.status.state_change_requests.len(), 1);
    let next = vm(
        json!({"runStrategy": "Manual"}),
        serde_json::to_value(&plan.status).unwrap(),
    );
    assert!(creates(&decide(&next, None, now())));
}

#[test]
fn a_deleted_vm_takes_its_vmi_along() {
    let mut v = vm(json!({"runStrategy": "Always"}), json!({}));
    v.metadata.deletion_timestamp = Some(Time(now()));
    let plan = decide(&v, Some(&vmi("i1", "Running", ready())), now());
    assert_eq!((deletes(&plan), shown(&plan)), (Some("i1"), "Terminating"));
    assert!(decide(&v, None, now()).action.is_none());
}
