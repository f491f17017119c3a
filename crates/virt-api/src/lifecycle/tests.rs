#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn vm(spec: Value, status: Value) -> VirtualMachine {
    let mut spec = spec;
    spec["template"] = json!({"spec": {"domain": {"devices": {}}}});
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "vm1", "namespace": "default"}, "spec": spec, "status": status,
    }))
    .unwrap()
}

fn vmi(phase: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "default", "uid": "uid-1"},
        "spec": {"domain": {"devices": {}}, "terminationGracePeriodSeconds": 30},
        "status": {"phase": phase},
    }))
    .unwrap()
}

fn opts(v: Value) -> Options {
    serde_json::from_value(v).unwrap()
}

#[test]
fn start_flips_halted_and_refuses_a_running_vm() {
    let halted = vm(json!({"runStrategy": "Halted"}), json!({}));
    let w = plan(Action::Start, &halted, None, &Options::default()).unwrap();
    assert_eq!(
        w.vm,
        Some(json!([
            {"op": "test", "path": "/spec/runStrategy", "value": "Halted"},
            {"op": "replace", "path": "/spec/runStrategy", "value": "Always"},
        ]))
    );
    let always = vm(json!({"runStrategy": "Always"}), json!({}));
    let e = plan(
        Action::Start,
        &always,
        Some(&vmi("Running")),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e.code, 409);
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": VM is already running"
    );
    let e = plan(Action::Start, &always, None, &Options::default()).unwrap_err();
    assert!(
        e.message
            .ends_with("Always does not support manual start requests")
    );
    // The deprecated field stays the one in use.
    let legacy = vm(json!({"running": false}), json!({}));
    let w = plan(Action::Start, &legacy, None, &Options::default()).unwrap();
    assert_eq!(
        w.vm.unwrap()[1],
        json!({"op": "replace", "path": "/spec/running", "value": true})
    );
}

#[test]
fn manual_strategies_use_state_change_requests() {
    let manual = vm(json!({"runStrategy": "Manual"}), json!({}));
    let w = plan(Action::Start, &manual, None, &Options::default()).unwrap();
    assert_eq!(
        w.vm_status,
        Some(
            json!([{"op": "add", "path": "/status", "value": {"stateChangeRequests": [{"action": "Start"}]}}])
        )
    );
    // A finished VMI is stopped (by uid) before the new start.
    let w = plan(
        Action::Start,
        &manual,
        Some(&vmi("Succeeded")),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        w.vm_status.unwrap()[0]["value"]["stateChangeRequests"],
        json!([{"action": "Stop", "uid": "uid-1"}, {"action": "Start"}])
    );
    let rerun = vm(
        json!({"runStrategy": "RerunOnFailure"}),
        json!({"printableStatus": "Running", "startFailure": {"consecutiveFailCount": 1}}),
    );
    let w = plan(
        Action::Stop,
        &rerun,
        Some(&vmi("Running")),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        w.vm_status,
        Some(json!([
            {"op": "add", "path": "/status/stateChangeRequests", "value": [{"action": "Stop", "uid": "uid-1"}]},
            {"op": "remove", "path": "/status/startFailure"},
        ]))
    );
    let e = plan(Action::Stop, &rerun, None, &Options::default()).unwrap_err();
    assert!(e.message.ends_with("VM is not running"), "{e}");
    let e = plan(
        Action::Start,
        &rerun,
        Some(&vmi("Failed")),
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(e.code, 409);
}

#[test]
fn stop_and_restart_of_an_always_vm() {
    let always = vm(
        json!({"runStrategy": "Always"}),
        json!({"printableStatus": "Running"}),
    );
    let running = vmi("Running");
    let w = plan(
        Action::Stop,
        &always,
        Some(&running),
        &opts(json!({"gracePeriod": 0})),
    )
    .unwrap();
    assert_eq!(
        w.vmi,
        Some(json!([
            {"op": "test", "path": "/spec/terminationGracePeriodSeconds", "value": 30},
            {"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": 0},
        ]))
    );
    assert_eq!(w.vm.unwrap()[1]["value"], json!("Halted"));

    let w = plan(
        Action::Restart,
        &always,
        Some(&running),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(w.vmi, None);
    assert_eq!(
        w.vm_status.unwrap()[0]["value"],
        json!([{"action": "Stop", "uid": "uid-1"}, {"action": "Start"}])
    );
    let forced = opts(json!({"kind": "RestartOptions", "gracePeriodSeconds": 0}));
    let w = plan(Action::Restart, &always, Some(&running), &forced).unwrap();
    assert_eq!(w.vmi.unwrap()[1]["value"], json!(1));
    let e = plan(
        Action::Restart,
        &always,
        Some(&running),
        &opts(json!({"gracePeriodSeconds": 5})),
    )
    .unwrap_err();
    assert_eq!(e.code, 400);

    let halted = vm(json!({"runStrategy": "Halted"}), json!({}));
    let e = plan(Action::Restart, &halted, None, &Options::default()).unwrap_err();
    assert_eq!(e.code, 409);
    // Halted stops only with a shorter grace period.
    let e = plan(Action::Stop, &halted, Some(&running), &Options::default()).unwrap_err();
    assert!(e.message.contains("shorter graceperiod"), "{e}");
    let w = plan(
        Action::Stop,
        &halted,
        Some(&running),
        &opts(json!({"gracePeriod": 5})),
    )
    .unwrap();
    assert!(w.vm_status.is_some());
}

#[test]
fn a_second_start_while_one_is_pending_is_a_conflict_but_a_stop_replaces_it() {
    let manual = vm(
        json!({"runStrategy": "Manual"}),
        json!({"stateChangeRequests": [{"action": "Start"}]}),
    );
    let e = plan(Action::Start, &manual, None, &Options::default()).unwrap_err();
    assert!(e.message.contains("already underway"), "{e}");
    let w = plan(
        Action::Stop,
        &manual,
        Some(&vmi("Scheduling")),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        w.vm_status.unwrap()[0],
        json!({"op": "test", "path": "/status/stateChangeRequests", "value": [{"action": "Start"}]})
    );
}
