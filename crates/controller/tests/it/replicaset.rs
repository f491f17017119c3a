//! The ReplicaSet controller: adoption, scale up and down, status.

use api::v1::{VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_adopts_scales_to_three_then_one() {
    let c = Cluster::start().await;
    let mut orphan = vmi("orphan");
    orphan.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    c.vmis()
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let _controller = c.controller("solo");

    let sets: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(c.client.clone(), NS);
    let rs: VirtualMachineInstanceReplicaSet = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": vmi_spec()}}}))
    .unwrap();
    let rs = sets.create(&PostParams::default(), &rs).await.unwrap();
    let rs_uid = rs.metadata.uid.clone().unwrap();

    let owned_by_rs = |v: &VirtualMachineInstance| {
        v.metadata.deletion_timestamp.is_none()
            && v.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == rs_uid && o.controller == Some(true))
    };
    let live = || async {
        let list = c
            .vmis()
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        list.items
            .into_iter()
            .filter(|v| v.metadata.deletion_timestamp.is_none())
            .collect::<Vec<_>>()
    };
    until("three replicas, the orphan adopted", || async {
        let vmis = live().await;
        (vmis.len() == 3 && vmis.iter().all(owned_by_rs)).then_some(())
    })
    .await;
    until("status: 3 replicas", || async {
        let s = sets.get("web").await.unwrap().status?;
        (s.replicas == Some(3) && s.label_selector.as_deref() == Some("app=web")).then_some(())
    })
    .await;

    let scale = json!({"spec": {"replicas": 1}});
    // Retried: a patch that loses a race gets a 409 from this API server.
    until("the scale patch", || async {
        sets.patch_scale("web", &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .ok()
    })
    .await;
    until("one replica", || async {
        let vmis = c
            .vmis()
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        (vmis.items.len() == 1).then_some(())
    })
    .await;
    until("status: 1 replica", || async {
        (sets.get("web").await.unwrap().status?.replicas == Some(1)).then_some(())
    })
    .await;
    let count = |reasons: &[String], reason: &str| reasons.iter().filter(|r| *r == reason).count();
    let reasons = until("two creations and two deletions", || async {
        let reasons = c
            .event_reasons("VirtualMachineInstanceReplicaSet", "web")
            .await;
        (count(&reasons, "SuccessfulDelete") >= 2).then_some(reasons)
    })
    .await;
    assert_eq!(count(&reasons, "SuccessfulCreate"), 2, "{reasons:?}");
    assert_eq!(count(&reasons, "SuccessfulDelete"), 2, "{reasons:?}");
}
