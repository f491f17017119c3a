//! The webhooks, called by the API server as registered (and once straight, to see the
//! causes virt-api itself answers).

use api::v1::{VirtualMachineInstance, VirtualMachineInstancePreset, VmiPhase};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{code, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vmi_gets_presets_defaults_finalizer_and_pending() {
    let c = start().await;
    let preset: VirtualMachineInstancePreset = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstancePreset",
        "metadata": {"name": "small"},
        "spec": {"selector": {"matchLabels": {"size": "small"}},
                 "domain": {"memory": {"guest": "64Mi"}, "cpu": {"cores": 2}}},
    }))
    .unwrap();
    Api::<VirtualMachineInstancePreset>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &preset)
        .await
        .unwrap();
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi1", "labels": {"size": "small"}},
        "spec": {"domain": {"devices": {}}},
    }))
    .unwrap();
    let created = c.vmis().create(&PostParams::default(), &vmi).await.unwrap();
    let annotations = created.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("virtualmachineinstancepreset.kubevirt.io/small"),
        Some(&"kubevirt.io/v1".to_owned())
    );
    let domain = &created.spec.domain;
    assert_eq!(domain.cpu.as_ref().unwrap().cores, Some(2));
    assert_eq!(
        domain.cpu.as_ref().unwrap().model.as_deref(),
        Some("host-model")
    );
    assert_eq!(
        domain.machine.as_ref().unwrap().machine_type.as_deref(),
        Some("q35")
    );
    assert_eq!(created.spec.networks[0].name, "default");
    assert_eq!(
        domain.firmware.as_ref().unwrap().uuid,
        created.metadata.uid,
        "the firmware uuid comes from the object's uid"
    );
    assert!(
        created
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == reconcile::vmi::FINALIZER)
    );
    let status = created.status.unwrap();
    assert_eq!(status.phase, Some(VmiPhase::Pending));
    assert_eq!(status.phase_transition_timestamps.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_stand_only_for_kubevirt_components() {
    let c = start().await;
    c.create_vmi("vmi1", "Scheduled", "node1").await;
    let forged = json!({"status": {"phase": "Running"}});
    let after = c
        .vmis()
        .patch("vmi1", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().phase, Some(VmiPhase::Scheduled));
    let as_controller: Api<VirtualMachineInstance> =
        Api::namespaced(c.controller.clone(), "default");
    let after = as_controller
        .patch("vmi1", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap();
    assert_eq!(after.status.unwrap().phase, Some(VmiPhase::Running));
    // The user's other changes still apply.
    let labelled = c
        .vmis()
        .patch(
            "vmi1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.labels.unwrap()["a"], "b");
    assert_eq!(labelled.status.unwrap().phase, Some(VmiPhase::Running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_refused_with_field_causes() {
    let c = start().await;
    // Through the API server: refused with the field named.
    let bad = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "bad"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {
            "disks": [{"name": "a", "disk": {}}, {"name": "a", "disk": {}}]}, "memory": {"guest": "64Mi"}}}}}});
    let req = http::Request::post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines")
        .header("content-type", "application/json")
        .body(bad.to_string().into_bytes())
        .unwrap();
    let e = c.client.request_text(req).await.unwrap_err();
    assert_eq!(code(&e), 422);
    assert!(
        e.to_string()
            .contains("spec.template.spec.domain.devices.disks[1].name"),
        "{e}"
    );

    // Straight to the webhook: a denial carrying every cause with its path.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "r1", "operation": "CREATE", "namespace": "default",
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "userInfo": {"username": "alice"}, "object": bad}});
    let answer = crate::forwarding::post_direct(&c, "/validate-virtualmachines", &review).await;
    let response = &answer["response"];
    assert_eq!(response["uid"], "r1");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 422);
    let causes = response["status"]["details"]["causes"].as_array().unwrap();
    assert!(
        causes.iter().any(
            |c| c["field"] == "spec.template.spec.domain.devices.disks[1].name"
                && c["reason"] == "FieldValueDuplicate"
        ),
        "{causes:?}"
    );
    // An unknown field: the parse error names it.
    let mut unknown = review.clone();
    unknown["request"]["object"]["spec"]["bogus"] = json!(1);
    let answer = crate::forwarding::post_direct(&c, "/validate-virtualmachines", &unknown).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(
        answer["response"]["status"]["details"]["causes"][0]["field"],
        "spec.bogus"
    );
    // A valid one passes.
    let mut good = review;
    good["request"]["object"]["spec"]["template"]["spec"]["domain"]["devices"] = json!({});
    let answer: Value =
        crate::forwarding::post_direct(&c, "/validate-virtualmachines", &good).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_instancetype_kinds_default_to_the_cluster_kinds() {
    let c = start().await;
    let it = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": "small"}, "spec": {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}}});
    let req = http::Request::post(
        "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes",
    )
    .header("content-type", "application/json")
    .body(it.to_string().into_bytes())
    .unwrap();
    c.client.request_text(req).await.unwrap();
    let vm = c
        .create_vm(
            "typed",
            json!({"runStrategy": "Halted", "instancetype": {"name": "small"}}),
        )
        .await;
    assert_eq!(
        vm.spec.instancetype.unwrap().kind.as_deref(),
        Some("VirtualMachineClusterInstancetype")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_api_server_may_call_the_webhooks() {
    let c = start().await;
    for path in [
        "/launcher-eviction-interceptor",
        "/mutate-virtualmachineinstances",
        "/validate-virtualmachines",
    ] {
        // No certificate, or a user's from the same CA: refused before the review is read.
        assert_eq!(
            crate::forwarding::post_status(&c, None, path).await,
            401,
            "{path}"
        );
        assert_eq!(
            crate::forwarding::post_status(&c, Some(&c.pki.user), path).await,
            401,
            "{path}"
        );
        assert_eq!(
            crate::forwarding::post_status(&c, Some(&c.pki.front_proxy), path).await,
            200,
            "{path}"
        );
    }
}
