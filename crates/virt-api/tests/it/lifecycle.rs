//! start, stop and restart through the API server's aggregation, with a kube client.

use api::v1::RunStrategy;
use serde_json::json;

use crate::{code, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_change_the_vm_as_upstream() {
    let c = start().await;
    c.create_vm("halted", json!({"runStrategy": "Halted"}))
        .await;
    c.put("virtualmachines/halted/start", json!({}))
        .await
        .unwrap();
    let vm = c.vms().get("halted").await.unwrap();
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Always));

    // Always with a running VMI: start is a conflict, restart asks Stop(uid) then Start.
    let vmi = c.create_vmi("halted", "Running", "node1").await;
    let e = c
        .put("virtualmachines/halted/start", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    assert!(e.to_string().contains("VM is already running"), "{e}");
    c.put("virtualmachines/halted/restart", json!({}))
        .await
        .unwrap();
    let vm = c.vms().get("halted").await.unwrap();
    let requests = vm.status.unwrap().state_change_requests;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].action, "Stop");
    assert_eq!(requests[0].uid, vmi.metadata.uid);
    assert_eq!(requests[1].action, "Start");

    // Stop with a grace period shortens the VMI's, and halts the VM.
    c.put(
        "virtualmachines/halted/stop",
        json!({"kind": "StopOptions", "apiVersion": "subresources.kubevirt.io/v1", "gracePeriod": 0}),
    )
    .await
    .unwrap();
    let vm = c.vms().get("halted").await.unwrap();
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    let vmi = c.vmis().get("halted").await.unwrap();
    assert_eq!(vmi.spec.termination_grace_period_seconds, Some(0));

    // Manual: a start is a state-change request.
    c.create_vm("manual", json!({"runStrategy": "Manual"}))
        .await;
    c.put("virtualmachines/manual/start", json!({}))
        .await
        .unwrap();
    let vm = c.vms().get("manual").await.unwrap();
    assert_eq!(vm.status.unwrap().state_change_requests[0].action, "Start");
    let e = c
        .put("virtualmachines/manual/start", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_statuses_with_upstream_codes() {
    let c = start().await;
    let e = c
        .put("virtualmachines/nope/start", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 404);
    assert!(
        e.to_string()
            .contains("virtualmachine.kubevirt.io \"nope\" not found"),
        "{e}"
    );
    c.create_vm("halted", json!({"runStrategy": "Halted"}))
        .await;
    let e = c
        .put("virtualmachines/halted/restart", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    let e = c
        .put("virtualmachines/halted/stop", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 409);
    let e = c
        .put("virtualmachines/halted/start", json!("not options"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 400);
    let e = c
        .put("virtualmachines/halted/explode", json!({}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_version_are_served_through_the_aggregator() {
    let c = start().await;
    let text = c
        .client
        .request_text(
            http::Request::get("/apis/subresources.kubevirt.io/v1/version")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let version: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(version["gitVersion"].as_str().unwrap().starts_with('v'));
    assert!(version["platform"].as_str().unwrap().contains('/'));
    let resources = c
        .client
        .list_api_group_resources("subresources.kubevirt.io/v1")
        .await
        .unwrap();
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.name == "virtualmachines/start")
    );
    let groups = c.client.list_api_groups().await.unwrap();
    assert!(
        groups
            .groups
            .iter()
            .any(|g| g.name == "subresources.kubevirt.io")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_front_proxy_may_name_the_caller() {
    let c = start().await;
    c.create_vm("halted", json!({"runStrategy": "Halted"}))
        .await;
    // Straight to virt-api with a user certificate of the same CA: 401.
    let (cert, key) = c.pki.user.clone();
    let code = crate::forwarding::put_direct(&c, &cert, &key, "virtualmachines/halted/start").await;
    assert_eq!(code, 401);
    let (cert, key) = c.pki.front_proxy.clone();
    let code = crate::forwarding::put_direct(&c, &cert, &key, "virtualmachines/halted/start").await;
    assert_eq!(code, 202);
}
