//! The VMI controller: launcher pod, phases up to the hand-off, the write budget, and a
//! lost pod.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use kube::api::PostParams;
use kube::runtime::watcher;

use crate::common::*;

/// (resourceVersion, phase) of each version a watch showed.
type Versions = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Every version of VMI `name` the watch shows; the receiver fires once it watches.
fn record_versions(
    c: &Cluster,
    name: &str,
) -> (Versions, Task, tokio::sync::oneshot::Receiver<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let stream = watcher(
        c.vmis(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    );
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            match event {
                watcher::Event::InitDone => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Apply(v) | watcher::Event::InitApply(v) => {
                    let rv = v.metadata.resource_version.clone().unwrap_or_default();
                    out.lock().unwrap().push((rv, phase(&v)));
                }
                _ => {}
            }
        }
    });
    (seen, Task(task), ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_reaches_scheduled_with_two_controller_writes() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    let (versions, _watch, ready) = record_versions(&c, "cirros");
    ready.await.unwrap();
    // The controller leads and watches before the VMI arrives.
    until("the lease", || async {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(c.client.clone(), "kubevirt");
        leases.get_opt("virt-controller").await.unwrap()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let started = Instant::now();
    let created = c
        .vmis()
        .create(&PostParams::default(), &vmi("cirros"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let pod = pod_of(&c, &uid).await;
    let to_pod = started.elapsed();
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubevirt.io"], "virt-launcher");
    assert_eq!(labels["kubevirt.io/created-by"], uid);
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("VirtualMachineInstance", uid.as_str(), Some(true))
    );
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some(LAUNCHER));
    assert_eq!(container.args.as_ref().unwrap()[0], "serve");

    let scheduling = vmi_until(&c, "cirros", "Scheduling", |v| {
        phase(v).as_deref() == Some("Scheduling")
    })
    .await;
    assert_eq!(
        scheduling.metadata.finalizers.as_deref(),
        Some(&["kubevirt.io/foregroundDeleteVirtualMachine".to_owned()][..])
    );

    c.run_pod(pod.metadata.name.as_deref().unwrap()).await;
    let scheduled = vmi_until(&c, "cirros", "Scheduled", |v| {
        phase(v).as_deref() == Some("Scheduled")
    })
    .await;
    let to_scheduled = started.elapsed();
    let status = scheduled.status.as_ref().unwrap();
    assert_eq!(status.node_name.as_deref(), Some("node-1"));
    assert_eq!(
        scheduled.metadata.labels.as_ref().unwrap()["kubevirt.io/nodeName"],
        "node-1"
    );
    assert_eq!(
        status.active_pods[pod.metadata.uid.as_deref().unwrap()],
        "node-1"
    );

    // The handler's Running stays, and nothing is written after it.
    c.run_vmi("cirros").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let running = c.vmis().get("cirros").await.unwrap();
    assert_eq!(phase(&running).as_deref(), Some("Running"));

    let versions = versions.lock().unwrap().clone();
    let mut distinct: Vec<&(String, Option<String>)> = Vec::new();
    for v in &versions {
        if distinct.last().is_none_or(|d| d.0 != v.0) {
            distinct.push(v);
        }
    }
    let until_scheduled = distinct
        .iter()
        .position(|(_, p)| p.as_deref() == Some("Scheduled"))
        .unwrap();
    // Versions: the creation, then the controller's writes up to Scheduled.
    let controller_writes = until_scheduled;
    assert!(
        controller_writes <= 2,
        "controller wrote the VMI {controller_writes} times: {distinct:?}"
    );
    // After Scheduled: only the handler's write.
    assert_eq!(distinct.len() - until_scheduled - 1, 1, "{distinct:?}");
    assert!(
        c.event_reasons("VirtualMachineInstance", "cirros")
            .await
            .contains(&"SuccessfulCreate".to_owned())
    );
    eprintln!(
        "vmi start: pod after {to_pod:?}, Scheduled after {to_scheduled:?} (the test plays the node), {controller_writes} controller writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_whose_pod_goes_fails_and_is_released() {
    let c = Cluster::start().await;
    let _controller = c.controller("solo");
    let created = c
        .vmis()
        .create(&PostParams::default(), &vmi("lost"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let pod = pod_of(&c, &uid).await;
    let pod_name = pod.metadata.name.clone().unwrap();
    c.run_pod(&pod_name).await;
    vmi_until(&c, "lost", "Scheduled", |v| {
        phase(v).as_deref() == Some("Scheduled")
    })
    .await;
    c.run_vmi("lost").await;

    c.force_delete_pod(&pod_name).await;
    let failed = vmi_until(&c, "lost", "Failed without its finalizer", |v| {
        phase(v).as_deref() == Some("Failed")
            && v.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())
    })
    .await;
    assert_eq!(
        failed.status.as_ref().unwrap().reason.as_deref(),
        Some("PodNotExists")
    );
    // A finished VMI gets no new pod.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(c.pods_of(&uid).await.is_empty());
}
