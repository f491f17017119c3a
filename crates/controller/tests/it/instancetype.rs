//! Instancetypes and preferences expanded into a VM's VMI; a missing one on the VM.

use api::instancetype::{VirtualMachineClusterPreference, VirtualMachineInstancetype};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_gets_its_instancetype_and_waits_for_a_missing_preference() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    let types: Api<VirtualMachineInstancetype> = Api::namespaced(c.client.clone(), NS);
    let it: VirtualMachineInstancetype = serde_json::from_value(json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineInstancetype",
        "metadata": {"name": "small", "namespace": NS},
        "spec": {"cpu": {"guest": 2}, "memory": {"guest": "256Mi"}}}))
    .unwrap();
    types.create(&PostParams::default(), &it).await.unwrap();

    let mut sized = vm("sized", "Always");
    sized.spec.instancetype =
        serde_json::from_value(json!({"kind": "VirtualMachineInstancetype", "name": "small"}))
            .unwrap();
    sized.spec.preference = serde_json::from_value(json!({"name": "desktop"})).unwrap();
    c.vms()
        .create(&PostParams::default(), &sized)
        .await
        .unwrap();

    // The cluster preference is missing: no VMI, a Failure condition, a Warning event.
    let failing = vm_until(&c, "sized", "the Failure condition", |v| {
        condition(v, "Failure").is_some()
    })
    .await;
    let (status, message) = condition(&failing, "Failure").unwrap();
    assert_eq!(status, "True");
    let message = message.unwrap();
    assert!(
        message.contains("VirtualMachineClusterPreference") && message.contains("desktop"),
        "{message}"
    );
    assert!(c.vmis().get_opt("sized").await.unwrap().is_none());
    until("the FailedCreate event", || async {
        c.event_reasons("VirtualMachine", "sized")
            .await
            .contains(&"FailedCreate".to_owned())
            .then_some(())
    })
    .await;

    let prefs: Api<VirtualMachineClusterPreference> = Api::all(c.client.clone());
    let pref: VirtualMachineClusterPreference = serde_json::from_value(json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterPreference",
        "metadata": {"name": "desktop"},
        "spec": {"devices": {"preferredDiskBus": "sata"}}}))
    .unwrap();
    prefs.create(&PostParams::default(), &pref).await.unwrap();

    // The retry finds it: the VMI carries the instancetype's size and the names.
    let vmi = vmi_until(&c, "sized", "the expanded VMI", |_| true).await;
    let domain = &vmi.spec.domain;
    let cpu = domain.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(2), Some(1), Some(1))
    );
    let guest = domain.memory.as_ref().unwrap().guest.as_ref().unwrap();
    assert_eq!(guest.0, "256Mi");
    let annotations = vmi.metadata.annotations.unwrap();
    assert_eq!(annotations["kubevirt.io/instancetype-name"], "small");
    assert_eq!(
        annotations["kubevirt.io/cluster-preference-name"],
        "desktop"
    );
    vm_until(&c, "sized", "the Failure condition cleared", |v| {
        condition(v, "Failure").is_none()
    })
    .await;
}
