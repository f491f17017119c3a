#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

fn now() -> Timestamp {
    "2026-12-06T10:00:00Z".parse().unwrap()
}

fn config() -> Settings {
    Settings {
        launcher: LauncherConfig {
            image: "launcher".into(),
            software_emulation: true,
            ..LauncherConfig::default()
        },
        policy: Some("slow".into()),
        configuration: Default::default(),
    }
}

fn vmi(state: Value) -> VirtualMachineInstance {
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi-migratable", "namespace": "default", "uid": "v1",
            "labels": {"kubevirt.io/nodeName": "n1"}},
        "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
                 "memory": {"guest": "128Mi"}},
                 "networks": [{"name": "default", "pod": {}}]},
        "status": {"phase": "Running", "nodeName": "n1", "migrationState": state}}),
    )
    .unwrap()
}

fn migration(name: &str, uid: &str, phase: Option<&str>) -> VirtualMachineInstanceMigration {
    serde_json::from_value(
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": "default", "uid": uid,
            "creationTimestamp": format!("2026-12-06T09:00:0{}Z", &uid[1..]),
            "finalizers": [FINALIZER]},
        "spec": {"vmiName": "vmi-migratable"},
        "status": {"phase": phase}}),
    )
    .unwrap()
}

fn pod(name: &str, node: Option<&str>, job: Option<&str>, phase: &str, ready: bool) -> Pod {
    let labels = match job {
        Some(uid) => json!({JOB_LABEL: uid}),
        None => json!({}),
    };
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "compute"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    .unwrap()
}

fn source() -> Pod {
    pod("virt-launcher-src", Some("n1"), None, "Running", true)
}

fn phase_of(plan: &Plan) -> &str {
    plan.status.phase.as_deref().unwrap()
}

#[test]
fn a_new_migration_makes_a_target_pod_away_from_the_source() {
    let m = migration("job", "m1", None);
    let plan = decide(
        &m,
        Some(&vmi(Value::Null)),
        &[source()],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::SCHEDULING);
    let pod = plan.create_pod.unwrap();
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels[JOB_LABEL], "m1");
    assert!(!labels.contains_key(NODE_LABEL));
    let terms = pod
        .spec
        .unwrap()
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let away = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (away.key.as_str(), away.operator.as_str()),
        ("metadata.name", "NotIn")
    );
    assert_eq!(away.values.as_deref(), Some(&["n1".to_owned()][..]));
}

#[test]
fn one_migration_per_vmi_and_the_cluster_limit() {
    let first = migration("first", "m1", Some(phase::RUNNING));
    let second = migration("second", "m2", None);
    let all = [first.clone(), second.clone()];
    let plan = decide(
        &second,
        Some(&vmi(Value::Null)),
        &[source()],
        &all,
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::PENDING);
    assert!(plan.create_pod.is_none());
    // Five running elsewhere: it waits too.
    let mut busy: Vec<_> = (3..8)
        .map(|i| {
            let mut o = migration(&format!("o{i}"), &format!("m{i}"), Some(phase::RUNNING));
            o.spec.vmi_name = Some(format!("other{i}"));
            o
        })
        .collect();
    busy.push(second.clone());
    let plan = decide(
        &second,
        Some(&vmi(Value::Null)),
        &[source()],
        &busy,
        &config(),
        now(),
    );
    assert!(plan.create_pod.is_none());
    busy.remove(0);
    let plan = decide(
        &second,
        Some(&vmi(Value::Null)),
        &[source()],
        &busy,
        &config(),
        now(),
    );
    assert!(plan.create_pod.is_some());
}

#[test]
fn a_ready_target_pod_hands_the_migration_to_the_handlers() {
    let m = migration("job", "m1", Some(phase::SCHEDULING));
    let target = pod(
        "virt-launcher-dst",
        Some("n2"),
        Some("m1"),
        "Running",
        false,
    );
    let plan = decide(
        &m,
        Some(&vmi(Value::Null)),
        &[source(), target],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::SCHEDULING);
    assert!(plan.vmi.is_none());
    let target = pod("virt-launcher-dst", Some("n2"), Some("m1"), "Running", true);
    let plan = decide(
        &m,
        Some(&vmi(Value::Null)),
        &[source(), target],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::SCHEDULED);
    let next = plan.vmi.unwrap();
    assert_eq!(next.metadata.labels.as_ref().unwrap()[TARGET_LABEL], "n2");
    let state = next.status.unwrap().migration_state.unwrap();
    assert_eq!(
        (
            state.migration_uid.as_deref(),
            state.source_node.as_deref(),
            state.source_pod.as_deref(),
            state.target_node.as_deref(),
            state.target_pod.as_deref()
        ),
        (
            Some("m1"),
            Some("n1"),
            Some("virt-launcher-src"),
            Some("n2"),
            Some("virt-launcher-dst")
        )
    );
    assert_eq!(state.migration_policy_name.as_deref(), Some("slow"));
    let configuration = state.migration_configuration.unwrap();
    assert_eq!(configuration.progress_timeout, Some(150));
}

#[test]
fn the_phases_follow_the_vmi_migration_state() {
    let m = migration("job", "m1", Some(phase::SCHEDULED));
    let target = pod("virt-launcher-dst", Some("n2"), Some("m1"), "Running", true);
    let pods = [source(), target];
    for (state, want) in [
        (
            json!({"migrationUid": "m1", "targetNode": "n2"}),
            phase::PREPARING_TARGET,
        ),
        (
            json!({"migrationUid": "m1", "targetNodeAddress": "127.0.0.1"}),
            phase::TARGET_READY,
        ),
        (
            json!({"migrationUid": "m1", "startTimestamp": "2026-12-06T10:00:00Z"}),
            phase::RUNNING,
        ),
        (
            json!({"migrationUid": "m1", "completed": true}),
            phase::SUCCEEDED,
        ),
    ] {
        let plan = decide(
            &m,
            Some(&vmi(state)),
            &pods,
            std::slice::from_ref(&m),
            &config(),
            now(),
        );
        assert_eq!(phase_of(&plan), want);
        assert!(plan.delete_pods.is_empty(), "{want}");
    }
    // Another migration's state is not this one's.
    let plan = decide(
        &m,
        Some(&vmi(json!({"migrationUid": "m0", "completed": true}))),
        &pods,
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::FAILED);
}

#[test]
fn a_failed_migration_cleans_up_and_the_source_keeps_the_vmi() {
    let m = migration("job", "m1", Some(phase::RUNNING));
    let target = pod("virt-launcher-dst", Some("n2"), Some("m1"), "Running", true);
    let mut v = vmi(json!({"migrationUid": "m1", "failed": true, "failureReason": "boom"}));
    v.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(TARGET_LABEL.into(), "n2".into());
    let plan = decide(
        &m,
        Some(&v),
        &[source(), target],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::FAILED);
    assert_eq!(plan.delete_pods, ["virt-launcher-dst"]);
    assert_eq!(plan.finalizer, None, "kept until the target pod is gone");
    let next = plan.vmi.unwrap();
    assert!(!next.metadata.labels.unwrap().contains_key(TARGET_LABEL));
    assert_eq!(next.status.unwrap().node_name.as_deref(), Some("n1"));
    let done = migration("job", "m1", Some(phase::FAILED));
    let plan = decide(
        &done,
        Some(&v),
        &[source()],
        std::slice::from_ref(&done),
        &config(),
        now(),
    );
    assert_eq!(plan.finalizer, Some(false));
}

#[test]
fn a_target_pod_lost_mid_way_fails_the_migration_on_the_vmi_too() {
    let m = migration("job", "m1", Some(phase::RUNNING));
    let v = vmi(json!({"migrationUid": "m1", "startTimestamp": "2026-12-06T10:00:00Z"}));
    let plan = decide(
        &m,
        Some(&v),
        &[source()],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::FAILED);
    let state = plan.vmi.unwrap().status.unwrap().migration_state.unwrap();
    assert_eq!(state.failed, Some(true));
    assert_eq!(
        state.failure_reason.as_deref(),
        Some("the target pod went away")
    );
}

#[test]
fn deleting_a_running_migration_asks_the_source_to_abort() {
    let mut m = migration("job", "m1", Some(phase::RUNNING));
    m.metadata.deletion_timestamp = Some(Time(now()));
    let target = pod("virt-launcher-dst", Some("n2"), Some("m1"), "Running", true);
    let v = vmi(json!({"migrationUid": "m1", "startTimestamp": "2026-12-06T10:00:00Z"}));
    let plan = decide(
        &m,
        Some(&v),
        &[source(), target],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    let state = plan.vmi.unwrap().status.unwrap().migration_state.unwrap();
    assert_eq!(state.abort_requested, Some(true));
    assert!(plan.delete_pods.is_empty() && plan.finalizer.is_none());
}

#[test]
fn a_vmi_that_is_not_running_cannot_migrate() {
    let m = migration("job", "m1", None);
    let mut v = vmi(Value::Null);
    v.status.as_mut().unwrap().phase = Some(VmiPhase::Scheduling);
    let plan = decide(
        &m,
        Some(&v),
        &[],
        std::slice::from_ref(&m),
        &config(),
        now(),
    );
    assert_eq!(phase_of(&plan), phase::FAILED);
    let plan = decide(&m, None, &[], std::slice::from_ref(&m), &config(), now());
    assert_eq!(
        plan.status
            .migration_state
            .unwrap()
            .failure_reason
            .as_deref(),
        Some("the VMI does not exist")
    );
}

#[test]
fn bridge_on_the_pod_network_pins_the_vmi() {
    assert!(live_migratable(&vmi(Value::Null)).0);
    let mut v = vmi(Value::Null);
    v.spec.domain.devices.interfaces[0] =
        serde_json::from_value(json!({"name": "default", "bridge": {}})).unwrap();
    let (ok, reason, _) = live_migratable(&v);
    assert!(!ok);
    assert_eq!(reason, "InterfaceNotLiveMigratable");
}
