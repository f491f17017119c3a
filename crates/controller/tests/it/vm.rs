//! The VM controller: run strategies, state-change requests, recreation, status.

use std::time::Duration;

use kube::api::PostParams;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_runs_a_vmi_until_running_and_ready() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    let vm = c
        .vms()
        .create(&PostParams::default(), &vm("web", "Always"))
        .await
        .unwrap();
    let vmi = vmi_until(&c, "web", "the VMI", |_| true).await;
    let owner = &vmi.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        (
            "VirtualMachine",
            vm.metadata.uid.as_deref().unwrap(),
            Some(true)
        )
    );
    assert_eq!(vmi.metadata.labels.as_ref().unwrap()["app"], "web");
    let uid = vmi.metadata.uid.clone().unwrap();
    let pod = pod_of(&c, &uid).await;
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["vm.kubevirt.io/name"], "web");
    assert_eq!(labels["app"], "web");
    vm_until(&c, "web", "Starting", |v| printable(v) == Some("Starting")).await;

    c.run_pod(pod.metadata.name.as_deref().unwrap()).await;
    vmi_until(&c, "web", "Scheduled", |v| {
        phase(v).as_deref() == Some("Scheduled")
    })
    .await;
    c.run_vmi("web").await;
    let running = vm_until(&c, "web", "Running and Ready", |v| {
        printable(v) == Some("Running") && condition(v, "Ready").is_some_and(|(s, _)| s == "True")
    })
    .await;
    let status = running.status.unwrap();
    assert_eq!((status.created, status.ready), (Some(true), Some(true)));
    assert!(
        c.event_reasons("VirtualMachine", "web")
            .await
            .contains(&"SuccessfulCreate".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_vmi_comes_back_under_always_and_halted_stops_it() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    c.vms()
        .create(&PostParams::default(), &vm("db", "Always"))
        .await
        .unwrap();
    let first = vmi_until(&c, "db", "the first VMI", |v| {
        phase(v).as_deref() == Some("Scheduling")
    })
    .await;
    let first_uid = first.metadata.uid.clone().unwrap();

    // The pod is not on a node, so it goes at once, then the finalizer, then the VMI.
    c.vmis().delete("db", &Default::default()).await.unwrap();
    let second = vmi_until(&c, "db", "a new VMI", |v| {
        v.metadata.uid.as_deref() != Some(first_uid.as_str())
    })
    .await;
    assert!(second.metadata.deletion_timestamp.is_none());

    let halt = json!({"spec": {"runStrategy": "Halted"}});
    patch(&c.vms(), "db", &halt).await;
    until("the VMI to go", || async {
        c.vmis()
            .get_opt("db")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let stopped = vm_until(&c, "db", "Stopped", |v| printable(v) == Some("Stopped")).await;
    assert_eq!(stopped.status.unwrap().created, Some(false));
    let reasons = c.event_reasons("VirtualMachine", "db").await;
    assert!(
        reasons.contains(&"SuccessfulDelete".to_owned()),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_starts_on_a_state_change_request() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    c.vms()
        .create(&PostParams::default(), &vm("manual", "Manual"))
        .await
        .unwrap();
    vm_until(&c, "manual", "Stopped", |v| printable(v) == Some("Stopped")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.vmis().get_opt("manual").await.unwrap().is_none());

    let start = json!({"status": {"stateChangeRequests": [{"action": "Start"}]}});
    patch_status(&c.vms(), "manual", &start).await;
    vmi_until(&c, "manual", "the VMI", |_| true).await;
    vm_until(&c, "manual", "the request consumed", |v| {
        v.status
            .as_ref()
            .is_some_and(|s| s.state_change_requests.is_empty() && s.created == Some(true))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_backs_off() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    c.vms()
        .create(&PostParams::default(), &vm("crashy", "Always"))
        .await
        .unwrap();
    vmi_until(&c, "crashy", "Scheduling", |v| {
        phase(v).as_deref() == Some("Scheduling")
    })
    .await;
    // The guest failed (as the handler would report it).
    patch(&c.vmis(), "crashy", &json!({"status": {"phase": "Failed"}})).await;
    let backing_off = vm_until(&c, "crashy", "CrashLoopBackOff", |v| {
        printable(v) == Some("CrashLoopBackOff")
    })
    .await;
    let failure = backing_off.status.unwrap().start_failure.unwrap();
    assert_eq!(failure.consecutive_fail_count, Some(1));
    assert!(failure.retry_after_timestamp.is_some());
    // The failed VMI is gone and no new one starts before the backoff ends (10 s).
    until("the failed VMI to go", || async {
        c.vmis()
            .get_opt("crashy")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.vmis().get_opt("crashy").await.unwrap().is_none());
}
