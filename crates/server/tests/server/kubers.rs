//! kube-rs from the kubeconfig: typed list, create and a watch that streams.

use std::time::Duration;

use api::v1::VirtualMachine;
use futures_util::StreamExt;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

use crate::support::{Scratch, Server, cirros_vm, kube_client};

#[tokio::test]
async fn kube_rs_lists_creates_and_watches() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch).await;
    let client = kube_client(&server.kubeconfig_path()).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");

    let empty = vms.list(&ListParams::default()).await.unwrap();
    assert!(empty.items.is_empty());
    let since = empty.metadata.resource_version.unwrap();

    let watch = vms.watch(&WatchParams::default(), &since).await.unwrap();
    let mut watch = Box::pin(watch);
    vms.create(&PostParams::default(), &cirros_vm())
        .await
        .unwrap();

    // The event arrives while the response is still open: the watch streams.
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Added(vm) => assert_eq!(vm.metadata.name.as_deref(), Some("vm-cirros")),
        other => panic!("expected ADDED, got {other:?}"),
    }

    let names: Vec<_> = vms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|vm| vm.metadata.name)
        .collect();
    assert_eq!(names, ["vm-cirros"]);
}
